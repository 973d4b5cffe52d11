"""Fitting a universal perturbation over a crops dataset: single process, or distributed on Ray
with a coordinating actor, plus the outputs and resuming.

The math is `facepriv.attacks.uap` (pure torch); this module is the shell around it.

Distributed loop (`fit_distributed`)
------------------------------------
- W `ShardFitter` actors each load the model once and hold one shard of the crops dataset
  (rows i with i % W == shard), with their clean predictions computed once.
- One `Coordinator` actor (no CPU reserved) holds v and the history. Each pass it sends v to
  every worker; a worker runs `uap_pass_shard` (Algorithm 1 over its shard, shuffled with
  `pass_seed(seed, pass, shard)`) against its own copy of v and returns
  (delta = v_worker - v, fooled, total).
- Merge rule: v <- merge_updates(v, [delta_1..delta_W], xi, norm) = P_{p,xi}(v + sum_w delta_w)
  (sum-then-project, see facepriv/attacks/uap.py: order-independent; a worker that changed
  nothing does not pull v back; with W = 1 it is exactly the single-process pass).
  With `--method robust` each worker runs one epoch of `robust_pass_shard` (signed-gradient
  steps through the apply chain) over its 1/W of the faces, and the same sum-then-project
  merges their deltas: W workers together take as many steps per pass as one process takes
  over all the faces. (Their mean moved v 1/W as far per pass: on lfw50 with 2 workers it
  reached a training fooling rate of 0.208 after 60 passes against the single process's 0.268;
  the sum reaches 0.244.)
- The fooling rate recorded for a pass is that of the merged v, aggregated from all workers'
  counts (sum fooled / sum total after the merge), the same quantity the single-process
  loop records; the workers' counts under the v they were sent are kept as
  `fooling_rate_before`.
- Stops when the rate reaches 1 - delta or after `max_passes` passes in total.

Outputs (`paths(out)`, next to OUT = uap.npy)
---------------------------------------------
- OUT: v as float32 (3, S, S) in pixel units of [0, 1] images (add to a [0, 1] crop),
  ||v||_p <= xi / 255; multiply by 255 for 0-255 units.
- OUT stem + `.png`: the perturbation amplified to the full 0-255 range (v / max|v|).
- OUT stem + `.history.parquet`: one row per pass (HISTORY_SCHEMA).
- OUT stem + `.json`: settings, the model's sha256, the crops dataset, the final rate.
All are rewritten after every pass, so an interrupted fit resumes from its last pass:
running the same command again continues (v and history are read back) when the sidecar's
settings, model hash and crops match; `max_passes` counts all passes, resumed ones included.
"""

from __future__ import annotations

import io
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from facepriv.pipeline import crops as crops_mod
from facepriv.attacks.uap import (
    clean_predictions,
    fooled_by,
    merge_updates,
    pass_seed,
    perturbation_norm,
    project,
    uap_pass_shard,
    universal_perturbation,
)
from facepriv.attacks import uap_robust
from facepriv.errors import FacePrivError
from facepriv.io.perturbation import amplified_png, load_perturbation, load_sidecar, paths, write_atomic

HISTORY_SCHEMA = pa.schema([
    ("pass", pa.int64()), ("fooling_rate", pa.float64()), ("norm", pa.float64()), ("faces", pa.int64()),
    ("seconds", pa.float64()), ("workers", pa.int64()), ("fooling_rate_before", pa.float64()),
])
# settings that must match to resume a fit from its saved v
RESUME_KEYS = ("xi", "norm", "seed", "overshoot", "max_iter_df", "num_candidates", "batch_size", "method", "lr",
               "kappa", "robust_batch", "box_min", "box_max")
METHODS = ("deepfool", "robust")


