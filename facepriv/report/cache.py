"""The report's memory, so a report run again judges only what it has not measured.

  REPORT/cache/measures/<run_id>/<config>/part-*.parquet   one row per measured probe
  REPORT/cache/galleries/<judge>-<gallery>.npz             one enrolled gallery

A measure (`facepriv.report.measure.Measure`: embeddings, re-detection, the classifier's
predictions) is stored under the signature of what it depends on: the run's row (source key
and content hash, output key, settings hash, when it was written, its faces) inside a folder
named by the report's configuration (judges, transforms, detector, classifier). Rates are not
stored: they are recomputed from the embeddings, so a new gallery or threshold costs nothing.
Part files are only ever added (each report writes one part per run with what it measured);
an unreadable part is ignored and its rows measured again. A gallery is stored under the
signature of its folder listing (names, sizes, modification times), the selection and the
judge. No pickle: Parquet of bytes, npz read with allow_pickle=False.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import re
import secrets
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

VERSION = 1  # bump when what a Measure holds, or how it is measured, changes
CACHE = "cache"


def signature(*parts: Any) -> str:
    """A short stable hash of JSON-able parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def judge_identity(j: Any) -> list:
    return [getattr(j, "name", ""), type(j).__name__, getattr(j, "metric", ""), float(getattr(j, "threshold", 0)),
            getattr(j, "fingerprint", None)]


def safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", s)


class MeasureCache:
    """The measures of one run under one report configuration, in `archive` below `prefix`."""

    def __init__(self, archive, prefix: str, run_id: str, config: str):
        self.archive = archive
        self.dir = posixpath.join(prefix, CACHE, "measures", safe_name(run_id or "run"), config)
        self.notes: list[str] = []

    def load(self) -> dict[str, bytes]:
        """{row signature: Measure bytes} of every readable part."""
        out: dict[str, bytes] = {}
        fs, root = self.archive.fs, f"{self.archive.root}/{self.dir}"
        try:
            names = sorted(p for p in fs.ls(root, detail=False) if p.endswith(".parquet")) if fs.exists(root) else []
        except FileNotFoundError:
            names = []
        for p in names:
            try:
                t = pq.read_table(io.BytesIO(fs.cat_file(p)))
            except Exception as e:  # noqa: BLE001 - a torn part is measured again, not fatal
                self.notes.append(f"report cache part {posixpath.basename(p)} unreadable ({type(e).__name__}); "
                                  "its rows are measured again")
                continue
            for sig, payload in zip(t.column("sig").to_pylist(), t.column("measure").to_pylist()):
                out[sig] = payload
        return out

    def add(self, entries: Sequence[tuple[str, bytes]]) -> None:
        if not entries:
            return
        table = pa.table({"sig": pa.array([s for s, _ in entries], pa.string()),
                          "measure": pa.array([b for _, b in entries], pa.binary())})
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        self.archive.write_bytes(f"{self.dir}/part-{stamp}-{secrets.token_hex(3)}.parquet", buf.getvalue())


def row_signature(row: dict[str, Any], wanted: dict[str, list[int]], faces: Sequence[dict[str, Any]]) -> str:
    return signature(row.get("source_key"), row.get("output_key"), row.get("content_sha256"), row.get("settings_hash"),
                     str(row.get("finished_at")), wanted,
                     [[float(v) for v in np.asarray(f["box"]).reshape(-1)[:4]] for f in faces])


# -- galleries ---------------------------------------------------------------------------------
def gallery_listing_signature(fs, base: str, select_n: int | None) -> str:
    """Signature of ROOT/<identity>/<photo> as listed: names, sizes, modification times."""
    entries = []
    for p, info in sorted(fs.find(base, detail=True, withdirs=False).items()):
        entries.append((posixpath.relpath(p, base), info.get("size"), str(info.get("mtime") or info.get("LastModified")
                                                                            or info.get("ETag") or "")))
    return signature(entries, select_n)


def save_gallery(archive, path: str, g) -> None:
    arrays: dict[str, np.ndarray] = {}
    ids = g.identities
    for k, ident in enumerate(ids):
        arrays[f"e{k}"] = np.asarray(g.embeddings[ident], np.float32)
    meta = {"identities": ids, "sources": [g.sources.get(i, []) for i in ids], "skipped": [list(s) for s in g.skipped],
            "metric": g.metric, "threshold": g.threshold, "judge": g.judge}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    archive.write_bytes(path, buf.getvalue())


def load_gallery(archive, path: str):
    from facepriv.judges import Gallery

    try:
        data = archive.read_bytes(path)
    except Exception:  # noqa: BLE001 - not cached (or unreadable): enrol again
        return None
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            embs = {ident: z[f"e{k}"] for k, ident in enumerate(meta["identities"])}
    except Exception:  # noqa: BLE001
        return None
    g = Gallery(meta["metric"], float(meta["threshold"]), embs, judge=meta["judge"])
    g.sources = {i: list(s) for i, s in zip(meta["identities"], meta["sources"])}
    g.skipped = [tuple(s) for s in meta["skipped"]]
    return g
