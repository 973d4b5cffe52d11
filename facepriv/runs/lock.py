"""One run per DST at a time: a lease file with a heartbeat.

`_facepriv/lock.json` under DST names the run that writes there (run id, host, pid, start
and heartbeat times). A run takes the lease when there is none, when it is its own, when the
holder ran on this host and its process is gone (a killed driver: resumed at once), or when
the holder's heartbeat is older than `stale_after` seconds (a crashed run elsewhere never
blocks DST for ever); otherwise it refuses with a message naming the holder. The driver renews the
heartbeat while results stream in and removes the lease at the end.

On a local disk the lease is created with O_EXCL (atomic). Object stores have no portable
create-if-absent through fsspec, so there the lease is written and read back after a short
pause: two runs starting within that pause can still both proceed (documented limit).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from facepriv.io.archive import Archive
from facepriv.errors import FacePrivError

LOCK_KEY = "_facepriv/lock.json"
STALE_AFTER = 600.0  # seconds without a heartbeat before a lease counts as abandoned
HEARTBEAT = 30.0


class DstBusy(FacePrivError):
    pass


def lease_state(lease: dict[str, Any] | None, run_id: str, now: float, stale_after: float = STALE_AFTER,
                holder_alive: bool | None = None) -> str:
    """free | ours | stale | busy: what a run may do with the lease it found (pure).
    `holder_alive`: False when the holder is known dead (same host, no such process)."""
    if not lease:
        return "free"
    if lease.get("run_id") == run_id:
        return "ours"
    if holder_alive is False:
        return "stale"
    try:
        age = now - float(lease.get("heartbeat", 0))
    except (TypeError, ValueError):
        return "stale"
    return "stale" if age > stale_after else "busy"


def holder_alive(lease: dict[str, Any] | None) -> bool | None:
    """Whether the lease's process still runs: known only when it ran on this host."""
    if not lease or lease.get("host") != socket.gethostname():
        return None
    try:
        os.kill(int(lease.get("pid")), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError, OverflowError):
        return None
    return True


class DstLock:
    def __init__(self, dst: Archive, run_id: str, stale_after: float = STALE_AFTER,
                 heartbeat: float = HEARTBEAT, clock: Callable[[], float] = time.time):
        self.dst, self.run_id, self.stale_after, self.every, self.clock = dst, run_id, stale_after, heartbeat, clock
        self.path = f"{dst.root}/{LOCK_KEY}"
        self._started = clock()
        self._beat = 0.0
        self.held = False

    def read(self) -> dict[str, Any] | None:
        self.dst.invalidate()
        try:
            return json.loads(self.dst.fs.cat_file(self.path))
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError):
            return {"run_id": None, "heartbeat": 0}  # unreadable: treat as abandoned

    def _record(self) -> bytes:
        now = self.clock()
        self._beat = now
        return json.dumps({"run_id": self.run_id, "host": socket.gethostname(), "pid": os.getpid(),
                           "started": self._started, "heartbeat": now}).encode()

    def acquire(self, force: bool = False) -> None:
        lease = self.read()
        state = lease_state(lease, self.run_id, self.clock(), self.stale_after, holder_alive(lease))
        if state == "busy" and not force:
            age = self.clock() - float(lease.get("heartbeat", 0))
            raise DstBusy(
                f"DST is in use by run {lease.get('run_id')} on {lease.get('host')} (pid {lease.get('pid')}, "
                f"last heartbeat {age:.0f}s ago). Wait for it to finish, or - if that run is dead - pass "
                f"--force-lock (a lease without a heartbeat for {self.stale_after:.0f}s is taken over "
                "automatically).")
        if self.dst.is_local and state == "free":
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return self.acquire(force)  # someone was faster: judge their lease
            with os.fdopen(fd, "wb") as f:
                f.write(self._record())
        else:
            self.dst.write_bytes(LOCK_KEY, self._record())
            if not self.dst.is_local:
                time.sleep(0.5)
                back = self.read()
                if not back or back.get("run_id") != self.run_id:
                    raise DstBusy(f"another run ({(back or {}).get('run_id')}) took DST's lease at the same time; "
                                  "retry in a moment")
        self.held = True

    def heartbeat(self) -> None:
        """Renew the lease (rate-limited to one write per `heartbeat` seconds)."""
        if self.held and self.clock() - self._beat >= self.every:
            lease = self.read()
            if lease and lease.get("run_id") not in (self.run_id, None):
                self.held = False
                raise DstBusy(f"run {lease.get('run_id')} on {lease.get('host')} took over DST's lease "
                              "(--force-lock); this run stops so that two runs never write one DST")
            self.dst.write_bytes(LOCK_KEY, self._record())

    def release(self) -> None:
        if not self.held:
            return
        lease = self.read()
        if lease and lease.get("run_id") == self.run_id:
            try:
                self.dst.fs.rm(self.path)
            except FileNotFoundError:
                pass
        self.held = False

    def __enter__(self) -> "DstLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
