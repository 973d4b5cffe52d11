"""How the pipeline cloaks a chunk of faces: one strategy per attack name.

A strategy is built once per worker (`make(settings, loaded, device)`) and called on chunks
of faces: `strategy(chunk: list[FaceItem]) -> (adversarial packed regions, steps per face)`.
The registry is explicit: each strategy module is imported here and names itself; none of
them imports this package back, and the pipeline knows nothing about individual attacks.
"""

from __future__ import annotations

import torch

from facepriv.errors import FacePrivError
from facepriv.strategies.base import FaceItem, Strategy, WrittenModel
from facepriv.strategies.classifier import FGSMStrategy, PGDStrategy
from facepriv.strategies.embed import EmbedPGDStrategy
from facepriv.strategies.uap import UniversalStrategy

REGISTRY: dict[str, type] = {s.name: s for s in (FGSMStrategy, PGDStrategy, UniversalStrategy, EmbedPGDStrategy)}

__all__ = ["REGISTRY", "FaceItem", "Strategy", "WrittenModel", "make", "read_surrogates"]


def read_surrogates(settings) -> list:
    """The surrogate models the attack of `settings` is crafted on (`models.store.SurrogateWeights`,
    read from this machine; [] for attacks without): what a run's driver reads once and hands
    to `make` on every worker."""
    read = getattr(REGISTRY.get(settings.attack), "read_surrogates", None)
    return read(settings) if read is not None else []


def make(settings, loaded, device: torch.device, surrogates: list | None = None) -> Strategy:
    """A strategy for `settings.attack`; `surrogates`: `read_surrogates(settings)` as the driver
    read them (None: read here)."""
    if settings.attack not in REGISTRY:
        raise FacePrivError(f"unknown attack {settings.attack!r}; choose one of {sorted(REGISTRY)}")
    factory = REGISTRY[settings.attack]
    extra = {"surrogates": surrogates} if hasattr(factory, "read_surrogates") else {}
    return factory(settings=settings, loaded=loaded, device=device, **extra)
