"""The Ray Data worker: a `Cloaker` plus the incremental-run skip check.

`ShardWorker` is the callable class given to `map_batches`: it loads the model once (through
`Cloaker`), and for each batch of keys reads each source file, hashes it, skips the photos the
compacted manifest says are already cloaked with the same content and settings
(`incremental.should_skip`), and runs the Cloaker on the rest - so the faces of all remaining
photos of the batch go through the model together. Rows carry the Ray node id in `worker`.
"""

from __future__ import annotations

import hashlib
import os
import socket
from datetime import datetime, timezone
from typing import Any

from facepriv.io import manifest
from facepriv.runs.incremental import PriorIndex, should_skip
from facepriv.core.settings import CloakSettings
from facepriv.pipeline.cloaker import Cloaker


def _node_id() -> str | None:
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001
        pass
    return None


class ShardWorker:
    """`surrogates`: the driver's `strategies.read_surrogates(settings)`, or a Ray object
    reference to it (`ray.put` on the driver): the worker builds the surrogates from those
    bytes, never from its own node's $FACEPRIV_HOME."""

    def __init__(self, src: str, dst: str, settings: CloakSettings, run_id: str, s3_endpoint: str | None = None,
                 retries: int = 5, torch_threads: int | None = None, incremental: bool = True,
                 surrogates=None):
        if surrogates is not None and not isinstance(surrogates, list):
            import ray

            surrogates = ray.get(surrogates)
        self.cloaker = Cloaker(src, dst, settings, run_id, s3_endpoint=s3_endpoint, retries=retries,
                               torch_threads=torch_threads, surrogates=surrogates)
        node = _node_id()
        self.cloaker.worker = f"{socket.gethostname()}:{os.getpid()}" + (f"@{node}" if node else "")
        self.prior = PriorIndex(self.cloaker.dst) if incremental else None

    def __call__(self, batch: dict[str, Any]):
        return manifest.to_table(self.process([str(k) for k in batch["key"]]))

    def process(self, keys: list[str]) -> list[dict[str, Any]]:
        rows: dict[str, dict[str, Any]] = {}
        todo: list[str] = []
        for k in keys:
            row = self._skip_row(k) if self.prior is not None else None
            if row is None:
                todo.append(k)
            else:
                rows[k] = row
        if todo:
            for r in self.cloaker.process(todo):
                rows[r["source_key"]] = r
        return [rows[k] for k in keys]

    def _skip_row(self, key: str) -> dict[str, Any] | None:
        prior = self.prior.get(key)
        if prior is None:
            return None
        c = self.cloaker
        try:
            data = c.src.read_bytes(key)
        except Exception:  # noqa: BLE001 - let the Cloaker produce the error row
            return None
        sha = hashlib.sha256(data).hexdigest()
        if not should_skip(prior, sha, c.settings_hash, c.dst.exists(key)):
            return None
        return manifest.empty_row(
            run_id=c.run_id, source_key=key, output_key=key, size_bytes=len(data), content_sha256=sha,
            status="skipped", reason=f"unchanged: cloaked by run {prior['run_id']} with the same settings",
            attack=c.settings.attack, eps=c.settings.eps, settings_json=c.settings_json,
            settings_hash=c.settings_hash, model=c.settings.model, model_sha256=c.model_sha, worker=c.worker,
            finished_at=datetime.now(timezone.utc),
        )