@dataclass
class FitSettings:
    xi: float = 10.0  # bound on ||v||_p, 0-255 units
    norm: str = "linf"  # linf | l2
    delta: float = 0.2  # stop at a fooling rate of 1 - delta
    max_passes: int = 10  # passes in total (resumed ones included)
    overshoot: float = 0.02
    max_iter_df: int = 50
    num_candidates: int = 10
    batch_size: int = 1  # faces per DeepFool mini-batch (1 = Algorithm 1 exactly)
    seed: int = 0
    # method "robust" (facepriv/attacks/uap_robust.py): v fitted through the apply chain
    method: str = "deepfool"  # deepfool (Algorithm 1) | robust
    lr: float = 0.25  # robust: first pass's step as a fraction of xi (decays linearly over max_passes)
    kappa: float = 5.0  # robust: margin (logits) beyond which a fooled face stops pulling v
    robust_batch: int = 50  # robust: faces per signed-gradient step
    box_min: int = uap_robust.BOX_RANGE[0]  # robust: face-box sides (px) the chain resizes v to
    box_max: int = uap_robust.BOX_RANGE[1]

    @property
    def box_range(self) -> tuple[int, int]:
        return (self.box_min, self.box_max)

    def robust_kwargs(self, pass_index: int) -> dict[str, Any]:
        return dict(xi=self.xi, norm=self.norm, kappa=self.kappa, batch_size=self.robust_batch,
                    box_range=self.box_range, step=uap_robust.step_size(self.xi, self.lr, pass_index, self.max_passes))

    def pass_kwargs(self) -> dict[str, Any]:
        return dict(xi=self.xi, norm=self.norm, overshoot=self.overshoot, max_iter_df=self.max_iter_df,
                    num_candidates=self.num_candidates, batch_size=self.batch_size)


# -- outputs ------------------------------------------------------------------------------

def history_table(history: list[dict[str, Any]]) -> pa.Table:
    cols = {f.name: [h.get(f.name) for h in history] for f in HISTORY_SCHEMA}
    return pa.Table.from_pydict(cols, schema=HISTORY_SCHEMA)


def save_outputs(out: str, v: torch.Tensor | np.ndarray, history: list[dict[str, Any]], settings: FitSettings,
                 info: dict[str, Any]) -> None:
    """Write v (.npy), the amplified PNG, the history (Parquet) and the JSON sidecar."""
    p = paths(out)
    arr = np.ascontiguousarray(np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v, np.float32))
    buf = io.BytesIO()
    np.save(buf, arr)
    write_atomic(p["npy"], buf.getvalue())
    write_atomic(p["png"], amplified_png(arr))
    hb = io.BytesIO()
    pq.write_table(history_table(history), hb)
    write_atomic(p["history"], hb.getvalue())
    side = {
        "format": "facepriv-uap/1",
        "units": "v is float32 (3, S, S) in [0, 1] pixel units; ||v||_p <= xi / 255; xi in 0-255 units",
        "shape": list(arr.shape), "settings": asdict(settings),
        "passes": len(history), "fooling_rate": history[-1]["fooling_rate"] if history else None,
        "norm_255": perturbation_norm(torch.tensor(arr), settings.norm),
        "reached_goal": bool(history and history[-1]["fooling_rate"] >= 1 - settings.delta),
        **info,
    }
    write_atomic(p["json"], json.dumps(side, indent=2, default=str).encode())


def load_state(out: str, settings: FitSettings, info: dict[str, Any]) -> tuple[np.ndarray | None, list[dict]]:
    """(v0, history) to resume from, or (None, []) when OUT has no earlier fit.

    Refuses (FacePrivError) when OUT holds a fit with other settings, model or crops.
    """
    side = load_sidecar(out)
    if side is None:
        return None, []
    old = side.get("settings", {})
    new = asdict(settings)
    defaults = asdict(FitSettings())  # a sidecar from before a setting existed had its default
    diff = [k for k in RESUME_KEYS if old.get(k, defaults[k]) != new[k]]
    for k in ("model_sha256", "crops_faces", "crops_source", "size"):
        if side.get(k) != info.get(k):
            diff.append(k)
    if diff:
        raise FacePrivError(f"{out} holds a fit with different {', '.join(diff)}; pass --restart to start over, "
                            "or choose another --out")
    p = paths(out)
    with fsspec.open(p["history"], "rb") as f:
        history = pq.read_table(io.BytesIO(f.read())).to_pylist()
    return load_perturbation(p["npy"]), history


