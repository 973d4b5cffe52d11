"""Universal adversarial perturbation (Moosavi-Dezfooli et al., CVPR 2017, Algorithm 1),
pure torch, single process, with the pieces a distributed loop needs.

One image-agnostic perturbation v, the shape of a face crop (3,S,S), in [0,1] pixel units
(xi, the bound on ||v||_p, is given in 0-255 units like every eps in facepriv). A face x is
*fooled* when the prediction on clip(x + v) differs from the prediction on x (the clean
prediction, not the true label), as in the paper.

Algorithm 1: v = 0; until the fooling rate reaches 1 - delta (or max_passes): for each face
x (shuffled each pass) not fooled by v, DeepFool on clip(x + v) gives the minimal dv that
changes its label, and v <- P_{p,xi}(v + dv). Only converged DeepFool results update v, as
in the authors' code.

Mini-batches and the merge rule
-------------------------------
For speed the faces are visited in mini-batches of `batch_size`: every face of a mini-batch
runs DeepFool against the same v (faces v already fools get dv = 0), then

    merge_updates(v, dvs, xi, norm, weights) = P_{p,xi}(v + sum_i weights_i * dvs_i)

with weights 1 by default (a sum, not a mean). With batch_size=1 this is exactly
Algorithm 1. The same rule merges workers: a worker (`uap_pass_shard`) walks its shard in
mini-batches against a local copy of v and returns delta_w = v_w - v; the coordinator does
v <- merge_updates(v, [delta_1, ..., delta_W], xi, norm). Properties (tested):
- the result always satisfies ||v||_p <= xi (the projection is the last step);
- one worker: v + delta_1 is already in the ball, so the merge returns the worker's own v,
  i.e. the distributed loop with one worker is the single-process loop, step for step;
- order-independent (workers may report in any order), and merging [a, b] equals merging
  [a + b]: the deltas are applied as if one after the other, projecting once at the end;
- a worker that changed nothing (delta = 0) does not pull v back: it does not vote, unlike a
  mean, which would shrink the others' changes by the number of workers.
A mean is available as weights = [1/W] * W.

Fooling counts: `uap_pass_shard` reports (fooled, total) of its shard under the v it was
*given*, so the coordinator's sum over workers is the exact fooling rate of the v it sent
out; the rate of the merged v comes from the next pass (or from `fooling_rate`).
`universal_perturbation` records the rate of v after each pass, as in the paper.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

from facepriv.attacks.base import Model, subset
from facepriv.attacks.deepfool import NORMS, deepfool


def _check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def perturbation_norm(v: torch.Tensor, norm: str = "linf") -> float:
    """||v||_p in 0-255 units (v in [0,1] pixel units)."""
    _check_norm(norm)
    f = v.detach().flatten().float()
    n = f.abs().max() if norm == "linf" else f.norm()
    return float(n) * 255.0 if f.numel() else 0.0


def project(v: torch.Tensor, xi: float, norm: str = "linf") -> torch.Tensor:
    """P_{p,xi}: the nearest point to v with ||.||_p <= xi (xi in 0-255 units).

    L-inf clamps every pixel to [-xi, xi]/255; L2 rescales v onto the ball when outside it.
    """
    _check_norm(norm)
    r = xi / 255.0
    if norm == "linf":
        return v.clamp(-r, r)
    n = v.norm()
    return v * (r / n) if n > r else v.clone()


def merge_updates(v: torch.Tensor, dvs: torch.Tensor | Sequence[torch.Tensor], xi: float,
                  norm: str = "linf", weights: Sequence[float] | torch.Tensor | None = None) -> torch.Tensor:
    """P_{p,xi}(v + sum_i weights_i * dvs_i); weights default to 1 (see the module docstring).

    dvs: a (n, *v.shape) tensor or a sequence of tensors shaped like v (n may be 0).
    """
    if not isinstance(dvs, torch.Tensor):
        dvs = torch.stack([torch.as_tensor(d, dtype=v.dtype, device=v.device) for d in dvs]) if len(dvs) else v.new_zeros((0,) + tuple(v.shape))
    dvs = dvs.to(device=v.device, dtype=v.dtype)
    if dvs.shape[1:] != v.shape:
        raise ValueError(f"updates of shape {tuple(dvs.shape[1:])} do not match v {tuple(v.shape)}")
    if weights is None:
        total = dvs.sum(0)
    else:
        w = torch.as_tensor(weights, dtype=v.dtype, device=v.device)
        if w.shape != (len(dvs),):
            raise ValueError(f"{len(dvs)} updates but weights of shape {tuple(w.shape)}")
        total = torch.tensordot(w, dvs, dims=1)
    return project(v + total, xi, norm)


def _batches(n: int, size: int):
    size = max(1, int(size))
    for s in range(0, n, size):
        yield s, min(n, s + size)


@torch.no_grad()
def clean_predictions(model: Model, faces: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """argmax of the model on each clean face, in batches."""
    out = [subset(model, range(s, e))(faces[s:e]).argmax(1) for s, e in _batches(len(faces), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=faces.device)


@torch.no_grad()
def fooled_by(model: Model, faces: torch.Tensor, v: torch.Tensor, clean_pred: torch.Tensor,
              batch_size: int = 64) -> torch.Tensor:
    """(N,) bool: prediction on clip(x + v) differs from the clean prediction."""
    v = v.to(faces.device, faces.dtype)
    out = []
    for s, e in _batches(len(faces), batch_size):
        pred = subset(model, range(s, e))((faces[s:e] + v).clamp(0, 1)).argmax(1)
        out.append(pred != clean_pred[s:e].to(pred.device))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool, device=faces.device)


def fooling_rate(model: Model, faces: torch.Tensor, v: torch.Tensor, clean_pred: torch.Tensor | None = None,
                 batch_size: int = 64) -> float:
    """Fraction of faces whose prediction v changes (0.0 for no faces)."""
    if len(faces) == 0:
        return 0.0
    if clean_pred is None:
        clean_pred = clean_predictions(model, faces, batch_size)
    return float(fooled_by(model, faces, v, clean_pred, batch_size).float().mean())


def pass_seed(seed: int, pass_index: int, shard: int = 0) -> int:
    """The shuffle seed of one pass (and shard): distinct, reproducible, resumable."""
    return (int(seed) * 1_000_003 + int(pass_index) * 101 + int(shard)) % (2**63 - 1)


class ShardResult(NamedTuple):
    """delta: change to v from this shard (v_local - v); fooled/total: faces of the shard
    fooled by the v that was passed in, and the shard's size."""

    delta: torch.Tensor
    fooled: int
    total: int


