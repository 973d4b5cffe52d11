"""Iterative FGSM / PGD (Kurakin et al. 2017; Madry et al. 2018) in L-inf, with a per-face
early stop: a face stops moving once it is fooled by more than `kappa` logits, so easy faces
get the smallest cloak and hard ones get all the steps.
"""

from __future__ import annotations

import torch

from facepriv.attacks.base import Model, fooled_mask, loss_fn, predict, subset


def pgd(model: Model, x: torch.Tensor, y: torch.Tensor | None = None, eps: float = 4.0,
        steps: int = 10, alpha: float | None = None, targeted: bool = False,
        random_start: bool = False, early_stop: bool = True, kappa: float = 0.0,
        generator: torch.Generator | None = None,
        x_init: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (x_adv, steps_used per face). eps and alpha in 0-255 units; alpha defaults to
    max(eps / 4, 1), so that a face can cross the whole eps ball within the steps.
    `x_init` resumes from an earlier adversarial point (projected into the eps ball around x)."""
    if targeted and y is None:
        raise ValueError("a targeted attack needs target labels y")
    x = x.detach()
    if y is None:
        y = predict(model, x)
    e = eps / 255.0
    a = (alpha if alpha is not None else max(eps / 4.0, 1.0)) / 255.0
    xa = x.clone()
    if x_init is not None:
        xa = torch.min(torch.max(x_init.detach(), x - e), x + e).clamp(0, 1)
    elif random_start:
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        xa = (x + (noise * 2 - 1) * e).clamp(0, 1)
    used = torch.zeros(len(x), dtype=torch.long, device=x.device)
    active = torch.arange(len(x), device=x.device)
    for _ in range(steps):
        if len(active) == 0:
            break
        xi = xa[active].clone().requires_grad_(True)
        m = subset(model, active)
        logits = m(xi)
        keep = torch.ones(len(active), dtype=torch.bool, device=x.device)
        if early_stop:
            keep = ~fooled_mask(logits.detach(), y[active], targeted, kappa)
            plain = getattr(m, "plain_logits", None)  # a view-averaging model's un-jittered crop
            if plain is not None:
                keep |= ~fooled_mask(plain, y[active], targeted, kappa)
            if not keep.any():
                break
        loss = loss_fn(logits[keep], y[active][keep], targeted)
        (grad,) = torch.autograd.grad(loss, xi)
        active, xs, grad = active[keep], xi.detach()[keep], grad[keep]
        step = xs + a * grad.sign()
        xa[active] = torch.min(torch.max(step, x[active] - e), x[active] + e).clamp(0, 1)
        used[active] += 1
    return xa.detach(), used

