"""Applying a universal perturbation: the "uap" cloak strategy.

No gradients and no surrogate: for every detected face, v (fitted on S x S crops, see
facepriv/uap_fit.py) is resized to the face's square crop box (the box `geometry.crop_faces`
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

import hashlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from . import geometry
from .errors import FacePrivError
from .strategies import FaceItem, register


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


def prepare_args(args) -> None:
    """CLI glue for `--attack uap`: --uap is required; the manifest's eps becomes the perturbation's
    L-inf size in 0-255 units; CloakSettings.extra records the file and its sha256 (so a new v
    is never mistaken for an earlier run's settings)."""
    from .uap_fit import load_perturbation, load_sidecar

    path = getattr(args, "uap", None)
    if not path:
        raise FacePrivError("--attack uap needs --uap PATH (a perturbation from `facepriv uap fit`)")
    import fsspec

    try:
        with fsspec.open(path, "rb") as f:
            sha = hashlib.sha256(f.read()).hexdigest()
    except FileNotFoundError:
        raise FacePrivError(f"universal perturbation {path!r} not found; fit one with `facepriv uap fit`") from None
    v = load_perturbation(path)
    side = load_sidecar(path) or {}
    args.eps = round(float(abs(v).max()) * 255.0, 4)
    args.extra = {"uap": path, "uap_sha256": sha, "uap_xi": (side.get("settings") or {}).get("xi"),
                  "uap_norm": (side.get("settings") or {}).get("norm")}


@register("uap")
class UniversalStrategy:
    """Adds v, resized to each face's crop box; reads the path from settings.extra["uap"]."""

    def __init__(self, settings, loaded, device):
        from .uap_fit import load_perturbation

        path = (settings.extra or {}).get("uap")
        if not path:
            raise FacePrivError("--attack uap needs --uap PATH (a perturbation from `facepriv uap fit`)")
        self.v = torch.from_numpy(load_perturbation(path)).to(device)

    def __call__(self, chunk: list[FaceItem]):
        x = geometry.pack([it.pixels for it in chunk])
        return add_universal(x, [it.crop for it in chunk], self.v), [1] * len(chunk)
