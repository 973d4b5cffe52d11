"""The Parquet manifest: one row per input file. The schema is declared here, once.

Layout under DST:
  _facepriv/runs/<run_id>/manifest/part-<n>.parquet   rows of one run, buffered into parts of
                                                     up to ~PART_ROWS rows (`PartWriter`)
  _facepriv/runs/<run_id>/summary.json               that run's summary
  _facepriv/manifest/latest.parquet                  latest row per source key across runs
                                                     (written by facepriv/runs/incremental.py)
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

STATUSES = ("ok", "no_face", "error", "skipped")

FACE = pa.struct(
    [
        ("box", pa.list_(pa.float32(), 4)),
        ("prob", pa.float32()),
        ("landmarks", pa.list_(pa.float32(), 10)),
        ("label", pa.string()),  # identity from --labels, if any
        ("clean_pred", pa.string()),
        ("clean_conf", pa.float32()),
        ("cloaked_pred", pa.string()),
        ("cloaked_conf", pa.float32()),
        ("judged", pa.bool_()),  # counts towards the fooling rate
        ("fooled", pa.bool_()),
        ("redetected", pa.bool_()),  # found again in the written file
        ("linf", pa.float32()),  # of the perturbation, 0-255 units, on the written pixels
        ("l2", pa.float32()),
        ("steps", pa.int32()),
        ("decoy", pa.int32()),  # embed-pgd --embed-loss decoy: the decoy's index in the bank (facepriv/models/decoys.py)
        # the face's quality region (geometry.quality_region) of the written file, read back,
        # against the original (metrics.face_quality); null when judging was off
        ("face_psnr", pa.float32()),
        ("face_ssim", pa.float32()),
        ("face_ssimulacra2", pa.float32()),
    ]
)

SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("source_key", pa.string()),
        ("output_key", pa.string()),
        ("size_bytes", pa.int64()),
        ("format", pa.string()),  # format read from the content
        ("output_format", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("content_sha256", pa.string()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("faces", pa.list_(FACE)),
        ("n_faces", pa.int32()),
        ("psnr", pa.float32()),
        ("ssim", pa.float32()),
        ("attack", pa.string()),
        ("eps", pa.float32()),
        ("steps", pa.int32()),
        ("settings_json", pa.string()),
        ("settings_hash", pa.string()),
        ("model", pa.string()),
        ("model_sha256", pa.string()),
        ("t_read", pa.float32()),
        ("t_detect", pa.float32()),
        ("t_attack", pa.float32()),
        ("t_write", pa.float32()),
        ("t_judge", pa.float32()),
        ("t_total", pa.float32()),
        ("worker", pa.string()),
        ("finished_at", pa.timestamp("ms", tz="UTC")),
    ]
)

COLUMNS = SCHEMA.names


def empty_row(**values: Any) -> dict[str, Any]:
    row = {name: None for name in COLUMNS}
    row["faces"] = []
    row["n_faces"] = 0
    row.update(values)
    return row


def to_table(rows: Sequence[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist([{k: r.get(k) for k in COLUMNS} for r in rows], schema=SCHEMA)


def table_bytes(rows: Sequence[dict[str, Any]]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(to_table(rows), buf, compression="zstd")
    return buf.getvalue()


def run_dir(run_id: str) -> str:
    return f"_facepriv/runs/{run_id}"


PART_ROWS = 10_000  # a run's manifest part holds about this many rows at most
PART_SECONDS = 60.0  # ... and no row waits longer than this in the driver before its part is written


class PartWriter:
    """A run's manifest rows, buffered in the driver and written as Parquet parts of a sensible
    size, not one part per batch (a million photos in batches of 8: ~110 parts by the row rule
    below, not 125,000; more where fewer than max_rows rows arrive in max_seconds).

    `add(rows)` buffers; the buffer is written as the next `<rdir>/manifest/part-<n>.parquet`
    (one atomic write) when it holds `max_rows` rows, when its oldest row has waited
    `max_seconds` (checked on every `add` and, with `tick_every` > 0, by a daemon thread, so a
    stall of the workers does not hold rows back), when it holds as many rows as the run's earlier
    parts together, and on close - also when the run fails. The third rule makes parts grow
    1, 1, 2, 4, ... batches up to max_rows: a run's first rows are durable at once, and a killed
    driver never loses more rows than were already durable (nor more than max_rows rows or
    max_seconds of them).

    Rows lost with a killed driver do not break resume: their photos' outputs exist but no row
    names them, so the resumed run finds no prior row for them (facepriv/runs/incremental.py), cloaks
    them again (outputs are written atomically) and records each exactly once. A failed part
    write keeps the rows buffered and the part's number, so a retry neither loses nor repeats rows.
    """

    def __init__(self, dst, rdir: str, max_rows: int = PART_ROWS, max_seconds: float = PART_SECONDS,
                 clock: Callable[[], float] = time.monotonic, tick_every: float = 0.0):
        if max_rows < 1 or max_seconds <= 0:
            raise ValueError(f"manifest parts need max_rows >= 1 and max_seconds > 0, not {max_rows}, {max_seconds}")
        self._dst, self._rdir = dst, rdir
        self.max_rows, self.max_seconds, self._clock = max_rows, max_seconds, clock
        self._rows: list[dict[str, Any]] = []
        self._since = 0.0  # clock() when the oldest buffered row arrived
        self.parts = 0  # parts written
        self.written = 0  # rows in them
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        if tick_every > 0:
            self._thread = threading.Thread(target=self._tick_loop, args=(tick_every,), daemon=True,
                                            name="facepriv-manifest-parts")
            self._thread.start()

    def add(self, rows: Sequence[dict[str, Any]]) -> None:
        with self._lock:
            if not self._rows:
                self._since = self._clock()
            self._rows.extend(rows)
            if self._due():
                self._write()

    def tick(self) -> None:
        """Write the buffer if its oldest row has waited long enough (or any other rule holds)."""
        with self._lock:
            if self._due():
                self._write()

    def flush(self) -> None:
        with self._lock:
            self._write()

    def close(self, failing: bool = False) -> None:
        """Stop the ticker and write what is buffered; while the run is `failing`, a failed write
        is dropped so that the run's own error is the one raised."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self.flush()
        except Exception:  # noqa: BLE001
            if not failing:
                raise

    def __enter__(self) -> "PartWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failing=exc_type is not None)

    def _due(self) -> bool:
        n = len(self._rows)
        return n > 0 and (n >= self.max_rows or n >= self.written
                          or self._clock() - self._since >= self.max_seconds)

    def _write(self) -> None:
        if not self._rows:
            return
        self._dst.write_bytes(f"{self._rdir}/manifest/part-{self.parts:05d}.parquet", table_bytes(self._rows))
        self.parts += 1
        self.written += len(self._rows)
        self._rows = []

    def _tick_loop(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - the rows stay buffered: the next add or close writes them (or raises)
                pass


def read_manifest(fs, path: str) -> pa.Table:
    """Read all parquet parts under `path` (a run's manifest folder or a parent of many)."""
    files = sorted(p for p in fs.find(path) if p.endswith(".parquet"))
    if not files:
        return SCHEMA.empty_table()
    tables = []
    for p in files:
        with fs.open(p, "rb") as f:
            tables.append(pq.read_table(f, schema=SCHEMA))
    return pa.concat_tables(tables)


def rows_from_table(table: pa.Table) -> list[dict[str, Any]]:
    return table.to_pylist()


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str)
