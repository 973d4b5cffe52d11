"""A universal perturbation fitted through the way it is applied (`--method robust`), pure torch.

Algorithm 1 (`facepriv.attacks.uap`, DeepFool) fits v on the model's input grid: the minimal
DeepFool steps it sums are pixel-grid patterns, which resizing v to a face box, writing the
photo and re-cropping the re-detected face (what `uap apply` and the judge do) mostly wash
out. This variant optimises v *through* that chain instead (expectation over transformation,
with sign-gradient steps on mini-batches; cf. SGD universal perturbations, Shafahi et al. 2020):

    chain(x, v): the face and v resized to a face-box side b (v added at the box's own
    resolution, as `strategies.uap.add_universal` does), clipped to [0, 1] and quantised to uint8
    (straight-through), then re-cropped with a small shift and scale (a re-detected box) and
    resized back to the model's input size S.

b is drawn per mini-batch from `box_range`, shift (a fraction of the box) and scale per face. Loss:
the clean class's logit margin over the best other class, clamped at -kappa, so faces
already fooled by kappa stop pulling v. Step: v <- P_{p,xi}(v - lr_p * sign(grad)) (L-inf; L2
takes normalised gradient steps), lr_p = xi * lr decaying linearly over the passes.

Fooling counts (`chain_fooled_by`) use the chain at fixed settings (b = the middle of
`box_range`, no shift or scale; quantised): deterministic per face, so single-process and
sharded counts agree. A worker runs `robust_pass_shard` (one epoch over its shard against a
local v) and returns delta = v_local - v; workers' deltas are summed and projected
(`merge_updates`), so W workers, each stepping through 1/W of the faces, move v as many steps
per pass as one process stepping through all of them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from facepriv.attacks.base import Model, margin
from facepriv.attacks.uap import ShardResult, _batches, _check_norm, clean_predictions, pass_seed, project, run_passes, shard_inputs

BOX_RANGE = (96, 144)  # face-box sides (px) v is resized to when fitted; LFW-like photos ~100-130
SHIFT = 0.025  # re-detected box shift, fraction of the box side (each axis, uniform +-; ~3 px at 120)
SCALE = 0.04  # re-detected box scale change (uniform +-)


def _resize(t: torch.Tensor, n: int) -> torch.Tensor:
    return F.interpolate(t, size=(n, n), mode="bilinear", align_corners=False, antialias=n < t.shape[-1])


def chain(faces: torch.Tensor, v: torch.Tensor, box: int, shift: torch.Tensor | None = None,
          scale: torch.Tensor | None = None) -> torch.Tensor:
    """What the model sees of faces (N,3,S,S) with v (3,S,S) applied at a face box of `box` px,
    written as uint8 and re-cropped (shift (N,2) as fractions of the box side, scale (N,)). Differentiable
    in v (and faces); quantisation passes gradients straight through."""
    n, _, s, _ = faces.shape
    z = (_resize(faces, box) + _resize(v[None], box)).clamp(0, 1)
    z = z + ((z * 255).round() / 255 - z).detach()
    if shift is None and scale is None:
        return _resize(z, s)
    th = faces.new_zeros((n, 2, 3))
    sc = scale if scale is not None else faces.new_ones(n)
    th[:, 0, 0] = sc
    th[:, 1, 1] = sc
    if shift is not None:
        th[:, :, 2] = shift * 2.0  # affine_grid's coordinates span the crop as [-1, 1]
    grid = F.affine_grid(th, [n, 3, s, s], align_corners=False)
    return F.grid_sample(z, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_chain(faces: torch.Tensor, v: torch.Tensor, gen: torch.Generator,
                 box_range: tuple[int, int] = BOX_RANGE) -> torch.Tensor:
    box = int(torch.randint(int(box_range[0]), int(box_range[1]) + 1, (1,), generator=gen))
    n = len(faces)
    shift = ((torch.rand((n, 2), generator=gen) * 2 - 1) * SHIFT).to(faces)
    scale = (1 + (torch.rand(n, generator=gen) * 2 - 1) * SCALE).to(faces)
    return chain(faces, v, box, shift, scale)


@torch.no_grad()
def chain_fooled_by(model: Model, faces: torch.Tensor, v: torch.Tensor, clean_pred: torch.Tensor,
                    box_range: tuple[int, int] = BOX_RANGE, batch_size: int = 64) -> torch.Tensor:
    """Which faces v fools through the chain at fixed settings (box = middle of box_range)."""
    box = (int(box_range[0]) + int(box_range[1])) // 2
    v = v.to(faces.device, faces.dtype)
    out = [model(chain(faces[s:e], v, box)).argmax(1) != clean_pred[s:e].to(faces.device)
           for s, e in _batches(len(faces), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool, device=faces.device)


def step_size(xi: float, lr: float, pass_index: int, passes: int) -> float:
    """The pass's step in [0,1] pixel units: xi * lr decaying linearly to xi * 0.005 at the last pass."""
    frac = min(max(pass_index - 1, 0) / max(passes, 1), 1.0)
    return xi / 255.0 * (lr * (1 - frac) + 0.005)


