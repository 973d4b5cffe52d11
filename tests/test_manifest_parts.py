"""A run's manifest parts: rows are buffered in the driver and written in parts of a sensible
size (manifest.PartWriter), not one part per batch; by rows, by age (a fake clock) and on close.

The kill-and-resume guarantees with buffered rows are tested on real Ray in tests/test_scale.py.
"""

from __future__ import annotations

import io
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from facepriv.io import manifest
from facepriv.io.archive import Archive

from helpers import FIXTURES


class FakeDst:
    """The one Archive method PartWriter uses; `fail` makes the next writes raise."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.fail = 0

    def write_bytes(self, key: str, data: bytes) -> None:
        if self.fail:
            self.fail -= 1
            raise OSError("storage down")
        self.files[key] = data

    def parts(self) -> list[list[str]]:
        """Source keys of each part, in part order."""
        return [pq.read_table(io.BytesIO(self.files[k]))["source_key"].to_pylist() for k in sorted(self.files)]


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def rows(*keys: str) -> list[dict]:
    return [manifest.empty_row(source_key=k, status="ok") for k in keys]


def keys(n: int, start: int = 0) -> list[str]:
    return [f"k{i:03d}" for i in range(start, start + n)]


# -- the writer -------------------------------------------------------------------------------
def test_parts_grow_from_the_first_batch_up_to_max_rows():
    dst = FakeDst()
    with manifest.PartWriter(dst, "_facepriv/runs/r", max_rows=5, max_seconds=60, clock=Clock()) as w:
        for k in keys(20):
            w.add(rows(k))
        assert w.parts == 6  # the last 2 rows are still buffered
    names = sorted(dst.files)
    assert names[0] == "_facepriv/runs/r/manifest/part-00000.parquet" and len(names) == 7
    # each part as large as all earlier ones together (1, 1, 2, 4), then max_rows, the rest on close
    assert [len(p) for p in dst.parts()] == [1, 1, 2, 4, 5, 5, 2]
    assert [k for p in dst.parts() for k in p] == keys(20)  # every row once, in order


def test_rows_that_waited_max_seconds_are_written_on_tick_and_on_add():
    dst, clock = FakeDst(), Clock()
    w = manifest.PartWriter(dst, "r", max_rows=1000, max_seconds=60, clock=clock)
    w.add(rows(*keys(50)))  # the run's first rows: written at once
    clock.t = 10
    w.add(rows("a"))
    clock.t = 69.5
    w.tick()
    w.add(rows("b"))
    assert len(dst.files) == 1  # "a" has waited 59.5 s
    clock.t = 70
    w.tick()
    assert dst.parts()[1:] == [["a", "b"]]
    clock.t = 100
    w.add(rows("c"))
    clock.t = 160
    w.add(rows("d"))  # "c" has waited 60 s: written with "d" by this add
    assert dst.parts()[2:] == [["c", "d"]]
    w.close()
    assert len(dst.files) == 3  # nothing left to write


def test_the_ticker_thread_writes_rows_that_waited_without_a_new_add():
    dst, clock = FakeDst(), Clock()
    w = manifest.PartWriter(dst, "r", max_rows=1000, max_seconds=60, clock=clock, tick_every=0.01)
    try:
        w.add(rows(*keys(50)))
        w.add(rows("a"))
        clock.t = 60
        deadline = time.monotonic() + 30  # a wait for the outcome, not a timing assertion
        while len(dst.files) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert dst.parts()[1:] == [["a"]]
    finally:
        w.close()
    assert len(dst.files) == 2


def test_a_failing_run_still_writes_its_buffered_rows():
    dst = FakeDst()
    with pytest.raises(RuntimeError, match="worker pool died"):
        with manifest.PartWriter(dst, "r", max_rows=1000, max_seconds=60, clock=Clock()) as w:
            w.add(rows(*keys(50)))
            w.add(rows("a"))
            raise RuntimeError("worker pool died")
    assert dst.parts() == [keys(50), ["a"]]


def test_a_failed_part_write_keeps_its_rows_and_its_number():
    dst = FakeDst()
    w = manifest.PartWriter(dst, "r", max_rows=1000, max_seconds=60, clock=Clock())
    dst.fail = 1
    with pytest.raises(OSError):
        w.add(rows("a"))
    w.add(rows("b"))
    assert sorted(dst.files) == ["r/manifest/part-00000.parquet"] and dst.parts() == [["a", "b"]]


def test_a_failed_write_on_close_does_not_hide_the_runs_own_error():
    dst = FakeDst()
    with pytest.raises(RuntimeError, match="the run's error"):
        with manifest.PartWriter(dst, "r", max_rows=1000, max_seconds=60, clock=Clock()) as w:
            w.add(rows(*keys(50)))
            w.add(rows("a"))
            dst.fail = 1
            raise RuntimeError("the run's error")
    with pytest.raises(OSError):  # without a run error, the failed write is the error
        with manifest.PartWriter(dst, "r2", max_rows=1000, max_seconds=60, clock=Clock()) as w:
            w.add(rows(*keys(50)))
            w.add(rows("a"))
            dst.fail = 1


# -- a run ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def src_and_model(tmp_path_factory):
    """8 photos (the 4 fixture photos twice) and a random checkpoint."""
    from helpers import random_checkpoint

    root = tmp_path_factory.mktemp("parts")
    src = root / "src"
    for copy in ("a", "b"):
        for f in sorted(Path(FIXTURES).rglob("*.jpg")):
            (src / copy).mkdir(parents=True, exist_ok=True)
            shutil.copy(f, src / copy / f.name)
    assert len(list(src.rglob("*.jpg"))) == 8
    return src, random_checkpoint(str(root / "rand.pt"), ["Colin_Powell", "Gerhard_Schroeder"])


def part_sizes(dst: Path, run_id: str) -> tuple[list[int], list[str]]:
    a = Archive(str(dst), {})
    files = sorted((dst / "_facepriv" / "runs" / run_id / "manifest").glob("*.parquet"))
    got = manifest.read_manifest(a.fs, f"{a.root}/_facepriv/runs/{run_id}/manifest")["source_key"].to_pylist()
    return [pq.read_metadata(f).num_rows for f in files], got


def test_a_run_of_many_batches_writes_few_parts(src_and_model, tmp_path):
    from facepriv.core.settings import CloakSettings
    from facepriv.distributed.runner import run_in_process

    src, model = src_and_model
    s = run_in_process(str(src), str(tmp_path / "dst"), CloakSettings(model=model, attack="fgsm", judge=False),
                       batch_size=1)
    sizes, got = part_sizes(tmp_path / "dst", s["run_id"])
    assert s["inputs"] == 8 and s["errors"] == 0
    assert sizes == [1, 1, 2, 4]  # 8 batches, 4 parts (was 8 parts of 1 row)
    assert sorted(got) == sorted(str(p.relative_to(src)) for p in src.rglob("*.jpg"))  # every photo once


def test_a_tiny_row_threshold_still_writes_several_parts(src_and_model, tmp_path):
    from facepriv.core.settings import CloakSettings
    from facepriv.distributed.runner import run_in_process

    src, model = src_and_model
    s = run_in_process(str(src), str(tmp_path / "dst"), CloakSettings(model=model, attack="fgsm", judge=False),
                       batch_size=1, part_rows=2)
    sizes, got = part_sizes(tmp_path / "dst", s["run_id"])
    assert sizes == [1, 1, 2, 2, 2]
    assert len(got) == len(set(got)) == 8
