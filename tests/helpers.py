"""Small helpers shared by the test modules."""

from __future__ import annotations


def random_checkpoint(path: str, classes: list[str], seed: int = 0) -> str:
    """Save a random-weight paper-cnn checkpoint (for tests that need a model, not a trained one)."""
    import torch

    from facepriv.models.checkpoint import save_checkpoint
    from facepriv.models.registry import build_model

    torch.manual_seed(seed)
    save_checkpoint(path, build_model("paper-cnn", len(classes)), "paper-cnn", classes)
    return path