def shard_inputs(model: Model, faces: torch.Tensor, v: torch.Tensor, norm: str,
                 clean_pred: torch.Tensor | None, eval_batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """A shard pass's checked inputs: v on the faces' device and dtype (shaped like a face),
    and the clean predictions (computed when None)."""
    _check_norm(norm)
    v = torch.as_tensor(v).to(faces.device, faces.dtype)
    if v.shape != faces.shape[1:]:
        raise ValueError(f"v of shape {tuple(v.shape)} does not match faces {tuple(faces.shape[1:])}")
    if clean_pred is None:
        clean_pred = clean_predictions(model, faces, eval_batch_size)
    return v, clean_pred.to(faces.device)


def uap_pass_shard(model: Model, faces: torch.Tensor, v: torch.Tensor, xi: float = 10.0, norm: str = "linf",
                   clean_pred: torch.Tensor | None = None, overshoot: float = 0.02, max_iter_df: int = 50,
                   num_candidates: int = 10, batch_size: int = 1, shuffle: bool = True,
                   seed: int | None = None, eval_batch_size: int = 64) -> ShardResult:
    """One pass of Algorithm 1 over a shard against a local copy of v (the worker's unit).

    Faces are visited in (shuffled) mini-batches of batch_size; in each, DeepFool runs on
    clip(x + v_local) for the faces v_local does not fool, and
    v_local <- merge_updates(v_local, converged dvs). Returns ShardResult(v_local - v,
    fooled under the given v, shard size). clean_pred: predictions on the clean faces
    (computed when None; pass them in to avoid recomputing every pass).
    """
    v, clean_pred = shard_inputs(model, faces, v, norm, clean_pred, eval_batch_size)
    n = len(faces)
    fooled = int(fooled_by(model, faces, v, clean_pred, eval_batch_size).sum()) if n else 0
    if shuffle and n:
        g = torch.Generator().manual_seed(int(seed) if seed is not None else int(torch.seed() % (2**63 - 1)))
        order = torch.randperm(n, generator=g).to(faces.device)
    else:
        order = torch.arange(n, device=faces.device)
    v_local = v.clone()
    for s, e in _batches(n, batch_size):
        idx = order[s:e]
        xb = (faces[idx] + v_local).clamp(0, 1)
        res = deepfool(subset(model, idx), xb, num_candidates=num_candidates, overshoot=overshoot,
                       max_iter=max_iter_df, norm=norm, y=clean_pred[idx])
        upd = res.converged & (res.iterations > 0)
        if bool(upd.any()):
            v_local = merge_updates(v_local, res.r[upd], xi, norm)
    return ShardResult((v_local - v).detach(), fooled, n)


def universal_perturbation(model: Model, faces: torch.Tensor, xi: float = 10.0, norm: str = "linf",
                           delta: float = 0.2, max_passes: int = 10, overshoot: float = 0.02,
                           max_iter_df: int = 50, num_candidates: int = 10, seed: int = 0,
                           shuffle: bool = True, batch_size: int = 1,
                           callback: Callable[[torch.Tensor, dict[str, Any]], Any] | None = None,
                           v0: torch.Tensor | None = None, start_pass: int = 0,
                           clean_pred: torch.Tensor | None = None,
                           eval_batch_size: int = 64) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Algorithm 1 in one process. faces: (N,3,S,S) in [0,1]; xi in 0-255 units.

    Returns (v, history): v (3,S,S) with ||v||_p <= xi/255; history, one dict per pass:
    {"pass", "fooling_rate" (of v after the pass), "norm" (||v||_p, 0-255 units), "faces",
    "seconds"}. Stops when the fooling rate reaches 1 - delta or after max_passes passes.

    Resuming: pass v0 (the saved v) and start_pass (passes already done, e.g. len(history));
    the new passes are numbered start_pass + 1, ... and shuffled with
    pass_seed(seed, pass number), so 2 passes then 1 resumed pass equal 3 passes in one go.
    When v0 already reaches the goal nothing is run and the history is empty.
    callback(v, record) runs after every pass (e.g. to checkpoint); a truthy return stops.
    """
    _check_norm(norm)
    faces = faces.detach()
    n = len(faces)
    if clean_pred is None:
        clean_pred = clean_predictions(model, faces, eval_batch_size)
    clean_pred = clean_pred.to(faces.device)
    if v0 is None:
        v = faces.new_zeros(faces.shape[1:])
    else:
        v = project(torch.as_tensor(v0).to(faces.device, faces.dtype).clone(), xi, norm)
        if v.shape != faces.shape[1:]:
            raise ValueError(f"v0 of shape {tuple(v.shape)} does not match faces {tuple(faces.shape[1:])}")
        if n and fooling_rate(model, faces, v, clean_pred, eval_batch_size) >= 1 - delta:
            return v, []
    def one_pass(v, p):
        return uap_pass_shard(model, faces, v, xi=xi, norm=norm, clean_pred=clean_pred, overshoot=overshoot,
                              max_iter_df=max_iter_df, num_candidates=num_candidates, batch_size=batch_size,
                              shuffle=shuffle, seed=pass_seed(seed, p), eval_batch_size=eval_batch_size)

    return run_passes(one_pass, lambda v: fooling_rate(model, faces, v, clean_pred, eval_batch_size), v, xi, norm,
                      n, delta, start_pass, max_passes, callback)


def run_passes(one_pass: Callable[[torch.Tensor, int], ShardResult], rate: Callable[[torch.Tensor], float],
               v: torch.Tensor, xi: float, norm: str, n: int, delta: float, start_pass: int, max_passes: int,
               callback=None) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """The single-process loop: pass p runs one_pass(v, p) over all faces, v <- P(v + delta),
    the pass's record holds rate(v); stops at 1 - delta, after max_passes, or when callback(v,
    record) returns truthy."""
    history: list[dict[str, Any]] = []
    for p in range(start_pass + 1, start_pass + max_passes + 1):
        t0 = time.perf_counter()
        res = one_pass(v, p)
        v = merge_updates(v, res.delta[None], xi, norm)
        fr = rate(v) if n else 0.0
        rec = {"pass": p, "fooling_rate": fr, "norm": perturbation_norm(v, norm), "faces": n,
               "seconds": time.perf_counter() - t0}
        history.append(rec)
        stop = callback(v, rec) if callback is not None else None
        if fr >= 1 - delta or stop:
            break
    return v, history
