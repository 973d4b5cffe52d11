"""Resumable, incremental runs: which photos are already cloaked, and the compacted manifest.

Layout under DST (see also facepriv/io/manifest.py):
  _facepriv/runs/<run_id>/manifest/part-*.parquet   rows of one run (every run writes its own)
  _facepriv/manifest/latest.parquet                  the latest *processing* row per source key
                                                     across all runs, sorted by source_key
  _facepriv/manifest/compacted_runs.json             runs already folded into latest.parquet

Skip rule (decided per photo in the workers, `should_skip`): a photo is skipped when the
compacted view has a row for its key with status ok/no_face, the same `content_sha256` (the
worker hashes the source bytes - reading is far cheaper than detecting and attacking, and
unlike size/mtime/ETag it is exact on every storage), the same `settings_hash` (attack
settings + model sha256 + for embed-pgd each surrogate's weights sha256, so a different model
installed under the same name re-cloaks) and the output file still exists under DST. Error
rows are retried.
A `skipped` row never replaces the row that describes the file on disk in the compacted view.

Resume: the run folds every earlier run (finished or interrupted) into the view *before* it
starts, so photos an interrupted run finished are skipped; at the end it folds itself in.
Folding is idempotent (latest row per key), so a crash during compaction is harmless.
One run per DST at a time. Compaction runs in the driver with bounded memory (sorted spills
and a streaming k-way merge, see `compact`); lookups in the workers read one row group at a time.
"""

from __future__ import annotations

import bisect
import heapq
import json
import os
import posixpath
import tempfile
from collections import OrderedDict
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from facepriv.io import manifest
from facepriv.io.archive import Archive

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
    """Latest processing row per source_key (skipped rows only where nothing else exists), in
    key order: the table sorted by key (stably) and reduced by `merge_sorted`'s rule."""
    if table.num_rows == 0:
        return table
    rows = table.take(pc.sort_indices(table, sort_keys=[("source_key", "ascending")])).to_pylist()
    out: list[dict[str, Any]] = []
    merge_sorted([rows], out.extend)
    return pa.Table.from_pylist(out, schema=table.schema)


def _rank(row: dict[str, Any], source: int) -> tuple:
    """The order of rows of one key (the largest wins): processing rows beat skipped ones, then
    later finished_at, later run_id, later source; within a source the later row wins a tie."""
    t = row.get("finished_at")
    return (row.get("status") != "skipped", t is not None, t.timestamp() if t is not None else 0.0,
            row.get("run_id") or "", source)


def merge_sorted(sources, write, rows_per_write: int = ROW_GROUP) -> int:
    """k-way merge of row iterators, each sorted by source_key, keeping per key the row `_rank`
    prefers; `write(list of rows)` gets them in key order, rows_per_write at a time. Returns
    the rows written."""
    tagged = [((r["source_key"], i, r) for r in it) for i, it in enumerate(sources)]
    out: list[dict[str, Any]] = []
    n = 0
    key, best, best_rank = None, None, None
    for k, i, r in heapq.merge(*tagged, key=lambda t: (t[0], t[1])):
        if k != key:
            if best is not None:
                out.append(best)
            key, best, best_rank = k, r, _rank(r, i)
        else:
            rk = _rank(r, i)
            if rk >= best_rank:  # equal only within one source: its later row wins
                best, best_rank = r, rk
        if len(out) >= rows_per_write:
            write(out)
            n += len(out)
            out = []
    if best is not None:
        out.append(best)
    if out:
        write(out)
        n += len(out)
    return n


# -- the shell: reading and writing the view -----------------------------------------------
def _read_parquet(dst: Archive, path: str) -> pa.Table:
    with dst.fs.open(path, "rb") as f:
        return pq.read_table(f, schema=manifest.SCHEMA)


def run_ids(dst: Archive) -> list[str]:
    base = f"{dst.root}/{RUNS_DIR}"
    if not dst.fs.exists(base):
        return []
    return sorted(posixpath.basename(p.rstrip("/")) for p in dst.fs.ls(base, detail=False))


def _parts(dst: Archive, run: str) -> list[str]:
    mdir = f"{dst.root}/{RUNS_DIR}/{run}/manifest"
    return sorted(p for p in dst.fs.find(mdir) if p.endswith(".parquet")) if dst.fs.exists(mdir) else []


def _rows(path: str, fs=None):
    """Rows of a Parquet file, one row group in memory at a time."""
    f = fs.open(path, "rb") if fs is not None else open(path, "rb")
    with f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=ROW_GROUP):
            yield from batch.to_pylist()


def compact(dst: Archive, runs: list[str] | None = None, chunk_rows: int = 50_000) -> dict[str, Any]:
    """Fold runs (default: all not yet folded) into latest.parquet; returns a small report.

    Memory is bounded, not proportional to the archive: the new runs' rows are read a part at
    a time into chunks of at most ~chunk_rows rows, each reduced to its latest row per key,
    sorted and spilled to a local temporary file; then the old view and the spills (all
    sorted by key) are merged as streams, a row group at a time, into a new view that is
    uploaded in one atomic write."""
    dst.invalidate()
    state_path = f"{dst.root}/{STATE_KEY}"
    done: list[str] = json.loads(dst.fs.cat_file(state_path)) if dst.fs.exists(state_path) else []
    todo = [r for r in (run_ids(dst) if runs is None else runs) if r not in set(done)]
    view_path = f"{dst.root}/{VIEW_KEY}"
    has_view = dst.fs.exists(view_path)
    if not todo:
        rows = pq.ParquetFile(dst.fs.open(view_path, "rb")).metadata.num_rows if has_view else 0
        return {"folded_runs": [], "rows": rows}
    with tempfile.TemporaryDirectory(prefix="facepriv-compact-") as tmp:
        spills: list[str] = []
        chunk: list[pa.Table] = []
        held = 0

        def spill() -> None:
            nonlocal held
            if chunk:
                path = os.path.join(tmp, f"spill-{len(spills):05d}.parquet")
                pq.write_table(latest_per_key(pa.concat_tables(chunk)), path, row_group_size=ROW_GROUP)
                spills.append(path)
                chunk.clear()
                held = 0

        for r in todo:
            for part in _parts(dst, r):
                t = _read_parquet(dst, part)
                chunk.append(t)
                held += t.num_rows
                if held >= chunk_rows:
                    spill()
        spill()
        sources = ([_rows(view_path, dst.fs)] if has_view else []) + [_rows(p) for p in spills]
        out_path = os.path.join(tmp, "latest.parquet")
        with pq.ParquetWriter(out_path, manifest.SCHEMA, compression="zstd") as writer:
            rows = merge_sorted(sources, lambda rs: writer.write_table(
                pa.Table.from_pylist(rs, schema=manifest.SCHEMA), row_group_size=ROW_GROUP))
        dst.write_file(VIEW_KEY, out_path)  # atomic
    dst.write_text(STATE_KEY, json.dumps(sorted(set(done) | set(todo)), indent=0))
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
