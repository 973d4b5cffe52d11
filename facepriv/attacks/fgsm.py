"""FGSM (Goodfellow et al. 2015; the paper's eq. 1): x_adv = clip(x + eps * sign(grad_x J)).

Untargeted against the true label y when given, else against the model's clean prediction;
targeted (`targeted=True`, y = target class) steps *down* the loss of the target.
"""

from __future__ import annotations

import torch

from facepriv.attacks.base import Model, loss_fn, predict


def fgsm(model: Model, x: torch.Tensor, y: torch.Tensor | None = None, eps: float = 8.0,
         targeted: bool = False) -> torch.Tensor:
    """One signed-gradient step of size eps (0-255 units). Returns x_adv in [0, 1]."""
    if targeted and y is None:
        raise ValueError("a targeted attack needs target labels y")
    x = x.detach()
    if y is None:
        y = predict(model, x)
    xa = x.clone().requires_grad_(True)
    loss = loss_fn(model(xa), y, targeted)
    (grad,) = torch.autograd.grad(loss, xa)
    return (x + (eps / 255.0) * grad.sign()).clamp(0, 1).detach()
