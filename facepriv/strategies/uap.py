"""Applying a universal perturbation: the "uap" cloak strategy.

Two frames, read from v's sidecar (`facepriv.io.perturbation.describe`, "frame"):

* "aligned" (`facepriv uap fit --frame aligned`, facepriv/distributed/uap_aligned_fit.py): v
  lives on the 5-point template (e.g. arcface112 at 112 x 112); for each face it is drawn into
  the face's region through the inverse of the face's similarity transform
  (`facepriv.core.align.unwarp`, from MTCNN's landmarks), added to the original pixels and
  clipped to [0, 1] (|change| <= max|v| = xi). With floors (--min-face-quality, --min-psnr,
  --min-ssim) each face's change is then scaled to the largest the written file's face region
  keeps within them (`facepriv.strategies.floors.fit_budget`: `budget.fit_photo` on the photo
  as it will be written). Needs MTCNN and the file only: no surrogate, no gradient.
  With --top-up N (optional; needs a surrogate): the faces whose would-be file the surrogate
  still embeds within cosine --top-up-above of their clean embedding get N embed-pgd steps
  (`EmbedPGDStrategy.craft`, --preset protect's attack) starting from the universal cloak,
  and then the floors again; the manifest's steps are 1 (the addition) + N for those faces.
* "crop" (the paper's fit, facepriv/distributed/uap_fit.py; files without a frame):

No gradients and no surrogate: for every detected face, v (fitted on S x S crops, see
facepriv/distributed/uap_fit.py) is resized to the face's square crop box (the box `geometry.crop_faces`
crops for the model and the judge) and added to the original pixels inside that box, then
clamped to [0, 1]. Pixels outside the crop box are untouched. A model given with --model is
used only to judge the written files.

Resizing is bilinear (align_corners=False), antialiased when the box is smaller than S, the
same resampling `geometry.crop_resize` uses, so cropping the cloaked face back to S x S
recovers approximately v (exactly only when the box is S x S).

Caveat (measured on lfw50 with paper-cnn, issue 4): a v from Algorithm 1 is a pixel-grid
pattern. It fools 0.80 of the 160 x 160 training crops and 0.84 of held-out crops in memory,
but resampled 160 -> 122 -> 160 (a typical lfw face box) it fools ~0.02 of them and shifted
by 1 px 0.33, so the fooling rate judged on written photos is far lower (0.07-0.13).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from facepriv.core import geometry
from facepriv.core.align import landmark_transforms, unwarp
from facepriv.errors import FacePrivError
from facepriv.strategies.base import FaceItem
from facepriv.strategies.floors import fit_budget, floors_of, output_qualities


def resize_to_box(v: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """v (3,S,S) resized (bilinear) to (3,h,w)."""
    if tuple(v.shape[1:]) == (h, w):
        return v.clone()
    shrink = h < v.shape[1] or w < v.shape[2]
    return F.interpolate(v[None], size=(h, w), mode="bilinear", align_corners=False, antialias=shrink)[0]


def add_universal(x: torch.Tensor, crops: Sequence[Sequence[int]], v: torch.Tensor) -> torch.Tensor:
    """x (B,3,H,W) packed regions in [0,1]; crops[i] = (x0, y0, x1, y1) in region i's coordinates.

    Returns a copy of x with v resized to each crop box added inside it, clamped to [0, 1].
    """
    out = x.clone()
    v = v.to(x.device, x.dtype)
    for i, (x0, y0, x1, y1) in enumerate(crops):
        patch = out[i, :, y0:y1, x0:x1]
        out[i, :, y0:y1, x0:x1] = (patch + resize_to_box(v, y1 - y0, x1 - x0)).clamp_(0, 1)
    return out


def add_aligned(x: torch.Tensor, sizes: Sequence[tuple[int, int]], landmarks: Sequence, v: torch.Tensor,
                template: str | None) -> torch.Tensor:
    """x (B,3,H,W) packed regions in [0,1]; sizes[i] = region i's (h, w); landmarks[i] (5,2) in
    region coordinates. A copy of x with the template-frame v drawn into each face (`unwarp`)
    and added, clamped to [0, 1]; pixels that the template does not cover are unchanged."""
    out = x.clone()
    v = v.to(x.device, x.dtype)
    ms = landmark_transforms(np.stack([np.asarray(lm, np.float64) for lm in landmarks]), v.shape[-1], template) \
        if len(landmarks) else []
    for i, ((h, w), m) in enumerate(zip(sizes, ms)):
        out[i, :, :h, :w] = (out[i, :, :h, :w] + unwarp(v, m, h, w)).clamp_(0, 1)
    return out


def read_surrogates(settings) -> list:
    """The top-up's surrogates (none without --top-up: applying v needs no model)."""
    if not getattr(settings, "top_up", 0):
        return []
    from facepriv.strategies.embed import read_surrogates as read

    return read(settings)


