"""Helpers shared by the attacks."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

Model = Callable[[torch.Tensor], torch.Tensor]


def subset(model: Model, idx: Sequence[int] | torch.Tensor) -> Model:
    """The model restricted to faces idx when it supports `select` (e.g. CropModel)."""
    sel = getattr(model, "select", None)
    if sel is None:
        return model
    return sel([int(i) for i in idx])


@torch.no_grad()
def predict(model: Model, x: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(1)


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per row, the logit of class y minus the best other class's (< 0: y is not predicted)."""
    true = logits.gather(1, y[:, None])[:, 0]
    other = logits.clone()
    other.scatter_(1, y[:, None], float("-inf"))
    return true - other.max(1).values


def fooled_mask(logits: torch.Tensor, y: torch.Tensor, targeted: bool, kappa: float = 0.0) -> torch.Tensor:
    """Which rows are fooled: untargeted, the true class trails the best other class by more
    than kappa logits; targeted, the target leads every other class by more than kappa."""
    m = margin(logits, y)
    return m > kappa if targeted else -m > kappa


def loss_fn(logits: torch.Tensor, y: torch.Tensor, targeted: bool) -> torch.Tensor:
    """Summed cross-entropy; its gradient ascends for untargeted, descends for targeted."""
    loss = F.cross_entropy(logits, y, reduction="sum")
    return -loss if targeted else loss
