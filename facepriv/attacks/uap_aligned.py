"""A label-free universal perturbation in the aligned face frame (pure torch, no I/O).

v (3,S,S) lives on a face template (`facepriv.core.align`, e.g. arcface112 at 112 x 112): at
apply time it is drawn into each face through the inverse of that face's 5-point similarity
(`facepriv.core.align.unwarp`), added to the original pixels and clipped; a recogniser that
aligns the written face sees approximately aligned(face) + v. The fit therefore works on
precomputed aligned crops a_i only (`facepriv.pipeline.crops.extract_aligned`), through a
model of what the judge will see (`chain`):

    x_i = J_i( write(a_i + v) )

with write = uint8 rounding (and, given a `write` callable, the JPEG round trip of the output
format), straight-through gradients, and J_i a small random similarity about the frame's
centre per face (re-detection: the written file's landmarks are not the clean ones).

Loss (minimised, per face, per surrogate; `facepriv.attacks.embed_pgd.embedding_loss`):
``cos(e(x_i), e(a_i))`` (away from the face's own clean embedding) ``- cos(e(x_i), d)`` with a
fixed decoy direction d when given (one decoy identity for every face). No labels.

Optimisation (the coordinator's step, `step`): a signed-gradient step on the sum of the
per-face gradients over a mini-batch, then the projection onto the L-inf ball of radius xi
(0-255 units). Gradient sums add across shards, so W workers holding parts of a batch give
the single-process step exactly (up to float summation order), `shard_gradient` per shard.

Surrogates with another input size or template than the fit frame see the chain's output
resampled onto theirs (`FrameAdapter`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from facepriv.attacks.embed_pgd import embedding_loss, smooth
from facepriv.core.align import similarity_transform, template

Writer = Callable[[torch.Tensor], torch.Tensor]  # uint8-valued [0,1] crops -> what the file holds


def jitter_matrices(n: int, size: int, rngs: Sequence[np.random.Generator], p: float = 1.0, scale: float = 0.04,
                    degrees: float = 4.0, shift: float = 0.03) -> np.ndarray:
    """(n,2,3) similarities in frame pixels about the centre (scale 1 +- `scale`, rotation within
    +-`degrees`, shift within +-`shift` of the size); with probability 1 - p the identity. One
    generator per face, so a face's draw does not depend on its batch."""
    out = np.zeros((n, 2, 3))
    c = (size - 1) / 2.0
    for i, rng in enumerate(rngs):
        if rng.random() >= p:
            out[i, :, :2] = np.eye(2)
            continue
        s = 1.0 + rng.uniform(-scale, scale)
        t = np.deg2rad(rng.uniform(-degrees, degrees))
        d = rng.uniform(-shift, shift, size=2) * size
        r = s * np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
        out[i, :, :2] = r
        out[i, :, 2] = c - r @ np.array([c, c]) + d
    return out


