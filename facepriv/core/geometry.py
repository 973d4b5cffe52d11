"""Face geometry, pure torch: regions around detected faces, differentiable crop-and-resize
from a photo's own pixels to a model's input, and pasting a cloaked region back.

The attack variable is the face *region* at the photo's native resolution (the box plus a
margin). Regions of different sizes are packed, zero-padded, into one batch tensor; a
`CropModel` crops each face's box out of its region and resizes it (bilinear, antialiased,
differentiable) to the model's input, so gradients land on the original pixels and the
perturbation survives into the written file. Judging uses the same crop function on the
re-decoded file, so crafting and judging see faces the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def square_box(box: Sequence[float], scale: float = 1.0) -> np.ndarray:
    """A square box with side max(w, h) * scale around the box centre (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(x1 - x0, y1 - y0) * scale
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], dtype=np.float32)


def int_box(box: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """Round a float box to pixel edges and clamp it to the image; at least 1x1."""
    x0 = int(np.clip(np.floor(box[0]), 0, width - 1))
    y0 = int(np.clip(np.floor(box[1]), 0, height - 1))
    x1 = int(np.clip(np.ceil(box[2]), x0 + 1, width))
    y1 = int(np.clip(np.ceil(box[3]), y0 + 1, height))
    return x0, y0, x1, y1


def face_region(box: Sequence[float], width: int, height: int, margin: float = 0.25) -> tuple[int, int, int, int]:
    """The pixels a cloak may change for one face: its square crop box grown by `margin`."""
    return int_box(square_box(box, 1.0 + 2 * margin), width, height)


QUALITY_MARGIN = 0.10  # quality region: the box grown by this fraction of its width/height each side


def quality_region(box: Sequence[float], width: int, height: int,
                   margin: float = QUALITY_MARGIN) -> tuple[int, int, int, int]:
    """Where a face's quality is measured (`metrics.face_quality`) and bound (--min-psnr,
    --min-ssim, --min-face-quality): the detector box grown by `margin` of its width on the
    left and right and of its height above and below, rounded out and clipped to the image.
    Tighter than the cloak's region (`face_region`): the face and a rim of its surroundings,
    not the background the cloak also touches."""
    x0, y0, x1, y1 = (float(v) for v in box)
    mx, my = margin * (x1 - x0), margin * (y1 - y0)
    return int_box((x0 - mx, y0 - my, x1 + mx, y1 + my), width, height)


def jpeg_region(box: Sequence[float], width: int, height: int, margin: float = 0.25) -> tuple[int, int, int, int]:
    """`face_region` grown out to the 8x8 JPEG block grid (clamped to the image), so a region's
    JPEG round trip is the written file's within it."""
    x0, y0, x1, y1 = face_region(box, width, height, margin)
    return x0 - x0 % 8, y0 - y0 % 8, min(width, x1 + (-x1) % 8), min(height, y1 + (-y1) % 8)


def search_windows(boxes: np.ndarray, width: int, height: int, margin: float = 0.5,
                   min_side: int = 0, full_above: float = 0.6) -> list[tuple[int, int, int, int]]:
    """Where to look for known faces again: each box grown by `margin` x its longer side on
    every side, overlapping windows merged into their bounding rectangle until none overlap
    (so no face is searched twice and a crowd becomes one window), each at least `min_side`
    pixels a side. If the windows cover more than `full_above` of the photo, the whole photo."""
    wins: list[list[int]] = []
    for b in np.asarray(boxes, np.float32).reshape(-1, 4):
        side = max(float(b[2] - b[0]), float(b[3] - b[1]), 1.0)
        grow = max(margin * side, (min_side - side) / 2, 0.0)
        wins.append(list(int_box((b[0] - grow, b[1] - grow, b[2] + grow, b[3] + grow), width, height)))
    while (pair := next(((i, j) for i in range(len(wins)) for j in range(i + 1, len(wins))
                         if _overlap(wins[i], wins[j])), None)) is not None:
        i, j = pair
        a, b = wins[i], wins.pop(j)
        wins[i] = [min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])]
    area = sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in wins)
    if not wins or area > full_above * width * height:
        return [(0, 0, width, height)]
    return [tuple(w) for w in wins]


