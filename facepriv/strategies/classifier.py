"""FGSM and PGD on a classifier surrogate (the paper's attacks) through the differentiable crop."""

from __future__ import annotations

import torch

from facepriv.attacks.fgsm import fgsm
from facepriv.attacks.pgd import pgd
from facepriv.core import geometry
from facepriv.errors import FacePrivError
from facepriv.strategies.base import FaceItem, WrittenModel
from facepriv.strategies.floors import output_qualities


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
            model = WrittenModel(model, sizes, output_qualities(self.s, chunk))
        y = torch.tensor([it.target if it.target is not None else int(c) for it, c in zip(chunk, clean)],
                         device=x.device)
        return x, model, y



class FGSMStrategy(_ClassifierAttack):
    name = "fgsm"

    def __call__(self, chunk):
        x, model, y = self._setup(chunk)
        return fgsm(model, x, y, eps=self.s.eps, targeted=self.s.target is not None), [1] * len(chunk)


class PGDStrategy(_ClassifierAttack):
    name = "pgd"
    resumable = True  # the pipeline may re-attack faces its verification finds unfooled

    def __call__(self, chunk):
        x, model, y = self._setup(chunk)
        start = None
        if any(it.start is not None for it in chunk):
            start = geometry.pack([it.start if it.start is not None else it.pixels for it in chunk]).to(x.device)
        adv, used = pgd(model, x, y, eps=self.s.eps, steps=self.s.steps, alpha=self.s.alpha,
                        targeted=self.s.target is not None, kappa=self.s.kappa, x_init=start)
        return adv, used.tolist()
