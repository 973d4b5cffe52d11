"""Resumable, incremental runs: which photos are already cloaked, and the compacted manifest.

Layout under DST (see also facepriv/manifest.py):
  _facepriv/runs/<run_id>/manifest/part-*.parquet   rows of one run (every run writes its own)
  _facepriv/manifest/latest.parquet                  the latest *processing* row per source key
                                                     across all runs, sorted by source_key
  _facepriv/manifest/compacted_runs.json             runs already folded into latest.parquet

Skip rule (decided per photo in the workers, `should_skip`): a photo is skipped when the
compacted view has a row for its key with status ok/no_face, the same `content_sha256` (the
worker hashes the source bytes - reading is far cheaper than detecting and attacking, and
unlike size/mtime/ETag it is exact on every storage), the same `settings_hash` (attack
settings + model sha256) and the output file still exists under DST. Error rows are retried.
A `skipped` row never replaces the row that describes the file on disk in the compacted view.

Resume: the run folds every earlier run (finished or interrupted) into the view *before* it
starts, so photos an interrupted run finished are skipped; at the end it folds itself in.
Folding is idempotent (latest row per key), so a crash during compaction is harmless.
One run per DST at a time. Compaction is a columnar Arrow job in the driver: its memory grows
with the archive (about 1 KB per photo); lookups in the workers read one row group at a time.
"""

from __future__ import annotations

import bisect
import io
import json
import posixpath
from collections import OrderedDict
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import manifest
from .archive import Archive

VIEW_DIR = "_facepriv/manifest"
VIEW_KEY = f"{VIEW_DIR}/latest.parquet"
STATE_KEY = f"{VIEW_DIR}/compacted_runs.json"
RUNS_DIR = "_facepriv/runs"
ROW_GROUP = 2048
DONE = ("ok", "no_face")
LOOKUP_COLUMNS = ["source_key", "run_id", "status", "content_sha256", "settings_hash"]


# -- pure decisions ----------------------------------------------------------------------
def should_skip(prior: dict[str, Any] | None, content_sha256: str, settings_hash: str, output_exists: bool) -> bool:
    return bool(
        prior is not None and prior.get("status") in DONE and prior.get("content_sha256") == content_sha256
        and prior.get("settings_hash") == settings_hash and output_exists
    )


def latest_per_key(table: pa.Table) -> pa.Table:
    """Latest processing row per source_key (skipped rows only where nothing else exists)."""
    if table.num_rows == 0:
        return table
    is_skip = pc.equal(table["status"], "skipped").fill_null(False)
    # rank: processing rows beat skipped rows, then later finished_at, then later run_id
    t = table.append_column("_real", pc.invert(is_skip)).append_column("_i", pa.array(range(table.num_rows)))
    order = pc.sort_indices(t, sort_keys=[("source_key", "ascending"), ("_real", "descending"),
                                          ("finished_at", "descending"), ("run_id", "descending"),
                                          ("_i", "descending")])
    t = t.take(order)
    keys = t["source_key"].to_pylist()
    keep = [i for i in range(len(keys)) if i == 0 or keys[i] != keys[i - 1]]
    return t.take(pa.array(keep, pa.int64())).drop_columns(["_real", "_i"])


# -- the shell: reading and writing the view -----------------------------------------------
def _read_parquet(dst: Archive, path: str) -> pa.Table:
    with dst.fs.open(path, "rb") as f:
        return pq.read_table(f, schema=manifest.SCHEMA)


def run_ids(dst: Archive) -> list[str]:
    base = f"{dst.root}/{RUNS_DIR}"
    if not dst.fs.exists(base):
        return []
    return sorted(posixpath.basename(p.rstrip("/")) for p in dst.fs.ls(base, detail=False))


def compact(dst: Archive, runs: list[str] | None = None) -> dict[str, Any]:
    """Fold runs (default: all not yet folded) into latest.parquet; returns a small report."""
    dst.invalidate()
    state_path = f"{dst.root}/{STATE_KEY}"
    done: list[str] = json.loads(dst.fs.cat_file(state_path)) if dst.fs.exists(state_path) else []
    todo = [r for r in (run_ids(dst) if runs is None else runs) if r not in set(done)]
    view_path = f"{dst.root}/{VIEW_KEY}"
    tables = [_read_parquet(dst, view_path)] if dst.fs.exists(view_path) else []
    for r in todo:
        mdir = f"{dst.root}/{RUNS_DIR}/{r}/manifest"
        if dst.fs.exists(mdir):
            tables.append(manifest.read_manifest(dst.fs, mdir))
    if todo:
        table = latest_per_key(pa.concat_tables(tables) if tables else manifest.SCHEMA.empty_table())
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd", row_group_size=ROW_GROUP)
        dst.write_bytes(VIEW_KEY, buf.getvalue())  # atomic
        dst.write_text(STATE_KEY, json.dumps(sorted(set(done) | set(todo)), indent=0))
        rows = table.num_rows
    else:
        rows = pq.ParquetFile(dst.fs.open(view_path, "rb")).metadata.num_rows if tables else 0
    return {"folded_runs": todo, "rows": rows}


def read_view(dst: Archive) -> pa.Table:
    """The compacted view (latest row per source key), or an empty table."""
    path = f"{dst.root}/{VIEW_KEY}"
    return _read_parquet(dst, path) if dst.fs.exists(path) else manifest.SCHEMA.empty_table()


class PriorIndex:
    """Worker-side lookup of the compacted view by source key, one row group at a time.

    The view is sorted by source_key, so each key lives in at most one row group, found by
    bisecting the row groups' min/max statistics. A few row groups are cached (the listing is
    mostly in key order), so memory stays at a few thousand rows regardless of archive size.
    """

    def __init__(self, dst: Archive, cache_groups: int = 4):
        self._file = None
        self._cache: OrderedDict[int, dict[str, dict[str, Any]]] = OrderedDict()
        self._cache_groups = cache_groups
        path = f"{dst.root}/{VIEW_KEY}"
        if not dst.fs.exists(path):
            self._mins: list[str] = []
            self._maxs: list[str] = []
            return
        self._file = pq.ParquetFile(dst.fs.open(path, "rb"))
        md = self._file.metadata
        col = md.schema.to_arrow_schema().get_field_index("source_key")
        self._mins, self._maxs = [], []
        for g in range(md.num_row_groups):
            st = md.row_group(g).column(col).statistics
            if st is None or not st.has_min_max:  # no statistics: read that group's keys once
                ks = self._file.read_row_group(g, columns=["source_key"])["source_key"]
                self._mins.append(pc.min(ks).as_py())
                self._maxs.append(pc.max(ks).as_py())
            else:
                self._mins.append(st.min)
                self._maxs.append(st.max)

    def get(self, key: str) -> dict[str, Any] | None:
        g = bisect.bisect_right(self._mins, key) - 1
        if g < 0 or key > self._maxs[g]:
            return None
        if g not in self._cache:
            t = self._file.read_row_group(g, columns=LOOKUP_COLUMNS)
            self._cache[g] = {r["source_key"]: r for r in t.to_pylist()}
            while len(self._cache) > self._cache_groups:
                self._cache.popitem(last=False)
        self._cache.move_to_end(g)
        return self._cache[g].get(key)
