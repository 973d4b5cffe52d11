"""The Parquet manifest: one row per input file. The schema is declared here, once.

Layout under DST:
  _facepriv/runs/<run_id>/manifest/part-<n>.parquet   rows of one run
  _facepriv/runs/<run_id>/summary.json               that run's summary
  _facepriv/manifest/latest.parquet                  latest row per source key across runs
                                                     (written by facepriv/runs/incremental.py)
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Sequence
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


def iter_rows(tables: Iterable[pa.Table]):
    for t in tables:
        yield from t.to_pylist()
