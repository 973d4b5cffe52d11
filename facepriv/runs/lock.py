"""One run per DST at a time: a lease file with a heartbeat.

`_facepriv/lock.json` under DST names the run that writes there (run id, host, pid, start
and heartbeat times). A run takes the lease when there is none, when it is its own, when the
holder ran on this host and its process is gone (a killed driver: resumed at once), or when
the holder's heartbeat is older than `stale_after` seconds (a crashed run elsewhere never
blocks DST for ever); otherwise it refuses with a message naming the holder. While the lease is
held, a background thread renews the heartbeat every `heartbeat` seconds (a long batch, a
compaction or a slow cluster start never lets it go stale); a failed renewal is logged and the
next one tried. Should another run take the lease over (--force-lock), the thread stops writing
and `check()`, which the driver calls between steps, raises. The lease is removed at the end.

On a local disk the lease is created with O_EXCL (atomic). Object stores have no portable
create-if-absent through fsspec, so there the lease is written and read back after a short
pause: two runs starting within that pause can still both proceed (documented limit).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from facepriv.io.archive import Archive
from facepriv.errors import FacePrivError

LOCK_KEY = "_facepriv/lock.json"
STALE_AFTER = 600.0  # seconds without a heartbeat before a lease counts as abandoned
HEARTBEAT = 30.0
READ_ATTEMPTS = 5  # reads of a lease another run rewrites meanwhile

log = logging.getLogger(__name__)


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
        self._io = threading.Lock()  # one lease write at a time: the keeper's, the driver's, the release
        self._stop = threading.Event()
        self._keeper: threading.Thread | None = None
        self._lost: str | None = None  # why the lease is not ours any more (a takeover)

    def read(self) -> dict[str, Any] | None:
        for attempt in range(READ_ATTEMPTS):
            # only the lease's own cache entry: the keeper thread must not drop the listings the driver uses
            self.dst.fs.invalidate_cache(self.path)
            try:
                return json.loads(self.dst.fs.cat_file(self.path))
            except FileNotFoundError:
                return None
            except (ValueError, UnicodeDecodeError):
                return {"run_id": None, "heartbeat": 0}  # unreadable: treat as abandoned
            except OSError as e:
                # the holder renewed the lease between s3fs's HEAD and its GET (the ETag no longer
                # matches: s3fs FileExpired / PreconditionFailed): read the new one
                if attempt + 1 == READ_ATTEMPTS or not _rewritten_while_read(e):
                    raise
        return None

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
        self.held, self._lost = True, None
        self._start_keeper()

    def _start_keeper(self) -> None:
        if self._keeper is not None and self._keeper.is_alive():
            return
        self._stop.clear()
        self._keeper = threading.Thread(target=self._keep, name=f"facepriv-lease-{self.run_id}", daemon=True)
        self._keeper.start()

    def _keep(self) -> None:
        """The keeper thread: renew every `heartbeat` seconds until released or taken over."""
        while not self._stop.wait(max(self.every, 0.01)):
            try:
                self._renew()
            except DstBusy as e:
                log.error("%s", e)
                return
            except Exception as e:  # a flaky store: this renewal is lost, the next one may succeed
                log.warning("renewing DST's lease (%s) failed: %s: %s", self.path, type(e).__name__, e)

    def _renew(self) -> None:
        with self._io:
            if self._stop.is_set() or not self.held:
                return  # released meanwhile: never write a lease after its removal
            lease = self.read()
            if lease and lease.get("run_id") not in (self.run_id, None):
                self.held = False
                self._lost = (f"run {lease.get('run_id')} on {lease.get('host')} took over DST's lease "
                              "(--force-lock); this run stops so that two runs never write one DST")
                self._stop.set()
                raise DstBusy(self._lost)
            self.dst.write_bytes(LOCK_KEY, self._record())

    def check(self) -> None:
        """Raise DstBusy if another run took the lease over (no I/O: the keeper found out)."""
        if self._lost:
            raise DstBusy(self._lost)

    def heartbeat(self) -> None:
        """Renew the lease now (rate-limited to one write per `heartbeat` seconds); the keeper
        thread does this by itself while the lease is held."""
        self.check()
        if self.held and self.clock() - self._beat >= self.every:
            self._renew()

    def release(self) -> None:
        self._stop.set()
        with self._io:
            if self.held:
                lease = self.read()
                if lease and lease.get("run_id") == self.run_id:
                    try:
                        self.dst.fs.rm(self.path)
                    except FileNotFoundError:
                        pass
                self.held = False
        keeper = self._keeper
        if keeper is not None and keeper is not threading.current_thread():
            keeper.join(timeout=60)

    def __enter__(self) -> "DstLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _rewritten_while_read(e: OSError) -> bool:
    """s3fs's error when an object changes between its HEAD and its ranged GET."""
    return type(e).__name__ == "FileExpired" or "pre-condition" in str(e) or "PreconditionFailed" in str(e)