def robust_pass_shard(model: Model, faces: torch.Tensor, v: torch.Tensor, xi: float = 10.0, norm: str = "linf",
                      clean_pred: torch.Tensor | None = None, step: float = 0.01, kappa: float = 5.0,
                      batch_size: int = 50, seed: int = 0, box_range: tuple[int, int] = BOX_RANGE,
                      eval_batch_size: int = 64) -> ShardResult:
    """One epoch over a shard (shuffled with `seed`) against a local copy of v: per mini-batch,
    a random chain, the clamped margin loss summed over the batch, one signed step of `step`
    (pixel units), projection. Returns ShardResult(v_local - v, fooled under the given v by
    `chain_fooled_by`, shard size)."""
    v, clean_pred = shard_inputs(model, faces, v, norm, clean_pred, eval_batch_size)
    n = len(faces)
    fooled = int(chain_fooled_by(model, faces, v, clean_pred, box_range, eval_batch_size).sum()) if n else 0
    gen = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(n, generator=gen).to(faces.device) if n else torch.arange(0, device=faces.device)
    v_local = v.clone()
    for s, e in _batches(n, batch_size):
        idx = order[s:e]
        vv = v_local.clone().requires_grad_(True)
        logits = model(random_chain(faces[idx], vv, gen, box_range))
        loss = margin(logits, clean_pred[idx]).clamp(min=-kappa).sum()
        (g,) = torch.autograd.grad(loss, vv)
        with torch.no_grad():
            d = g.sign() if norm == "linf" else g / g.norm().clamp_min(1e-12) * (g.numel() ** 0.5)
            v_local = project(v_local - step * d, xi, norm)
    return ShardResult((v_local - v).detach(), fooled, n)


def robust_universal_perturbation(model: Model, faces: torch.Tensor, xi: float = 10.0, norm: str = "linf",
                                  delta: float = 0.2, max_passes: int = 40, lr: float = 0.25, kappa: float = 5.0,
                                  batch_size: int = 50, seed: int = 0, box_range: tuple[int, int] = BOX_RANGE,
                                  callback=None, v0: torch.Tensor | None = None, start_pass: int = 0,
                                  total_passes: int | None = None, clean_pred: torch.Tensor | None = None,
                                  eval_batch_size: int = 64) -> tuple[torch.Tensor, list[dict]]:
    """The robust fit in one process, shaped like `uap.universal_perturbation` (same history
    records, callback, resuming with v0/start_pass; `total_passes` (default start_pass +
    max_passes) sets the step-size schedule). The recorded fooling rate is `chain_fooled_by`'s."""
    _check_norm(norm)
    faces = faces.detach()
    n = len(faces)
    total = total_passes or (start_pass + max_passes)
    if clean_pred is None:
        clean_pred = clean_predictions(model, faces, eval_batch_size)
    v = faces.new_zeros(faces.shape[1:]) if v0 is None else project(torch.as_tensor(v0).to(faces), xi, norm)

    def one_pass(v, p):
        return robust_pass_shard(model, faces, v, xi, norm, clean_pred, step_size(xi, lr, p, total), kappa,
                                 batch_size, pass_seed(seed, p), box_range, eval_batch_size)

    def rate(v):
        return float(chain_fooled_by(model, faces, v, clean_pred, box_range, eval_batch_size).float().mean())

    return run_passes(one_pass, rate, v, xi, norm, n, delta, start_pass, max_passes, callback)
