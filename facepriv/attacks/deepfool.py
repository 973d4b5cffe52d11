"""DeepFool (Moosavi-Dezfooli et al., CVPR 2016), batched over faces, L2 and L-inf.

At each iteration the classifier is linearised at the current point around the
`num_candidates` most likely classes at the *clean* point (the original label first). For
every candidate k, with f'_k = f_k - f_label and w'_k = grad f'_k:

    l   = argmin_k |f'_k| / ||w'_k||_q         (q = 2 for L2, q = 1 for L-inf: the dual norm)
    r_i = (|f'_l| / ||w'_l||_q + 1e-4) * w'_l / ||w'_l||_2      (L2)
    r_i = (|f'_l| / ||w'_l||_1 + 1e-4) * sign(w'_l)              (L-inf)

r_total accumulates the r_i; the point examined at the next iteration is
x + (1 + overshoot) * r_total, as in the authors' reference code (the 1e-4 nudges a face
across a boundary it would only touch; overshoot is applied to the total, not per step).
A face stops as soon as the argmax over *all* classes differs from its label, or after
`max_iter` steps.

Box constraint: unlike the reference code, the examined point is clipped to [0, 1]
(as torchattacks does), and the returned `r` is `clip(x + (1 + overshoot) * r_total) - x`,
so `x + r` is always a valid image and is exactly the point that was judged fooled.

The loop is over iterations only: the faces still running are evaluated as one batch
(through `attacks.base.subset`, so a `CropModel` only crops those faces), with one backward
pass per candidate class on that batch. The model must treat batch rows independently
(eval mode: no batch-norm statistics in train mode).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from facepriv.attacks.base import Model, subset

NORMS = ("l2", "linf")
_NUDGE = 1e-4


class DeepFoolResult(NamedTuple):
    """r: perturbation (B,C,H,W), x + r in [0, 1], overshoot included; converged: (B,) bool,
    the label changed; iterations: (B,) steps taken; label: (B,) prediction at x + r."""

    r: torch.Tensor
    converged: torch.Tensor
    iterations: torch.Tensor
    label: torch.Tensor


def deepfool(model: Model, x: torch.Tensor, num_candidates: int = 10, overshoot: float = 0.02,
             max_iter: int = 50, norm: str = "l2", y: torch.Tensor | None = None) -> DeepFoolResult:
    """Minimal (untargeted) perturbation that changes each face's label.

    x: (B,C,H,W) in [0, 1]. y: the labels to move away from; defaults to the prediction at
    x. A face already predicted != y is returned at once (r = 0, converged, 0 iterations);
    the universal-perturbation loop uses this to skip faces that v already fools.
    Candidates are y plus the num_candidates - 1 other classes with the highest logits at x.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    x = x.detach()
    b = len(x)
    dev = x.device
    with torch.no_grad():
        logits0 = model(x)
    n_cls = logits0.shape[1]
    if n_cls < 2:
        raise ValueError("DeepFool needs a classifier with at least 2 classes")
    k = min(max(2, int(num_candidates)), n_cls)
    pred0 = logits0.argmax(1)
    label = pred0 if y is None else y.to(dev).long()
    other = logits0.detach().clone()
    other.scatter_(1, label[:, None], float("-inf"))
    cand = torch.cat([label[:, None], other.topk(k - 1, dim=1).indices], 1)  # (B, k)

    r_tot = torch.zeros_like(x)
    iters = torch.zeros(b, dtype=torch.long, device=dev)
    adv_label = pred0.clone()
    converged = pred0 != label
    active = (~converged).nonzero()[:, 0]
    scale = 1.0 + overshoot

    for it in range(max_iter + 1):
        if len(active) == 0:
            break
        xa = (x[active] + scale * r_tot[active]).clamp(0, 1).requires_grad_(True)
        logits = subset(model, active)(xa)
        pred = logits.detach().argmax(1)
        done = pred != label[active]
        adv_label[active] = pred
        converged[active[done]] = True
        if it == max_iter or bool(done.all()):
            break
        keep = ~done
        f = logits.gather(1, cand[active])
        fdiff = f[:, 1:] - f[:, :1]  # (b, k-1)
        grads = []
        for j in range(k - 1):
            (g,) = torch.autograd.grad(fdiff[:, j].sum(), xa, retain_graph=j < k - 2)
            grads.append(g)
        w = torch.stack(grads, 1)[keep]  # (b', k-1, C, H, W)
        fd = fdiff.detach()[keep]
        wf = w.flatten(2)
        w2 = wf.norm(dim=2)
        wq = w2 if norm == "l2" else wf.abs().sum(2)
        pert = fd.abs() / wq.clamp_min(1e-12)
        best = pert.argmin(1)
        rows = torch.arange(len(best), device=dev)
        p = pert[rows, best]
        wl = w[rows, best]
        shape = (-1,) + (1,) * (x.dim() - 1)
        if norm == "l2":
            r_i = ((p + _NUDGE) / w2[rows, best].clamp_min(1e-12)).view(shape) * wl
        else:
            r_i = (p + _NUDGE).view(shape) * wl.sign()
        idx = active[keep]
        r_tot[idx] += r_i
        iters[idx] += 1
        active = idx

    r = (x + scale * r_tot).clamp(0, 1) - x
    return DeepFoolResult(r.detach(), converged, iters, adv_label)