# -- Ray actors ---------------------------------------------------------------------------

class ShardFitter:
    """A worker: the model (loaded once) and one shard of the crops, clean predictions cached."""

    def __init__(self, model_path, crops_path: str, shard: int, num_shards: int, settings: dict,
                 device: str = "cpu", torch_threads: int | None = None):
        from facepriv.models.checkpoint import load_checkpoint

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.s = FitSettings(**settings)
        self.shard = shard
        self.device = torch.device(device)
        if isinstance(model_path, str):
            self.model = load_checkpoint(model_path, self.device).model
        else:  # an nn.Module shipped by Ray (tests, notebooks)
            self.model = model_path.to(self.device).eval()
        c = crops_mod.load(crops_path)
        idx = list(range(shard, len(c), num_shards))
        self.faces = c.floats(idx).to(self.device)
        self.clean = clean_predictions(self.model, self.faces)

    def size(self) -> int:
        return len(self.faces)

    def run_pass(self, v: np.ndarray, pass_index: int) -> tuple[np.ndarray, int, int]:
        """One pass of Algorithm 1 (or one robust epoch) over the shard against v: (delta,
        fooled under v, total)."""
        if self.s.method == "robust":
            res = uap_robust.robust_pass_shard(self.model, self.faces, torch.from_numpy(np.asarray(v)).to(self.device),
                                               clean_pred=self.clean, seed=pass_seed(self.s.seed, pass_index, self.shard),
                                               **self.s.robust_kwargs(pass_index))
            return res.delta.cpu().numpy(), res.fooled, res.total
        res = uap_pass_shard(self.model, self.faces, torch.from_numpy(np.asarray(v)).to(self.device),
                             clean_pred=self.clean, shuffle=True,
                             seed=pass_seed(self.s.seed, pass_index, self.shard), **self.s.pass_kwargs())
        return res.delta.cpu().numpy(), res.fooled, res.total

    def count(self, v: np.ndarray) -> tuple[int, int]:
        """(faces of the shard fooled by v, shard size)."""
        if len(self.faces) == 0:
            return 0, 0
        vt = torch.from_numpy(np.asarray(v)).to(self.device)
        if self.s.method == "robust":
            f = uap_robust.chain_fooled_by(self.model, self.faces, vt, self.clean, self.s.box_range)
        else:
            f = fooled_by(self.model, self.faces, vt, self.clean)
        return int(f.sum()), len(self.faces)


class Coordinator:
    """Holds v and the history; runs one pass at a time over the workers and merges."""

    def __init__(self, workers: list, settings: dict, v0: np.ndarray | None, history: list[dict], size: int):
        self.workers = workers
        self.s = FitSettings(**settings)
        v = torch.zeros(3, size, size) if v0 is None else torch.from_numpy(np.asarray(v0, np.float32))
        self.v = project(v, self.s.xi, self.s.norm)
        self.history = list(history)

    def fooling(self) -> tuple[int, int]:
        import ray

        v = ray.put(self.v.numpy())
        counts = ray.get([w.count.remote(v) for w in self.workers])
        return sum(c[0] for c in counts), sum(c[1] for c in counts)

    def next_pass(self) -> dict[str, Any]:
        import ray

        t0 = time.perf_counter()
        p = len(self.history) + 1
        vref = ray.put(self.v.numpy())
        results = ray.get([w.run_pass.remote(vref, p) for w in self.workers])
        before = sum(r[1] for r in results)
        total = sum(r[2] for r in results)
        self.v = merge_updates(self.v, [torch.from_numpy(r[0]) for r in results], self.s.xi, self.s.norm)
        fooled, total = self.fooling()
        rec = {"pass": p, "fooling_rate": fooled / total if total else 0.0,
               "norm": perturbation_norm(self.v, self.s.norm), "faces": total,
               "seconds": time.perf_counter() - t0, "workers": len(self.workers),
               "fooling_rate_before": before / total if total else 0.0}
        self.history.append(rec)
        return rec

    def state(self) -> tuple[np.ndarray, list[dict]]:
        return self.v.numpy(), self.history


