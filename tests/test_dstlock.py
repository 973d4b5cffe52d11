"""One run per DST: the lease file, its heartbeat, takeover of abandoned leases."""

from __future__ import annotations

import json
import os

import pytest

from facepriv.io.archive import Archive
from facepriv.runs.lock import LOCK_KEY, DstBusy, DstLock, lease_state


def test_lease_state_decisions():
    assert lease_state(None, "a", 100.0) == "free"
    assert lease_state({"run_id": "a", "heartbeat": 0}, "a", 1e9) == "ours"
    assert lease_state({"run_id": "b", "heartbeat": 90.0}, "a", 100.0, stale_after=60) == "busy"
    assert lease_state({"run_id": "b", "heartbeat": 10.0}, "a", 100.0, stale_after=60) == "stale"
    assert lease_state({"run_id": "b", "heartbeat": "garbage"}, "a", 100.0) == "stale"
    assert lease_state({"run_id": "b", "heartbeat": 99.0}, "a", 100.0, holder_alive=False) == "stale"
    assert lease_state({"run_id": "b", "heartbeat": 99.0}, "a", 100.0, holder_alive=True) == "busy"


def test_a_killed_holder_on_this_host_is_taken_over_at_once(tmp_path):
    import socket
    import subprocess
    import sys

    from facepriv.runs.lock import holder_alive

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lease = {"run_id": "killed", "host": socket.gethostname(), "pid": dead.pid, "heartbeat": 1e18}
    assert holder_alive(lease) is False
    assert holder_alive(dict(lease, pid=os.getpid())) is True
    assert holder_alive(dict(lease, host="elsewhere")) is None
    (tmp_path / LOCK_KEY).parent.mkdir(parents=True)
    (tmp_path / LOCK_KEY).write_text(json.dumps(lease))
    lock = DstLock(Archive(str(tmp_path), {}), "resumed")
    lock.acquire()
    assert json.loads((tmp_path / LOCK_KEY).read_text())["run_id"] == "resumed"


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def test_second_run_refused_until_release_or_stale(tmp_path):
    dst = Archive(str(tmp_path), {})
    clock = Clock()
    first = DstLock(dst, "run-1", stale_after=60, heartbeat=10, clock=clock)
    first.acquire()
    lease = json.loads((tmp_path / LOCK_KEY).read_text())
    assert lease["run_id"] == "run-1" and lease["heartbeat"] == 1000.0
    with pytest.raises(DstBusy, match="run-1.*--force-lock"):
        DstLock(dst, "run-2", stale_after=60, clock=clock).acquire()
    # the heartbeat keeps it alive past stale_after
    clock.t += 50
    first.heartbeat()
    clock.t += 50
    with pytest.raises(DstBusy):
        DstLock(dst, "run-2", stale_after=60, clock=clock).acquire()
    # released: free again
    first.release()
    assert not (tmp_path / LOCK_KEY).exists()
    second = DstLock(dst, "run-2", stale_after=60, clock=clock)
    second.acquire()
    # abandoned (no heartbeat for > stale_after): taken over; the old holder then stops
    clock.t += 61
    third = DstLock(dst, "run-3", stale_after=60, heartbeat=0, clock=clock)
    third.acquire()
    assert json.loads((tmp_path / LOCK_KEY).read_text())["run_id"] == "run-3"
    second.every = 0
    with pytest.raises(DstBusy, match="took over"):
        second.heartbeat()
    second.release()  # not ours any more: must not remove run-3's lease
    assert json.loads((tmp_path / LOCK_KEY).read_text())["run_id"] == "run-3"


def test_force_takes_a_live_lease(tmp_path):
    dst = Archive(str(tmp_path), {})
    DstLock(dst, "run-1").acquire()
    with DstLock(dst, "run-2") as lock:
        lock.acquire(force=True)
        assert json.loads((tmp_path / LOCK_KEY).read_text())["run_id"] == "run-2"
    assert not (tmp_path / LOCK_KEY).exists()


def test_cloak_refuses_a_busy_dst_and_leaves_no_lease_behind(tmp_path):
    from facepriv.core.settings import CloakSettings
    from facepriv.distributed.runner import run_in_process

    from helpers import random_checkpoint

    ckpt = random_checkpoint(str(tmp_path / "m.pt"), ["a", "b"])
    src = tmp_path / "src"
    src.mkdir()
    dst = tmp_path / "dst"
    busy = DstLock(Archive(str(dst), {}), "other-run")
    busy.acquire()
    with pytest.raises(DstBusy, match="other-run"):
        run_in_process(str(src), str(dst), CloakSettings(model=ckpt, attack="fgsm"))
    busy.release()
    s = run_in_process(str(src), str(dst), CloakSettings(model=ckpt, attack="fgsm"))
    assert s["inputs"] == 0 and not (dst / LOCK_KEY).exists()
