"""The report's Ray layer: enrol the gallery and measure probes in Ray workers, the way the
cloak is sharded (`facepriv report` hands this module to `build_report(remote=...)`, which calls
`enrol_on_ray` and `measure_on_ray`; the report package never imports Ray).

`MeasureWorker` and `EnrolWorker` are the callable classes given to `map_batches`: each loads
MTCNN and every judge (and the run's classifier) once in `__init__`, from their specs (a judge
object is not shipped), and maps each batch: `facepriv.report.measure.Measurer` (the written
files re-read, re-detected and embedded) or `Enroller` (gallery photos detected once, the
central face embedded by every judge). Results come back as bytes, in input order.
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from facepriv.report.measure import EnrolSpec, Enroller, Measure, Task, WorkerSpec, build_measurer
from facepriv.distributed.quiet import filtered_stderr


class MeasureWorker:
    def __init__(self, spec: WorkerSpec):
        self.measurer = build_measurer(spec)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        tasks = [Task(**json.loads(str(s))) for s in batch["task"]]
        measures = self.measurer.measure(tasks)
        return {"i": np.asarray(batch["i"]), "measure": np.array([m.to_bytes() for m in measures], dtype=object)}


class EnrolWorker:
    def __init__(self, spec: EnrolSpec):
        self.enroller = Enroller(spec)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        photos = [tuple(json.loads(str(p))) for p in batch["photo"]]
        res = self.enroller.enrol(photos)
        return {"i": np.asarray(batch["i"]), "why": np.array([r[3] for r in res], dtype=object),
                "emb": np.array([_emb_bytes(r[2]) for r in res], dtype=object)}


def _emb_bytes(embs: dict[str, np.ndarray] | None) -> bytes:
    """One photo's embeddings, one array per judge in spec order (npz arr_0, arr_1, ...), b"" for none."""
    if embs is None:
        return b""
    buf = io.BytesIO()
    np.savez(buf, *(np.asarray(e, np.float32) for e in embs.values()))
    return buf.getvalue()


def _pool(ray, items: list[dict], cls, spec, workers: int, batch_size: int):
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 4 * workers)))
    return ds.map_batches(cls, fn_constructor_kwargs={"spec": spec}, batch_size=batch_size,
                          compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1, batch_format="numpy")


def _with_threads(ray, spec, workers: int):
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return dataclasses.replace(spec, torch_threads=spec.torch_threads or max(1, cpus // max(1, workers)))


def enrol_on_ray(spec: EnrolSpec, photos: Sequence[tuple[str, str, str]], names: Sequence[str], workers: int,
                 batch_size: int = 8, address: str | None = None,
                 on_done: Callable[[int], None] | None = None) -> list[tuple]:
    """Enrol gallery `photos` ((identity, key, path) from `judges.gallery_photos`) on `workers`
    Ray actors; returns `judges.enrol_photos` results in order, embeddings keyed by `names`
    (the judge names of `spec.judge_specs`, in order)."""
    from facepriv.distributed.runner import init_ray

    ray = init_ray(address)
    spec = _with_threads(ray, spec, workers)
    items = [{"i": i, "photo": json.dumps(list(p))} for i, p in enumerate(photos)]
    got: list[tuple | None] = [None] * len(photos)
    with filtered_stderr():
        for b in _pool(ray, items, EnrolWorker, spec, workers, batch_size).iter_batches(batch_format="numpy",
                                                                                       batch_size=None):
            for i, why, payload in zip(b["i"], b["why"], b["emb"]):
                identity, key, _ = photos[int(i)]
                embs = None
                if len(payload):
                    with np.load(io.BytesIO(bytes(payload)), allow_pickle=False) as z:
                        embs = {n: z[f"arr_{k}"] for k, n in enumerate(names)}
                got[int(i)] = (identity, key, embs, str(why))
            if on_done is not None:
                on_done(len(b["i"]))
    missing = [photos[i][1] for i, r in enumerate(got) if r is None]
    if missing:
        raise RuntimeError(f"{len(missing)} gallery photo(s) came back unenrolled from the Ray workers, e.g. {missing[0]}")
    return got  # type: ignore[return-value]


def task_json(t: Task) -> str:
    return json.dumps(dataclasses.asdict(t), default=lambda v: np.asarray(v).tolist())


def measure_on_ray(spec: WorkerSpec, tasks: Sequence[Task], workers: int, batch_size: int = 8,
                   address: str | None = None, on_done: Callable[[int], None] | None = None) -> list[Measure]:
    """Measure `tasks` on `workers` Ray actors; returns the measures in task order."""
    from facepriv.distributed.runner import init_ray

    ray = init_ray(address)
    spec = _with_threads(ray, spec, workers)
    items = [{"i": i, "task": task_json(t)} for i, t in enumerate(tasks)]
    out = _pool(ray, items, MeasureWorker, spec, workers, batch_size)
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