def _overlap(a: Sequence[int], b: Sequence[int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def crop_resize(images: torch.Tensor, boxes: Sequence[Sequence[int]], size: int) -> torch.Tensor:
    """Crop integer boxes (x0, y0, x1, y1) from images (B,3,H,W) and resize each to size x size.

    Bilinear with antialiasing, differentiable with respect to `images`.
    """
    # unbind once: slicing images[i : i + 1] per crop would make each crop's backward allocate
    # (and sum) a gradient the size of the whole batch, quadratic in the batch size
    rows = images.unbind(0)
    out = []
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        patch = rows[i][None, :, y0:y1, x0:x1]
        out.append(F.interpolate(patch, size=(size, size), mode="bilinear", antialias=True, align_corners=False))
    return torch.cat(out, 0)


def crop_faces(image: torch.Tensor, boxes: Sequence[Sequence[float]], size: int, scale: float = 1.0) -> torch.Tensor:
    """Model inputs for faces in one photo (3,H,W) in [0,1], from detector boxes."""
    _, h, w = image.shape
    ib = [int_box(square_box(b, scale), w, h) for b in boxes]
    return crop_resize(image.unsqueeze(0).expand(len(ib), -1, -1, -1), ib, size)


def pack(regions: Sequence[torch.Tensor]) -> torch.Tensor:
    """Zero-pad a list of (3,h,w) tensors into one (B,3,Hmax,Wmax) tensor."""
    hm = max(r.shape[1] for r in regions)
    wm = max(r.shape[2] for r in regions)
    out = regions[0].new_zeros((len(regions), 3, hm, wm))
    for i, r in enumerate(regions):
        out[i, :, : r.shape[1], : r.shape[2]] = r
    return out


# Crop jitter views (dx, dy as a fraction of the box side; ds a scale factor): the shifts and
# scale changes that re-detecting a face in the written file typically gives.
JITTER_VIEWS: tuple[tuple[float, float, float], ...] = (
    (0.0, 0.0, 1.0), (0.03, 0.0, 1.0), (-0.03, 0.0, 1.0), (0.0, 0.03, 1.0), (0.0, -0.03, 1.0),
    (0.0, 0.0, 1.05), (0.0, 0.0, 0.95),
)


def jitter_box(box: Sequence[int], view: tuple[float, float, float], width: int, height: int) -> tuple[int, int, int, int]:
    """Shift and scale an integer box by a jitter view, clamped to (width, height)."""
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0)
    dx, dy, ds = view
    cx, cy = (x0 + x1) / 2 + dx * side, (y0 + y1) / 2 + dy * side
    hw, hh = (x1 - x0) * ds / 2, (y1 - y0) * ds / 2
    return int_box((cx - hw, cy - hh, cx + hw, cy + hh), width, height)


MAX_CROPS_PER_CALL = 64


def net_over_views(net: nn.Module, crops: Sequence[torch.Tensor]) -> torch.Tensor:
    """(views, faces, classes) logits of `net` on each view's crops: one call when all the
    views' crops together are at most MAX_CROPS_PER_CALL, else one call per view. A batch of
    32 faces x 5 views overflows the CPU caches (paper-cnn's forward+backward measured ~1.4x
    dearer per crop at 160 crops than at 32), while small batches are better whole (inception-
    resnet-v1 at 5 faces x 5 views: 1.2x dearer split by view). Outputs per face are the same."""
    if sum(len(c) for c in crops) <= MAX_CROPS_PER_CALL:
        return net(torch.cat(list(crops))).view(len(crops), len(crops[0]), -1)
    return torch.stack([net(c) for c in crops])


class CropModel(nn.Module):
    """net(crop_resize(x, boxes)): a model over packed face regions.

    `boxes` are the crop boxes in each region's own coordinates; `sizes` the regions' (h, w)
    (needed only with jitter views). With `views`, the logits are averaged over crops jittered
    by each view (expectation over transformations), so a cloak crafted through it survives the
    slightly different box that re-detection of the written file gives. `select(idx)` gives
    the same model for a subset of faces (attacks use it to skip faces already fooled).
    After a forward with views, `plain_logits` holds the un-jittered crop's logits (view 0):
    attacks stop early on a face only once both the average and the plain crop are fooled, so
    a face the average calls fooled while its own crop (what the judge sees) is not still moves.
    """

    plain_logits: torch.Tensor | None = None

    def __init__(self, net: nn.Module, boxes: Sequence[Sequence[int]], size: int | None = None,
                 views: Sequence[tuple[float, float, float]] | None = None,
                 sizes: Sequence[tuple[int, int]] | None = None):
        super().__init__()
        self.net = net
        self.boxes = [tuple(int(v) for v in b) for b in boxes]
        self.size = int(size or getattr(net, "input_size", 160))
        self.views = list(views) if views else []
        self.sizes = list(sizes) if sizes is not None else None
        if self.views and self.sizes is None:
            raise ValueError("jitter views need the regions' sizes")
        self._view_boxes = [
            [jitter_box(b, v, w, h) for b, (h, w) in zip(self.boxes, self.sizes)] for v in self.views
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.views:
            return self.net(crop_resize(x, self.boxes, self.size))
        logits = net_over_views(self.net, [crop_resize(x, vb, self.size) for vb in self._view_boxes])
        self.plain_logits = logits[0].detach() if self.views[0] == (0.0, 0.0, 1.0) else None
        return logits.mean(0)

    def select(self, idx: Sequence[int]) -> "CropModel":
        idx = [int(i) for i in idx]
        return CropModel(self.net, [self.boxes[i] for i in idx], self.size, self.views,
                         [self.sizes[i] for i in idx] if self.sizes is not None else None)


def nearest_to_centre(boxes: np.ndarray, width: int, height: int) -> int:
    """Index of the box whose centre is nearest the image centre."""
    c = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1)
    d = ((c - np.array([width / 2, height / 2])) ** 2).sum(1)
    return int(np.argmin(d))


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU between boxes a (N,4) and b (M,4)."""
    a = np.asarray(a, np.float32).reshape(-1, 4)
    b = np.asarray(b, np.float32).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)
