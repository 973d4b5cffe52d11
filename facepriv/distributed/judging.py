"""The report's Ray layer: measure probes in Ray workers, the way the cloak is sharded
(`facepriv report` hands `measure_on_ray` to `build_report`; the report package never imports Ray).

`MeasureWorker` is the callable class given to `map_batches`: it loads MTCNN, every judge and
the run's classifier once in `__init__` (from their specs: a judge object is not shipped) and
measures each batch of tasks (`facepriv.report.measure.Measurer`: the written files re-read,
re-detected and embedded, batched per worker). Measures come back as bytes, in task order.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from facepriv.report.measure import Measure, Task, WorkerSpec, build_measurer
from facepriv.distributed.quiet import filtered_stderr


class MeasureWorker:
    def __init__(self, spec: WorkerSpec):
        self.measurer = build_measurer(spec)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        tasks = [Task(**json.loads(str(s))) for s in batch["task"]]
        measures = self.measurer.measure(tasks)
        return {"i": np.asarray(batch["i"]), "measure": np.array([m.to_bytes() for m in measures], dtype=object)}


def task_json(t: Task) -> str:
    return json.dumps(dataclasses.asdict(t), default=lambda v: np.asarray(v).tolist())


def measure_on_ray(spec: WorkerSpec, tasks: Sequence[Task], workers: int, batch_size: int = 8,
                   address: str | None = None, on_done: Callable[[int], None] | None = None) -> list[Measure]:
    """Measure `tasks` on `workers` Ray actors; returns the measures in task order."""
    from facepriv.distributed.runner import init_ray

    ray = init_ray(address)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    spec = dataclasses.replace(spec, torch_threads=spec.torch_threads or max(1, cpus // max(1, workers)))
    items = [{"i": i, "task": task_json(t)} for i, t in enumerate(tasks)]
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 4 * workers)))
    out = ds.map_batches(MeasureWorker, fn_constructor_kwargs={"spec": spec}, batch_size=batch_size,
                         compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1, batch_format="numpy")
    got: list[Measure | None] = [None] * len(tasks)
    with filtered_stderr():
        for b in out.iter_batches(batch_format="numpy", batch_size=None):
            for i, payload in zip(b["i"], b["measure"]):
                got[int(i)] = Measure.from_bytes(bytes(payload))
            if on_done is not None:
                on_done(len(b["i"]))
    missing = [tasks[i].key for i, m in enumerate(got) if m is None]
    if missing:
        raise RuntimeError(f"{len(missing)} probe(s) came back unmeasured from the Ray workers, e.g. {missing[0]}")
    return got  # type: ignore[return-value]
