"""One run per DST: the lease file, its heartbeat, takeover of abandoned leases."""

from __future__ import annotations

import json
import os
import shutil
import time

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
    third = DstLock(dst, "run-3", stale_after=60, clock=clock)
    third.acquire()
    assert json.loads((tmp_path / LOCK_KEY).read_text())["run_id"] == "run-3"
    second.every = 0
    with pytest.raises(DstBusy, match="took over"):
        second.heartbeat()
    second.release()  # not ours any more: must not remove run-3's lease
    assert json.loads((tmp_path / LOCK_KEY).read_text())["run_id"] == "run-3"
    third.release()


def test_force_takes_a_live_lease(tmp_path):
    dst = Archive(str(tmp_path), {})
    first = DstLock(dst, "run-1")
    first.acquire()
    with DstLock(dst, "run-2") as lock:
        lock.acquire(force=True)
        assert json.loads((tmp_path / LOCK_KEY).read_text())["run_id"] == "run-2"
        first.release()  # taken over: its release leaves run-2's lease alone
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


SHORT = dict(stale_after=1.0, heartbeat=0.1)  # a lease of one second, renewed ten times a second


def _lease(dst_dir):
    return json.loads((dst_dir / LOCK_KEY).read_text())


def test_the_lease_is_renewed_in_the_background_while_the_holder_does_nothing(tmp_path):
    dst = Archive(str(tmp_path), {})
    holder = DstLock(dst, "run-1", **SHORT)
    holder.acquire()
    first_beat = _lease(tmp_path)["heartbeat"]
    time.sleep(4 * SHORT["stale_after"])  # no batch, no call into the lock: four leases long
    with pytest.raises(DstBusy, match="run-1"):
        DstLock(dst, "run-2", **SHORT).acquire()
    assert _lease(tmp_path)["run_id"] == "run-1" and _lease(tmp_path)["heartbeat"] > first_beat
    holder.release()
    assert not (tmp_path / LOCK_KEY).exists()
    time.sleep(5 * SHORT["heartbeat"])  # the renewal stopped with the release: no lease comes back
    assert not (tmp_path / LOCK_KEY).exists()


def test_a_failing_renewal_is_logged_and_the_next_one_keeps_the_lease(tmp_path, caplog):
    dst = Archive(str(tmp_path), {})
    holder = DstLock(dst, "run-1", **SHORT)
    holder.acquire()
    write, failures = dst.write_bytes, []

    def flaky(key, data):
        if len(failures) < 3:
            failures.append(key)
            raise OSError("transient: store unreachable")
        return write(key, data)

    dst.write_bytes = flaky
    with caplog.at_level("WARNING", logger="facepriv.runs.lock"):
        time.sleep(4 * SHORT["stale_after"])
    assert len(failures) == 3 and "store unreachable" in caplog.text
    with pytest.raises(DstBusy, match="run-1"):
        DstLock(dst, "run-2", **SHORT).acquire()
    holder.check()  # the errors did not end the run
    holder.release()
    assert not (tmp_path / LOCK_KEY).exists()


def test_the_background_renewal_notices_a_takeover_and_stops_writing(tmp_path):
    dst = Archive(str(tmp_path), {})
    holder = DstLock(dst, "run-1", **SHORT)
    holder.acquire()
    theirs = {"run_id": "run-2", "host": "elsewhere", "pid": 1, "started": 0}
    for _ in range(200):
        if _lease(tmp_path)["run_id"] != "run-2":  # (again, should a renewal in flight have overwritten it)
            (tmp_path / LOCK_KEY).write_text(json.dumps(dict(theirs, heartbeat=time.time())))
        try:
            holder.check()
        except DstBusy as e:
            assert "took over" in str(e)
            break
        time.sleep(SHORT["heartbeat"])
    else:
        pytest.fail("the holder never noticed that run-2 took its lease over")
    time.sleep(5 * SHORT["heartbeat"])
    assert _lease(tmp_path)["run_id"] == "run-2"  # not overwritten by the old holder
    holder.release()
    assert _lease(tmp_path)["run_id"] == "run-2"


def test_a_batch_slower_than_the_lease_does_not_let_a_second_run_in(tmp_path, monkeypatch):
    from facepriv.runs import lock as dstlock
    from facepriv.pipeline import cloaker as pipeline
    from facepriv.core.settings import CloakSettings
    from facepriv.distributed.runner import run_in_process

    from helpers import random_checkpoint

    class ShortLease(DstLock):
        def __init__(self, dst, run_id, **_):
            super().__init__(dst, run_id, **SHORT)

    monkeypatch.setattr(dstlock, "DstLock", ShortLease)
    settings = CloakSettings(model=random_checkpoint(str(tmp_path / "m.pt"), ["a", "b"]), attack="fgsm")
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    shutil.copy(os.path.join(os.path.dirname(__file__), "fixtures/lfw/Colin_Powell/Colin_Powell_0001.jpg"), src)
    process, calls, second = pipeline.Cloaker.process, [], []

    def slow_batch(self, keys):
        calls.append(keys)
        if len(calls) == 1:  # the first run's only batch takes four leases; meanwhile a second run starts
            time.sleep(4 * SHORT["stale_after"])
            try:
                second.append(run_in_process(str(src), str(dst), settings))
            except DstBusy as e:
                second.append(e)
        return process(self, keys)

    monkeypatch.setattr(pipeline.Cloaker, "process", slow_batch)
    summary = run_in_process(str(src), str(dst), settings)
    assert isinstance(second[0], DstBusy), "a second run took DST over mid-batch and ran to its end"
    assert len(calls) == 1 and summary["inputs"] == 1
    assert not (dst / LOCK_KEY).exists()


def test_reading_a_lease_that_is_rewritten_meanwhile_reads_the_new_one(tmp_path):
    """On S3 a lease renewed between s3fs's HEAD and GET raises FileExpired: read again."""
    dst = Archive(str(tmp_path), {})
    lock = DstLock(dst, "run-1")
    lock.acquire()
    lock.release()

    class FileExpired(OSError):
        pass

    real = dst.fs.cat_file
    calls = []

    def changing(path, *a, **k):
        calls.append(path)
        if len(calls) == 1:
            raise FileExpired(16, "The remote file ... no longer exists.")
        return json.dumps({"run_id": "run-9", "heartbeat": time.time()}).encode()

    dst.fs.cat_file = changing
    try:
        assert DstLock(dst, "run-2").read()["run_id"] == "run-9" and len(calls) == 2
    finally:
        dst.fs.cat_file = real
