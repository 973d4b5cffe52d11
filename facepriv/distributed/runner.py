"""The Ray layer: shard an archive over workers that each hold one `Cloaker`.

Ray Data streams source keys through `map_batches(Cloaker, ...)` (the model is loaded once per
worker actor); the driver consumes manifest rows as they finish, writes them as Parquet parts
(buffered to a sensible size, `manifest.PartWriter`) and keeps only running totals. No cluster
address -> an embedded local Ray instance.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any


from facepriv.io import manifest
from facepriv.io.archive import open_pair
from facepriv.core.settings import CloakSettings
from facepriv.pipeline.tally import Tally
from facepriv.distributed.quiet import filtered_stderr, quiet_loggers
from facepriv.runs.preflight import preflight

PART_TICK = 1.0  # seconds between the driver's checks for manifest rows that waited long enough


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def init_ray(address: str | None = None, num_cpus: int | None = None, quiet: bool = True):
    """Join `address` (or $RAY_ADDRESS); otherwise start an embedded local instance."""
    import ray

    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {"log_to_driver": not quiet, "include_dashboard": False} if not address else {}
    if quiet:
        quiet_loggers()
    level = logging.WARNING if quiet else logging.INFO
    if address:
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=True, logging_level=level)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(address="local", num_cpus=num_cpus, ignore_reinit_error=True, logging_level=level, **kwargs)
    if quiet:
        quiet_loggers()  # ray.init configures Ray's loggers again
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
    # an explicit --gpus-per-worker is honoured even when no GPU node is up yet: on an
    # autoscaling cluster (GPU workers from min 0) the pending request launches one
    if workers is None:
        workers = max(1, int(gpus // gpus_per_worker)) if gpus_per_worker else max(1, cpus)
    threads = max(1, cpus // workers) if not gpus_per_worker else max(1, min(4, cpus // max(workers, 1)))
    return workers, gpus_per_worker, threads


def run_cloak(src: str, dst: str, settings: CloakSettings, *, address: str | None = None,
              workers: int | None = None, gpus_per_worker: float | None = None, batch_size: int = 8,
              s3_endpoint: str | None = None, retries: int = 5, progress: bool = True,
              log: Callable[[str], None] = print, log_every: float = 0.0, incremental: bool = True,
              torch_threads: int | None = None,
              on_rows: Callable[[list[dict]], None] | None = None, force_lock: bool = False,
              allow_empty: bool = False, part_rows: int = manifest.PART_ROWS,
              part_seconds: float = manifest.PART_SECONDS) -> dict[str, Any]:
    """Cloak SRC into DST on Ray; returns summary.json's content (also written under DST).

    Streaming: the listing is read lazily by a Ray Data source (facepriv/distributed/listing.py) and
    flows in blocks of `batch_size` keys through `map_batches(ShardWorker)`; the driver keeps
    running totals only. Incremental: earlier runs (finished or interrupted) are folded into
    DST/_facepriv/manifest/ first, and workers skip photos already cloaked with the same
    content and settings (facepriv/runs/incremental.py); this run is folded in at the end.
    Worker faults: actors restart and their batches are retried (outputs are written
    atomically, so a retried photo just overwrites its own file). One run per DST: the run
    holds DST's lease (facepriv/runs/lock.py) from start to end - cluster start, compaction and slow
    batches included: the lease renews itself in the background; `force_lock` takes it over.
    Manifest rows are written in parts of up to `part_rows` rows, none held back longer than
    `part_seconds` (manifest.PartWriter), and all before the summary and the compaction.
    Surrogates (embed-pgd): read once here, on the driver (its $FACEPRIV_HOME or the paths
    given), and handed to every worker through the object store (`ray.put`), so no node needs
    them installed and every worker crafts with the weights the settings hash names.
    """
    src_a, dst_a = open_pair(src, dst, s3_endpoint, retries)
    # user mistakes: exit 2 before torch or Ray is imported and before DST is created
    preflight(src_a, settings, allow_empty)

    from facepriv.distributed.listing import ListingSource, count_async
    from facepriv.distributed.worker import ShardWorker
    from facepriv.runs import incremental as inc
    from facepriv.runs.lock import DstLock
    from facepriv.runs.progress import Progress
    from facepriv.strategies import read_surrogates

    surrogates = read_surrogates(settings)
    run_id = new_run_id()
    with DstLock(dst_a, run_id) as lock:
        lock.acquire(force=force_lock)
        ray = init_ray(address)
        workers, gpw, threads = cluster_plan(workers, gpus_per_worker)
        threads = torch_threads or threads
        if incremental:
            folded = inc.compact(dst_a)
            if folded["folded_runs"]:
                log(f"folded earlier run(s) {', '.join(folded['folded_runs'])} into {inc.VIEW_DIR}/ "
                    f"({folded['rows']} photos known)")
        counter = count_async(src_a)
        log(f"run {run_id}: {src} -> {dst} ({workers} worker(s), {gpw:g} GPU each, "
            f"{threads} torch thread(s) each, batches of {batch_size})")
        if surrogates:
            log("surrogates read on the driver and shipped to the workers: "
                + ", ".join(f"{w.spec} (weights sha256 {w.sha256[:12]})" for w in surrogates))
        t0 = time.perf_counter()
        tally = Tally()
        rdir = manifest.run_dir(run_id)
        ds = ray.data.read_datasource(ListingSource(src, s3_endpoint, retries, block_rows=batch_size),
                                      num_cpus=0)  # the listing is I/O: it must not hold a worker CPU
        out = ds.map_batches(
            ShardWorker,
            fn_constructor_kwargs=dict(src=src, dst=dst, settings=settings, run_id=run_id, s3_endpoint=s3_endpoint,
                                       retries=retries, torch_threads=threads, incremental=incremental,
                                       surrogates=ray.put(surrogates)),
            batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=workers), num_gpus=gpw,
            num_cpus=1 if not gpw else 0, batch_format="numpy", zero_copy_batch=True,
        )  # Ray Data restarts dead actors and retries their batches by default (max_restarts=-1)
        bar = Progress(lambda: counter.total, bar=progress, log_every=log_every, log=log)
        try:
            with (filtered_stderr(),  # Ray's one unfixable ERROR line per actor (facepriv/distributed/quiet.py)
                  manifest.PartWriter(dst_a, rdir, part_rows, part_seconds, tick_every=PART_TICK) as parts):
                _consume(out.iter_batches(batch_format="pyarrow", batch_size=None), parts, tally, bar,
                         on_rows, lock.check)
        finally:
            bar.close()
        lock.check()
        seconds = time.perf_counter() - t0
        summary = tally.summary(run_id, seconds)
        summary.update(src=src, dst=dst, attack=settings.attack, eps=settings.eps, model=settings.model,
                       workers=workers, gpus_per_worker=gpw, listed=counter.wait(60))
        dst_a.write_text(f"{rdir}/summary.json", json.dumps(summary, indent=2, default=str))
        if incremental:
            inc.compact(dst_a, [run_id])
        return summary


def _consume(batches: Iterable, parts: manifest.PartWriter, tally: Tally, bar, on_rows=None,
             check=None) -> None:
    for table in batches:
        if check is not None:
            check()  # stop at once should another run have taken DST's lease over
        rows = table.to_pylist()
        if not rows:
            continue
        parts.add(rows)
        for r in rows:
            tally.add(r)
        bar.update(rows)
        if on_rows is not None:
            on_rows(rows)


def run_in_process(src: str, dst: str, settings: CloakSettings, batch_size: int = 8,
                   s3_endpoint: str | None = None, part_rows: int = manifest.PART_ROWS,
                   part_seconds: float = manifest.PART_SECONDS) -> dict[str, Any]:
    """The same pipeline without Ray (a plain loop): for tests and baselines."""
    from facepriv.pipeline.cloaker import Cloaker
    from facepriv.runs.lock import DstLock

    src_a, dst_a = open_pair(src, dst, s3_endpoint)
    run_id = new_run_id()
    with DstLock(dst_a, run_id) as lock:
        lock.acquire()
        cloaker = Cloaker(src, dst, settings, run_id, s3_endpoint=s3_endpoint)
        keys = list(src_a.list_images())
        t0 = time.perf_counter()
        tally = Tally()
        rdir = manifest.run_dir(run_id)
        with manifest.PartWriter(dst_a, rdir, part_rows, part_seconds, tick_every=PART_TICK) as parts:
            for i in range(0, len(keys), batch_size):
                lock.check()
                rows = cloaker.process(keys[i : i + batch_size])
                parts.add(rows)
                tally.add_all(rows)
        lock.check()
        summary = tally.summary(run_id, time.perf_counter() - t0)
        summary.update(src=src, dst=dst, attack=settings.attack, eps=settings.eps, model=settings.model, workers=0)
        dst_a.write_text(f"{rdir}/summary.json", json.dumps(summary, indent=2, default=str))
        return summary