class UniversalStrategy:
    """Adds v to each face in v's frame (module doc); reads the path from settings.extra["uap"]."""

    name = "uap"
    read_surrogates = staticmethod(read_surrogates)

    def __init__(self, settings, loaded, device, surrogates=None):
        from facepriv.io.perturbation import describe, load_perturbation

        path = (settings.extra or {}).get("uap")
        if not path:
            raise FacePrivError("--attack uap needs --perturbation PATH (a perturbation from `facepriv uap fit`)")
        self.s = settings
        self.v = torch.from_numpy(load_perturbation(path)).to(device)
        info = describe(path)
        self.frame, self.template = info.get("frame") or "crop", info.get("template")
        self.last_scales: list[float] = []
        self.topup = None
        self.last_topped: list[bool] = []
        if getattr(settings, "top_up", 0):
            if self.frame != "aligned":
                raise FacePrivError("--top-up needs a perturbation fitted with `facepriv uap fit --frame aligned`")
            from dataclasses import replace

            from facepriv.strategies.embed import EmbedPGDStrategy

            self.topup = EmbedPGDStrategy(replace(settings, attack="embed-pgd", steps=int(settings.top_up)),
                                          loaded, device, surrogates)

    def __call__(self, chunk: list[FaceItem]):
        x = geometry.pack([it.pixels for it in chunk])
        if self.frame != "aligned":
            return add_universal(x, [it.crop for it in chunk], self.v), [1] * len(chunk)
        sizes = [tuple(it.pixels.shape[1:]) for it in chunk]
        adv = add_aligned(x, sizes, [it.landmarks for it in chunk], self.v, self.template)
        adv = self._floors(chunk, x, adv, sizes)
        steps = [1] * len(chunk)
        self.last_topped = [False] * len(chunk)
        if self.topup is not None:
            x = x.to(self.topup.device)
            close = np.flatnonzero(self.topup.similarity(chunk, x, adv.to(x.device)) > self.s.top_up_above)
            if len(close):
                sub = [chunk[i] for i in close]
                idx = torch.as_tensor(close, device=x.device)
                got, used, _, _ = self.topup.craft(sub, x[idx], x_init=adv.to(x.device)[idx])
                adv = adv.to(x.device).clone()
                adv[idx] = got
                first = list(self.last_scales)
                adv = self._floors(chunk, x, adv, sizes)
                # a face not topped up keeps its universal cloak's scale (times the second fit's, ~1)
                topped = set(int(i) for i in close)
                self.last_scales = [sc if i in topped else first[i] * sc for i, sc in enumerate(self.last_scales)]
                for j, i in enumerate(close):
                    steps[i] += int(used[j])
                    self.last_topped[i] = True
        return adv, steps

    def _floors(self, chunk, x, adv, sizes):
        floors = floors_of(self.s)
        self.last_scales = [1.0] * len(chunk)
        if not floors:
            return adv
        adv, self.last_scales = fit_budget(self.s, chunk, x, adv, sizes, output_qualities(self.s, chunk), floors)
        return adv
