"""What every cloak strategy shares: `FaceItem` (one face to cloak), the `Strategy` call
signature and `WrittenModel` (a model of what the written file will hold)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from facepriv.io import imageio


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


class WrittenModel(torch.nn.Module):
    """model(what the written file will hold): each face region is quantised to uint8 and, for
    JPEG outputs, round-tripped through the real encoder at the output quality (regions are
    aligned to the 8x8 JPEG grid, so this is what the file holds). Gradients pass straight
    through the non-differentiable step (BPDA), so PGD optimises the written pixels."""

    def __init__(self, inner, sizes, qualities):
        super().__init__()
        self.inner, self.sizes, self.qualities = inner, list(sizes), list(qualities)

    def _written(self, x: torch.Tensor) -> torch.Tensor:
        u8 = x.detach().clamp(0, 1).mul_(255).round_().to(torch.uint8)
        jpeg = [i for i, q in enumerate(self.qualities) if q is not None]
        if jpeg:  # one conversion to HWC numpy for the batch; each JPEG region round-tripped in place
            hwc = u8.permute(0, 2, 3, 1).cpu().numpy().copy()
            for i in jpeg:
                h, w = self.sizes[i]
                hwc[i, :h, :w] = imageio.jpeg_round_trip(np.ascontiguousarray(hwc[i, :h, :w]), self.qualities[i])
            u8 = torch.from_numpy(hwc).to(x.device).permute(0, 3, 1, 2)
        return u8.to(x.dtype).div_(255)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x + (written - x), the difference detached: written pixels forward, the identity backward
        return self.inner(x + self._written(x).sub_(x.detach()))

    @property
    def plain_logits(self):
        return getattr(self.inner, "plain_logits", None)

    def select(self, idx):
        idx = [int(i) for i in idx]
        return WrittenModel(self.inner.select(idx), [self.sizes[i] for i in idx], [self.qualities[i] for i in idx])
