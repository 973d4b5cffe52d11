"""Label-free PGD on face embeddings (pure torch, no I/O).

The attack variable is the packed face regions x (B,3,H,W) in [0,1] (`facepriv.core.geometry`);
each surrogate is a callable ``regions -> embeddings (B,D)`` (typically an
`facepriv.core.align.AlignModel`, optionally a `JitteredAlign` for input diversity). No identity
labels are needed: the reference is each face's own clean embedding.

Losses (per model, per face; minimised):

* ``"untargeted"``: ``cos(e(x'), e(x))`` - push the embedding away from the clean one;
* ``"decoy"``: ``cos(e(x'), e(x)) - cos(e(x'), d)`` - move toward a decoy identity's
  embedding d (Fawkes' targeted cloak) and away from the clean one.

An ensemble averages the per-model losses. Techniques for transfer to unseen recognisers:

* momentum (MI-FGSM, Dong et al. 2018): ``g <- mu * g + grad / mean|grad|`` per face;
* translation-invariant gradients (TI, Dong et al. 2019): the gradient is smoothed with a
  Gaussian of ``ti_sigma`` pixels before the sign;
* input diversity (DI, Xie et al. 2019): `JitteredAlign` draws, with probability p per
  forward pass, a random similarity (scale, rotation, shift) composed with the alignment,
  i.e. a random resize/rotate/pad of the aligned crop, without a second resampling.

`pre` (e.g. ``WrittenModel`` over an identity) maps x to what the written file will hold
before every model sees it (uint8 + JPEG with straight-through gradients), once per step.

eps and alpha are in 0-255 units, as everywhere in facepriv.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from facepriv.core.align import AlignModel, warp_packed

Model = Callable[[torch.Tensor], torch.Tensor]
LOSSES = ("untargeted", "decoy")


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """Normalised 2-D Gaussian (k,k), k = 2*ceil(3 sigma) + 1."""
    r = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def smooth(grad: torch.Tensor, sigma: float) -> torch.Tensor:
    """Depthwise Gaussian smoothing of a (B,C,H,W) gradient (TI); sigma <= 0 returns it as is."""
    if sigma <= 0:
        return grad
    k = gaussian_kernel(sigma).to(grad)
    c = grad.shape[1]
    w = k.expand(c, 1, *k.shape).contiguous()
    return F.conv2d(grad, w, padding=k.shape[-1] // 2, groups=c)


def _unit(e: torch.Tensor) -> torch.Tensor:
    return F.normalize(e.flatten(1), dim=1)


def embedding_loss(emb: torch.Tensor, clean: torch.Tensor, decoy: torch.Tensor | None = None) -> torch.Tensor:
    """Per-face loss to minimise: cos(emb, clean) [- cos(emb, decoy)]. Shapes (B,D) -> (B,)."""
    e = _unit(emb)
    loss = (e * clean).sum(1)
    if decoy is not None:
        loss = loss - (e * decoy).sum(1)
    return loss


@torch.no_grad()
def embed(models: Sequence[Model], x: torch.Tensor) -> list[torch.Tensor]:
    """Unit embeddings of x under each model."""
    return [_unit(m(x)) for m in models]


def embed_pgd(models: Sequence[Model], x: torch.Tensor, eps: float = 8.0, steps: int = 20,
              alpha: float | None = None, loss: str = "untargeted",
              clean: Sequence[torch.Tensor] | None = None, decoys: Sequence[torch.Tensor] | None = None,
              momentum: float = 0.0, ti_sigma: float = 0.0, pre: Model | None = None,
              x_init: torch.Tensor | None = None,
              eps_map: torch.Tensor | None = None,
              quality: "QualityTerm | None" = None, quality_every: int = 1,
              face_rms: float | None = None, face_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """PGD in L-inf against embedding models. Returns (x_adv, steps used per face).

    `clean[k]` / `decoys[k]`: unit embeddings (B,D_k) for model k (clean defaults to the
    models' embeddings of x; decoys are required for loss="decoy"). alpha defaults to
    max(2 * eps / steps, 0.25). Every face takes all `steps` (there is no label to stop on).
    `eps_map` (broadcastable to x, values in [0, 1]) scales eps and the step per pixel (e.g.
    `texture_map`: less change where the photo is flat, where SSIM and the eye notice it).
    `quality` (`QualityTerm`): a face-quality penalty added to the loss; its gradient is
    computed every `quality_every` steps and reused in between (the term moves slowly with
    the change; each evaluation costs about a third of a surrogate pass). `face_rms` with
    `face_mask` (B,1,H,W): an L2 ball on each face - the change's RMS over the mask's pixels
    stays <= face_rms (0-255 units; the face's PSNR >= 20 log10(255 / face_rms)), steps of
    2.5 x radius / steps along the L2-normalised gradient; eps still caps every pixel.
    `x_init`: start from this cloak of x (clipped to the eps box; a larger change on the
    face than face_rms widens that face's ball to it rather than shrinking the start).
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose one of {LOSSES}")
    if not models:
        raise ValueError("embed_pgd needs at least one model")
    if loss == "decoy" and (decoys is None or len(decoys) != len(models)):
        raise ValueError("loss='decoy' needs one decoy embedding tensor per model")
    x = x.detach()
    if clean is None:
        clean = embed(models, x if pre is None else pre(x))
    clean = [c.detach() for c in clean]
    dec = [d.detach() for d in decoys] if loss == "decoy" else [None] * len(models)
    e = eps / 255.0
    a = (alpha if alpha is not None else max(2.0 * eps / max(steps, 1), 0.25)) / 255.0
    if eps_map is not None:
        e, a = e * eps_map.to(x), a * eps_map.to(x)
    lo, hi = (x - e).clamp(0, 1), (x + e).clamp(0, 1)  # the eps box within [0, 1], once
    xa = x.clone() if x_init is None else torch.clamp(x_init.detach(), lo, hi)
    g = torch.zeros_like(x)
    if face_rms is not None:  # an L2 ball on each face's quality box: RMS change <= face_rms (0-255)
        radius = face_rms / 255.0 * (face_mask.flatten(1).sum(1) * x.shape[1]).sqrt()
        if x_init is not None:  # a start outside the ball (a universal cloak) keeps its size
            radius = torch.max(radius, ((xa - x) * face_mask).flatten(1).norm(dim=1))
        a2 = 2.5 * radius / max(steps, 1)
    every = max(int(quality_every), 1)
    qgrad = None
    for t in range(steps):
        xi = xa.detach().requires_grad_(True)  # xa is never changed in place: no copy needed
        xin = xi if pre is None else pre(xi)
        grad = _gradient(models, xin, xi, clean, dec)
        if quality is not None and t % every == 0:
            qgrad = _quality_gradient(quality, x, xin)
        with torch.no_grad():  # in place where a tensor is fresh (grad, step): fewer full-size allocations
            if qgrad is not None:
                grad = grad.add_(qgrad)
            grad = smooth(grad, ti_sigma)
            if momentum > 0:
                grad = grad / grad.abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
                g = momentum * g + grad
            else:
                g = grad
            if face_rms is not None:
                n = g.flatten(1).norm(dim=1).clamp_min(1e-12)
                step = g.mul(-(a2 / n)[:, None, None, None]).add_(xa)
            else:
                step = xa - a * g.sign()  # descend: the loss is a similarity to the clean face
            xa = step.clamp_(lo, hi)
            if face_rms is not None:
                d = xa.sub_(x)  # xa is rebuilt from d below
                f = (radius / (d * face_mask).flatten(1).norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)
                xa = d.mul_(f[:, None, None, None]).add_(x)
    return xa, torch.full((len(x),), steps, dtype=torch.long, device=x.device)


def _gradient(models, xin, var, clean, dec):
    """Gradient wrt `var` of the ensemble's mean embedding loss."""
    total = sum(embedding_loss(m(xin), c, d).sum() for m, c, d in zip(models, clean, dec)) / len(models)
    return torch.autograd.grad(total, var)[0]


def _quality_gradient(quality: "QualityTerm", x: torch.Tensor, xin: torch.Tensor) -> torch.Tensor | None:
    """Gradient of the quality term at `xin` (what the file will hold; its gradient passes
    straight through to the attack variable); None when every face is above the target."""
    xq = xin.detach().requires_grad_(True)
    penalty = quality.penalty(x, xq)
    return None if penalty is None else torch.autograd.grad(penalty, xq)[0]


class QualityTerm:
    """A perceptual term in the attack's loss: for each face, weight * max(0, target - S) / 100,
    S the differentiable SSIMULACRA2 (`facepriv.core.perceptual`) of its quality box
    (`boxes[i]` = (x0, y0, x1, y1) in region pixels) in what the file will hold against the
    original. Below the target the attack trades embedding shift for quality on the face.

    `precision`: float32 by default - the term only steers the attack (the floors are checked
    on the written file in float64 afterwards) and it is ~1.3-1.6x cheaper than float64 on a CPU,
    its scores within ~0.01 of a point."""

    def __init__(self, boxes, target: float, weight: float = 1.0, precision: torch.dtype = torch.float32):
        self.boxes = [tuple(int(v) for v in b) for b in boxes]
        self.target, self.weight = float(target), float(weight)
        self.precision = precision
        self.last: torch.Tensor | None = None
        self._refs: tuple[torch.Tensor, list] | None = None  # (x, each face's perceptual.Reference)

    def penalty(self, x: torch.Tensor, xin: torch.Tensor) -> torch.Tensor | None:
        """The term for the regions `xin` (what the file will hold) against the originals `x`;
        None when every face scores above the target (the term and its gradient are 0)."""
        from facepriv.core.perceptual import Reference

        if self._refs is None or self._refs[0] is not x:  # the original's side, once per attack
            self._refs = (x, [Reference(x[i : i + 1, :, y0:y1, x0:x1].detach(), self.precision)
                              for i, (x0, y0, x1, y1) in enumerate(self.boxes)])
        # one unbind for the batch (its backward stacks the faces' gradients once; slicing
        # xin[i : i + 1] per face would build a zero tensor of the whole batch per face)
        scores = [ref.score(r[None, :, y0:y1, x0:x1])
                  for r, ref, (x0, y0, x1, y1) in zip(xin.unbind(0), self._refs[1], self.boxes)]
        self.last = torch.cat(scores).detach()
        # only the faces below the target (clamp_min passes the gradient where target - score >= 0):
        # the others add 0 to the term and to its gradient, so their backward is not run at all
        below = [s for s, v in zip(scores, (self.target - self.last >= 0).tolist()) if v]
        if not below:
            return None
        return self.weight * (self.target - torch.cat(below)).clamp_min(0).sum() / 100.0


def texture_map(x: torch.Tensor, t: float) -> torch.Tensor:
    """Per-pixel eps scale in (0, 1] (B,1,H,W) from local luma contrast, shaped like SSIM's
    tolerance: a change of variance v in a window of signal std s costs about
    v / (2 s^2 + C2) of SSIM, so the allowed change grows as sqrt(2 s^2 + C2); full eps where
    the local std (Gaussian 11/1.5 window, 0-255 units) reaches `t`."""
    c2 = (0.03 * 255) ** 2
    y = (x[:, 0:1] * 0.299 + x[:, 1:2] * 0.587 + x[:, 2:3] * 0.114) * 255
    k = gaussian_kernel(1.5).to(x)[None, None]
    pad = k.shape[-1] // 2
    mu = F.conv2d(F.pad(y, [pad] * 4, mode="replicate"), k)
    var = (F.conv2d(F.pad(y * y, [pad] * 4, mode="replicate"), k) - mu * mu).clamp_min(0)
    return ((2 * var + c2) / (2 * t * t + c2)).sqrt().clamp(max=1.0)


class JitteredAlign(AlignModel):
    """AlignModel with input diversity: in each forward pass, each face's alignment is, with
    probability `p`, composed with a random similarity about the output centre (scale in
    [1 - scale, 1 + scale], rotation within +-`degrees`, shift within +-`shift` of the
    output size), i.e. a random resize / rotate / pad of the aligned crop. p = 0 is AlignModel.

    `rng`: one generator shared by the faces (default: seeded with `seed`), or a list of one
    per face, so that a face's draws depend on its own generator only, not on its place in
    the batch (`facepriv.strategies.embed` seeds each from the face's pixels)."""

    def __init__(self, net, transforms, p: float = 0.5, scale: float = 0.1, degrees: float = 8.0,
                 shift: float = 0.05, size: int | None = None, template=None, seed: int = 0,
                 rng: np.random.Generator | Sequence[np.random.Generator] | None = None,
                 sizes: Sequence[tuple[int, int]] | None = None):
        super().__init__(net, transforms, size, template, sizes)
        self.p, self.scale, self.degrees, self.shift = float(p), float(scale), float(degrees), float(shift)
        if isinstance(rng, (list, tuple)):
            if len(rng) != len(self.matrices):
                raise ValueError(f"{len(rng)} generators for {len(self.matrices)} faces")
            self.rngs = list(rng)
        else:
            self.rngs = [rng if rng is not None else np.random.default_rng(seed)] * len(self.matrices)
        self._seed = seed

    def jitter(self, m: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.p <= 0 or rng.random() >= self.p:
            return m
        s = 1.0 + rng.uniform(-self.scale, self.scale)
        t = np.deg2rad(rng.uniform(-self.degrees, self.degrees))
        d = rng.uniform(-self.shift, self.shift, size=2) * self.size
        c = (self.size - 1) / 2.0
        r = s * np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
        j = np.eye(3)
        j[:2, :2] = r
        j[:2, 2] = c - r @ np.array([c, c]) + d
        return (j @ np.vstack([m, [0.0, 0.0, 1.0]]))[:2]

    def align(self, x: torch.Tensor) -> torch.Tensor:
        if self.p <= 0:
            return super().align(x)
        return warp_packed(x, [self.jitter(m, rng) for m, rng in zip(self.matrices, self.rngs)], self.size, self.sizes)

    def select(self, idx):
        idx = [int(i) for i in idx]
        return JitteredAlign(self.net, self.matrices[idx].reshape(-1, 2, 3), self.p, self.scale,
                             self.degrees, self.shift, self.size, self.template, rng=[self.rngs[i] for i in idx],
                             sizes=[self.sizes[i] for i in idx] if self.sizes is not None else None)