# -- drivers ------------------------------------------------------------------------------

def _line(rec: dict[str, Any], settings: FitSettings) -> str:
    return (f"pass {rec['pass']:3d}: fooling rate {rec['fooling_rate']:.3f}  ||v|| {rec['norm']:.2f}/{settings.xi:g}"
            f"  {rec['faces']} faces  {rec['seconds']:.1f}s")


def fit_local(faces: torch.Tensor, model, settings: FitSettings, out: str | None = None,
              info: dict | None = None, v0: np.ndarray | None = None, history: list | None = None,
              log: Callable[[str], None] = print) -> tuple[np.ndarray, list[dict]]:
    """Single process (no Ray): `universal_perturbation` with a checkpoint after every pass."""
    history = list(history or [])
    remaining = settings.max_passes - len(history)
    if remaining <= 0 or (history and history[-1]["fooling_rate"] >= 1 - settings.delta):
        log(f"nothing to do: {len(history)} pass(es) done, last fooling rate "
            f"{history[-1]['fooling_rate']:.3f}" if history else "nothing to do")
        return (v0 if v0 is not None else np.zeros(faces.shape[1:], np.float32)), history

    def cb(v, rec):
        rec["workers"] = 0
        rec["fooling_rate_before"] = None
        history.append(rec)
        log(_line(rec, settings))
        if out:
            save_outputs(out, v, history, settings, info or {})

    if settings.method == "robust":
        v, _ = uap_robust.robust_universal_perturbation(
            model, faces, xi=settings.xi, norm=settings.norm, delta=settings.delta, max_passes=remaining,
            lr=settings.lr, kappa=settings.kappa, batch_size=settings.robust_batch, seed=settings.seed,
            box_range=settings.box_range, callback=cb, v0=None if v0 is None else torch.from_numpy(v0),
            start_pass=len(history), total_passes=settings.max_passes)
        return v.cpu().numpy(), history
    v, _ = universal_perturbation(model, faces, xi=settings.xi, norm=settings.norm, delta=settings.delta,
                                  max_passes=remaining, overshoot=settings.overshoot,
                                  max_iter_df=settings.max_iter_df, num_candidates=settings.num_candidates,
                                  seed=settings.seed, batch_size=settings.batch_size, callback=cb,
                                  v0=None if v0 is None else torch.from_numpy(v0), start_pass=len(history))
    return v.cpu().numpy(), history


def fit_distributed(model_path, crops_path: str, size: int, settings: FitSettings, workers: int,
                    out: str | None = None, info: dict | None = None, v0: np.ndarray | None = None,
                    history: list | None = None, device: str = "cpu", torch_threads: int | None = None,
                    gpus_per_worker: float = 0.0,
                    log: Callable[[str], None] = print) -> tuple[np.ndarray, list[dict]]:
    """The coordinator/worker loop on the Ray instance already initialised (see module doc).

    model_path: a checkpoint path, or an nn.Module (shipped to the workers by Ray)."""
    import ray

    history = list(history or [])
    sd = asdict(settings)
    w_cls = ray.remote(num_cpus=0 if gpus_per_worker else 1, num_gpus=gpus_per_worker)(ShardFitter)
    ws = [w_cls.remote(model_path, crops_path, i, workers, sd, device, torch_threads) for i in range(workers)]
    coord = ray.remote(num_cpus=0)(Coordinator).remote(ws, sd, v0, history, size)
    try:
        sizes = ray.get([w.size.remote() for w in ws])
        log(f"{workers} worker(s) hold shards of {', '.join(map(str, sizes))} faces")
        if v0 is not None:
            fooled, total = ray.get(coord.fooling.remote())
            log(f"resuming after pass {len(history)}: fooling rate of the saved v {fooled / max(total, 1):.3f}")
            if total and fooled / total >= 1 - settings.delta:
                return np.array(v0, np.float32), history
        while len(history) < settings.max_passes:
            rec = ray.get(coord.next_pass.remote())
            v, history = ray.get(coord.state.remote())
            log(_line(rec, settings))
            if out:
                save_outputs(out, v, history, settings, info or {})
            if rec["fooling_rate"] >= 1 - settings.delta:
                break
        v, history = ray.get(coord.state.remote())
        return np.array(v, np.float32), list(history)
    finally:
        for a in [coord, *ws]:
            ray.kill(a)


