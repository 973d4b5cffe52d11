"""The Ray layer: shard an archive over workers that each hold one `Cloaker`.

Ray Data streams source keys through `map_batches(Cloaker, ...)` (the model is loaded once per
worker actor); the driver consumes manifest rows as they finish, writes them as Parquet parts
and keeps only running totals. No cluster address -> an embedded local Ray instance.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any

from tqdm import tqdm

from . import manifest
from .archive import Archive, open_pair
from .pipeline import Cloaker, CloakSettings, Tally


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def init_ray(address: str | None = None, num_cpus: int | None = None, quiet: bool = True):
    """Join `address` (or $RAY_ADDRESS); otherwise start an embedded local instance."""
    import ray

    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {"log_to_driver": not quiet, "include_dashboard": False} if not address else {}
    if address:
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=True)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(address="local", num_cpus=num_cpus, ignore_reinit_error=True, **kwargs)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.verbose_progress = False
    ctx.print_on_execution_start = False
    return ray


def cluster_plan(workers: int | None, gpus_per_worker: float | None) -> tuple[int, float, int]:
    """(workers, gpus per worker, torch threads per worker) from what the cluster has."""
    import ray

    res = ray.cluster_resources()
    gpus = float(res.get("GPU", 0))
    cpus = int(res.get("CPU", 1))
    if gpus_per_worker is None:
        gpus_per_worker = 1.0 if gpus >= 1 else 0.0
    if gpus_per_worker > gpus:
        gpus_per_worker = 0.0
    if workers is None:
        workers = max(1, int(gpus // gpus_per_worker)) if gpus_per_worker else max(1, cpus)
    threads = max(1, cpus // workers) if not gpus_per_worker else max(1, min(4, cpus // max(workers, 1)))
    return workers, gpus_per_worker, threads


def run_cloak(src: str, dst: str, settings: CloakSettings, *, address: str | None = None,
              workers: int | None = None, gpus_per_worker: float | None = None, batch_size: int = 8,
              s3_endpoint: str | None = None, retries: int = 5, progress: bool = True,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Cloak SRC into DST on Ray; returns summary.json's content (also written under DST)."""
    src_a, dst_a = open_pair(src, dst, s3_endpoint, retries)
    run_id = new_run_id()
    ray = init_ray(address)
    workers, gpw, threads = cluster_plan(workers, gpus_per_worker)
    keys = list(src_a.list_images())
    log(f"run {run_id}: {len(keys)} photos from {src} -> {dst} "
        f"({workers} worker(s), {gpw:g} GPU each, {threads} torch thread(s) each)")
    t0 = time.perf_counter()
    tally = Tally()
    rdir = manifest.run_dir(run_id)
    if keys:
        ds = ray.data.from_items([{"key": k} for k in keys], override_num_blocks=max(1, min(len(keys), workers * 8)))
        out = ds.map_batches(
            Cloaker,
            fn_constructor_kwargs=dict(src=src, dst=dst, settings=settings, run_id=run_id,
                                       s3_endpoint=s3_endpoint, retries=retries, torch_threads=threads),
            batch_size=batch_size, concurrency=workers, num_gpus=gpw, num_cpus=1 if not gpw else 0,
            batch_format="numpy", zero_copy_batch=True, max_restarts=-1, max_task_retries=-1,
        )
        _consume(out.iter_batches(batch_format="pyarrow", batch_size=None), dst_a, rdir, tally, len(keys),
                 progress)
    seconds = time.perf_counter() - t0
    summary = tally.summary(run_id, seconds)
    summary.update(src=src, dst=dst, attack=settings.attack, eps=settings.eps, model=settings.model,
                   workers=workers)
    dst_a.write_text(f"{rdir}/summary.json", json.dumps(summary, indent=2, default=str))
    return summary


def _consume(batches: Iterable, dst: Archive, rdir: str, tally: Tally, total: int, progress: bool) -> None:
    bar = tqdm(total=total, desc="cloaking", unit="photo", disable=not progress, file=sys.stderr)
    part = 0
    for table in batches:
        rows = table.to_pylist()
        if not rows:
            continue
        dst.write_bytes(f"{rdir}/manifest/part-{part:05d}.parquet", manifest.table_bytes(rows))
        part += 1
        for r in rows:
            tally.add(r)
        bar.update(len(rows))
        bar.set_postfix(errors=tally.errors, faces=tally.faces)
    bar.close()


def run_in_process(src: str, dst: str, settings: CloakSettings, batch_size: int = 8,
                   s3_endpoint: str | None = None) -> dict[str, Any]:
    """The same pipeline without Ray (a plain loop): for tests and baselines."""
    src_a, dst_a = open_pair(src, dst, s3_endpoint)
    run_id = new_run_id()
    cloaker = Cloaker(src, dst, settings, run_id, s3_endpoint=s3_endpoint)
    keys = list(src_a.list_images())
    t0 = time.perf_counter()
    tally = Tally()
    rdir = manifest.run_dir(run_id)
    for i in range(0, len(keys), batch_size):
        rows = cloaker.process(keys[i : i + batch_size])
        dst_a.write_bytes(f"{rdir}/manifest/part-{i // batch_size:05d}.parquet", manifest.table_bytes(rows))
        tally.add_all(rows)
    summary = tally.summary(run_id, time.perf_counter() - t0)
    summary.update(src=src, dst=dst, attack=settings.attack, eps=settings.eps, model=settings.model, workers=0)
    dst_a.write_text(f"{rdir}/summary.json", json.dumps(summary, indent=2, default=str))
    return summary
