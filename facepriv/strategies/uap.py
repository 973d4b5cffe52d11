"""Applying a universal perturbation: the "uap" cloak strategy.

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

import torch
import torch.nn.functional as F

from facepriv.core import geometry
from facepriv.errors import FacePrivError
from facepriv.strategies.base import FaceItem


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


class UniversalStrategy:
    """Adds v, resized to each face's crop box; reads the path from settings.extra["uap"]."""

    name = "uap"

    def __init__(self, settings, loaded, device):
        from facepriv.io.perturbation import load_perturbation

        path = (settings.extra or {}).get("uap")
        if not path:
            raise FacePrivError("--attack uap needs --uap PATH (a perturbation from `facepriv uap fit`)")
        self.v = torch.from_numpy(load_perturbation(path)).to(device)

    def __call__(self, chunk: list[FaceItem]):
        x = geometry.pack([it.pixels for it in chunk])
        return add_universal(x, [it.crop for it in chunk], self.v), [1] * len(chunk)