def fit(data_dir: str, model_path: str, out: str, settings: FitSettings, workers: int | None = None,
        crops_path: str | None = None, restart: bool = False, address: str | None = None,
        device: str = "cpu", gpus_per_worker: float | None = None, s3_endpoint: str | None = None,
        retries: int = 5, progress: bool = True, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """`facepriv uap fit`: crops once, then the loop (workers = 0: in process, no Ray)."""
    from facepriv.models.checkpoint import load_checkpoint

    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    if settings.norm not in ("linf", "l2"):
        raise FacePrivError(f"--norm must be linf or l2, got {settings.norm!r}")
    if not 0 <= settings.delta < 1:
        raise FacePrivError("--delta must be in [0, 1)")
    if settings.method not in METHODS:
        raise FacePrivError(f"--method must be one of {', '.join(METHODS)}, got {settings.method!r}")
    if not 8 <= settings.box_min <= settings.box_max:
        raise FacePrivError("--box-range needs 8 <= MIN <= MAX (face-box sides in px)")
    loaded = load_checkpoint(model_path, "cpu")
    if getattr(loaded.model, "kind", "classifier") != "classifier":
        raise FacePrivError("`uap fit` needs a classifier checkpoint (from `facepriv train`)")
    size = int(loaded.model.input_size)
    crops_path = crops_path or paths(out)["crops"]
    c = crops_mod.load_or_extract(data_dir, crops_path, size, 1.0, log=log, s3_endpoint=s3_endpoint,
                                  retries=retries, progress=progress)
    info = {"model": model_path, "model_sha256": loaded.sha256, "crops": crops_path,
            "crops_source": c.meta.get("source"), "crops_faces": len(c), "size": size, "data_dir": data_dir}
    v0, history = (None, []) if restart else load_state(out, settings, info)
    if history:
        log(f"resuming {out}: {len(history)} pass(es) done, fooling rate {history[-1]['fooling_rate']:.3f}")
    t0 = time.perf_counter()
    if workers == 0:
        info["mode"] = "single process"
        v, history = fit_local(c.floats(), loaded.model, settings, out, info, v0, history, log)
    else:
        from facepriv.distributed.runner import cluster_plan, init_ray

        init_ray(address)
        workers, gpw, threads = cluster_plan(workers, gpus_per_worker)
        info["mode"] = f"ray, {workers} worker(s)"
        dev = device if device != "auto" else ("cuda" if gpw else "cpu")
        v, history = fit_distributed(model_path, crops_path, size, settings, workers, out, info, v0, history,
                                     dev, threads, gpw, log)
    seconds = time.perf_counter() - t0
    save_outputs(out, v, history, settings, {**info, "seconds": seconds})
    rate = history[-1]["fooling_rate"] if history else None
    log(f"saved {out} (+ .png, .history.parquet, .json): {len(history)} pass(es), fooling rate "
        f"{rate if rate is None else f'{rate:.3f}'} on {len(c)} training faces, {seconds:.0f}s")
    return {"out": out, "passes": len(history), "fooling_rate": rate, "faces": len(c), "seconds": seconds,
            "history": history}