def warp_batch(x: torch.Tensor, mats: np.ndarray, size: int | None = None) -> torch.Tensor:
    """x (B,C,S,S) resampled through per-face matrices (B,2,3) (input px -> output px), output
    (B,C,size,size) (default S), zeros outside; bilinear, differentiable in x."""
    b, _, s, _ = x.shape
    size = int(size or s)
    a = np.concatenate([np.asarray(mats, np.float64), np.tile([[[0.0, 0.0, 1.0]]], (b, 1, 1))], 1)
    inv = np.linalg.inv(a)  # output px -> input px
    n_out = np.array([[size / 2, 0, (size - 1) / 2], [0, size / 2, (size - 1) / 2], [0, 0, 1.0]])
    n_in = np.array([[2 / s, 0, 1 / s - 1], [0, 2 / s, 1 / s - 1], [0, 0, 1.0]])
    theta = torch.as_tensor((n_in @ inv @ n_out)[:, :2], dtype=x.dtype, device=x.device)
    grid = F.affine_grid(theta, [b, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def quantise(x: torch.Tensor) -> torch.Tensor:
    """uint8 rounding with straight-through gradients."""
    return x + ((x * 255).round() / 255 - x).detach()


def chain(a: torch.Tensor, v: torch.Tensor, mats: np.ndarray | None = None, write: Writer | None = None) -> torch.Tensor:
    """What a recogniser aligning the written file sees: J(write(clip(a + v))) (module doc).
    a (B,3,S,S) aligned clean crops, v (3,S,S); `write` (applied to the uint8-rounded crops,
    straight-through) models the file format, `mats` (B,2,3) the re-detection jitter."""
    x = quantise((a + v[None]).clamp(0, 1))
    if write is not None:
        x = x + (write(x.detach()) - x).detach()
    return x if mats is None else warp_batch(x, mats)


class FrameAdapter(torch.nn.Module):
    """A surrogate over fit-frame crops: resamples (B,3,S,S) on (`template_name`, S) onto the
    surrogate's own frame (net.input_size, net.crop) when they differ, then runs it."""

    def __init__(self, net, size: int, template_name: str | None = None):
        super().__init__()
        self.net = net
        n = int(getattr(net, "input_size", size))
        t_net = getattr(net, "crop", None)
        self.size = n
        src, dst = template(template_name, size), template(t_net, n)
        self.m = None if (n == size and np.allclose(src, dst)) else similarity_transform(src, dst)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.m is not None:
            x = warp_batch(x, np.repeat(self.m[None], len(x), 0), self.size)
        return self.net(x)


@torch.no_grad()
def unit_embeddings(model, x: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """L2-normalised embeddings (N,D) of crops x (N,3,S,S), in batches."""
    return torch.cat([F.normalize(model(x[i : i + batch]).flatten(1), dim=1) for i in range(0, len(x), batch)]) \
        if len(x) else torch.zeros(0, 1)


def shard_gradient(models: Sequence, a: torch.Tensor, clean: Sequence[torch.Tensor], v: torch.Tensor,
                   decoys: Sequence[torch.Tensor | None] | None = None, mats: np.ndarray | None = None,
                   write: Writer | None = None, quality: tuple[float, float] | None = None
                   ) -> tuple[torch.Tensor, float, int]:
    """(sum over the faces of d loss / d v (3,S,S), summed loss, faces) for crops a with
    `clean[k]` (B,D_k) the unit clean embeddings under models[k] and `decoys[k]` (D_k,) or None.
    The loss is the mean over the models (module doc). `quality` = (target, weight): plus, per
    face, weight x max(0, target - S) / 100, S the differentiable SSIMULACRA 2 (float32) of the
    written crop against the clean one (before the re-detection jitter) - v is pushed toward
    changes that cost the faces little quality, as the per-photo attack's quality term does."""
    if len(a) == 0:
        return torch.zeros_like(v), 0.0, 0
    vv = v.detach().clone().requires_grad_(True)
    written = chain(a, vv, None, write)
    x = written if mats is None else warp_batch(written, mats)
    dec = list(decoys) if decoys is not None else [None] * len(models)
    total = sum(embedding_loss(m(x), c, None if d is None else d[None].expand_as(c)).sum()
                for m, c, d in zip(models, clean, dec)) / len(models)
    if quality is not None:
        from facepriv.core.perceptual import Reference

        target, weight = quality
        scores = Reference(a.detach(), torch.float32).score(written)
        total = total + weight * (target - scores).clamp_min(0).sum() / 100.0
    (g,) = torch.autograd.grad(total, vv)
    return g.detach(), float(total.detach()), len(a)


def project(v: torch.Tensor, xi: float, rms: float | None = None) -> torch.Tensor:
    """v clipped to the L-inf ball of radius xi (0-255 units), then, with `rms`, scaled into the
    L2 ball whose RMS over the frame is rms (0-255 units)."""
    v = v.clamp(-xi / 255.0, xi / 255.0)
    if rms is not None:
        r = float(v.pow(2).mean().sqrt()) * 255.0
        if r > rms:
            v = v * (rms / r)
    return v


def step(v: torch.Tensor, grad_sum: torch.Tensor, lr: float, xi: float, ti_sigma: float = 0.0,
         rms: float | None = None) -> torch.Tensor:
    """One update (descends the loss), projected: v - lr * xi/255 * sign(smooth(grad_sum)); with
    `rms`, an L2 step of lr * rms/255 RMS along the normalised gradient instead."""
    g = smooth(grad_sum[None], ti_sigma)[0] if ti_sigma > 0 else grad_sum
    if rms is not None:
        unit = g / g.pow(2).mean().sqrt().clamp_min(1e-20)
        return project(v - lr * rms / 255.0 * unit, xi, rms)
    return project(v - lr * xi / 255.0 * g.sign(), xi)


def step_size(lr: float, pass_index: int, max_passes: int) -> float:
    """The step (fraction of xi) in pass `pass_index` (1-based): lr decaying linearly to lr / 10."""
    t = (pass_index - 1) / max(max_passes - 1, 1)
    return lr * (1.0 - 0.9 * min(max(t, 0.0), 1.0))


def pass_batches(n: int, batch: int, seed: int, pass_index: int) -> list[np.ndarray]:
    """The pass's mini-batches: a permutation of the n faces' global indices (seeded by seed and
    pass), cut into batches of `batch`; the same whatever the number of workers."""
    perm = np.random.default_rng([seed, pass_index]).permutation(n)
    return [perm[i : i + batch] for i in range(0, n, batch)]


def face_rngs(seed: int, pass_index: int, indices: Sequence[int]) -> list[np.random.Generator]:
    """One jitter generator per face, from (seed, pass, the face's global index)."""
    return [np.random.default_rng([seed, pass_index, int(i), 7]) for i in indices]


def fixed_decoy(mean_clean: torch.Tensor, bank: torch.Tensor) -> int:
    """The bank row (a decoy identity's unit embedding) least similar to the faces' mean clean
    embedding: one decoy direction for all faces."""
    return int((F.normalize(bank, dim=1) @ F.normalize(mean_clean, dim=0)).argmin())


@torch.no_grad()
def rank1(emb: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """Rank-1 identity (N,) of unit embeddings against gallery centroids (K,D) (cosine)."""
    return (emb @ F.normalize(gallery, dim=1).T).argmax(1)


def plateaued(values: Sequence[float], patience: int, tol: float) -> bool:
    """Whether the last `patience` passes improved the best earlier value (higher is better)
    by less than `tol`."""
    if patience <= 0 or len(values) <= patience:
        return False
    best_before = max(values[:-patience])
    return max(values[-patience:]) < best_before + tol and not math.isnan(best_before)
