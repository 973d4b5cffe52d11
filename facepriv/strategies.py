"""How the pipeline cloaks a chunk of faces: one strategy per attack name.

A strategy is built once per worker (`make(settings, loaded, device)`) and called on chunks
of faces: `strategy(chunk: list[FaceItem]) -> (adversarial packed regions, steps per face)`.
Attack modules register here; the pipeline knows nothing about individual attacks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import geometry, imageio
from .attacks import fgsm, pgd
from .errors import FacePrivError


@dataclass
class FaceItem:
    """One face to cloak: its region of the photo at native resolution, and where it sits."""

    photo: Any  # the pipeline's per-photo record
    index: int  # face index within the photo
    region: tuple[int, int, int, int]  # x0, y0, x1, y1 in photo pixels
    pixels: torch.Tensor  # (3, h, w) in [0, 1], the region's pixels
    crop: tuple[int, int, int, int]  # square crop box in region coordinates
    landmarks: np.ndarray  # (5, 2) in region coordinates
    box: np.ndarray  # detector box in region coordinates
    target: int | None = None  # class index to move away from (untargeted) or towards (targeted)
    start: torch.Tensor | None = None  # (3, h, w) earlier cloak of the region to resume from


Strategy = Callable[[list[FaceItem]], tuple[torch.Tensor, list[int]]]
REGISTRY: dict[str, Callable[..., Strategy]] = {}


def register(name: str):
    def deco(factory):
        REGISTRY[name] = factory
        return factory

    return deco


def make(settings, loaded, device: torch.device) -> Strategy:
    if settings.attack not in REGISTRY:
        raise FacePrivError(f"unknown attack {settings.attack!r}; choose one of {sorted(REGISTRY)}")
    return REGISTRY[settings.attack](settings=settings, loaded=loaded, device=device)


class _ClassifierAttack:
    """FGSM / PGD on a classifier surrogate through the differentiable crop."""

    per_face = True  # a face's cloak does not depend on the other faces in its chunk

    def __init__(self, settings, loaded, device):
        if loaded is None or getattr(loaded.model, "kind", "classifier") != "classifier":
            raise FacePrivError(f"--attack {settings.attack} needs --model, a classifier checkpoint from "
                                "`facepriv train`")
        self.s, self.net, self.device = settings, loaded.model, device

    def _setup(self, chunk: list[FaceItem]):
        x = geometry.pack([it.pixels for it in chunk])
        with torch.no_grad():
            clean = geometry.CropModel(self.net, [it.crop for it in chunk])(x).argmax(1)
        views = geometry.JITTER_VIEWS[: max(1, self.s.views)] if self.s.views > 1 else None
        sizes = [tuple(it.pixels.shape[1:]) for it in chunk]
        model = geometry.CropModel(self.net, [it.crop for it in chunk], views=views, sizes=sizes)
        if getattr(self.s, "simulate_write", False):
            q = [self.s.jpeg_quality if getattr(it.photo.decoded, "format", None) == "JPEG" else None for it in chunk]
            model = WrittenModel(model, sizes, q)
        y = torch.tensor([it.target if it.target is not None else int(c) for it, c in zip(chunk, clean)],
                         device=x.device)
        return x, model, y


class WrittenModel(torch.nn.Module):
    """model(what the written file will hold): each face region is quantised to uint8 and, for
    JPEG outputs, round-tripped through the real encoder at the output quality (regions are
    aligned to the 8x8 JPEG grid, so this is what the file holds). Gradients pass straight
    through the non-differentiable step (BPDA), so PGD optimises the written pixels."""

    def __init__(self, inner, sizes, qualities):
        super().__init__()
        self.inner, self.sizes, self.qualities = inner, list(sizes), list(qualities)

    def _written(self, x: torch.Tensor) -> torch.Tensor:
        out = (x * 255).round() / 255
        for i, ((h, w), q) in enumerate(zip(self.sizes, self.qualities)):
            if q is None:
                continue
            region = (x[i, :, :h, :w].detach().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
            back = imageio.jpeg_round_trip(region, q)
            out[i, :, :h, :w] = torch.from_numpy(back).to(x.device).permute(2, 0, 1).float() / 255
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x + (self._written(x) - x).detach())

    @property
    def plain_logits(self):
        return getattr(self.inner, "plain_logits", None)

    def select(self, idx):
        idx = [int(i) for i in idx]
        return WrittenModel(self.inner.select(idx), [self.sizes[i] for i in idx], [self.qualities[i] for i in idx])


@register("fgsm")
class FGSMStrategy(_ClassifierAttack):
    def __call__(self, chunk):
        x, model, y = self._setup(chunk)
        return fgsm(model, x, y, eps=self.s.eps, targeted=self.s.target is not None), [1] * len(chunk)


@register("pgd")
class PGDStrategy(_ClassifierAttack):
    resumable = True  # the pipeline may re-attack faces its verification finds unfooled

    def __call__(self, chunk):
        x, model, y = self._setup(chunk)
        start = None
        if any(it.start is not None for it in chunk):
            start = geometry.pack([it.start if it.start is not None else it.pixels for it in chunk]).to(x.device)
        adv, used = pgd(model, x, y, eps=self.s.eps, steps=self.s.steps, alpha=self.s.alpha,
                        targeted=self.s.target is not None, kappa=self.s.kappa, x_init=start)
        return adv, used.tolist()


from . import uap_apply  # noqa: E402,F401  (registers "uap")
from . import embed_strategy  # noqa: E402,F401  (registers "embed-pgd")
