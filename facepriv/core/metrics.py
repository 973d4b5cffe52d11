"""Image-quality and perturbation metrics, pure numpy/torch: PSNR, SSIM, SSIMULACRA 2, and
the three of them on a face's quality region (`face_quality`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from facepriv.core import geometry


def changed_box(a: np.ndarray, b: np.ndarray, pad: int = 0) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1) bounding the pixels where a and b differ, grown by pad and clamped;
    None when they are equal. A cloak changes only face regions, so the metrics below work
    on this box instead of the whole photo (a 14-megapixel photo with a few faces costs the
    faces, not the photo) and give the same numbers (PSNR exactly; SSIM to ~1e-7, the rounding
    of a float32 mean over the whole map)."""
    diff = a != b
    if diff.ndim == 3:
        diff = diff.any(2)
    rows, cols = np.flatnonzero(diff.any(1)), np.flatnonzero(diff.any(0))
    if len(rows) == 0:
        return None
    h, w = diff.shape
    return (max(0, int(rows[0]) - pad), min(h, int(rows[-1]) + 1 + pad),
            max(0, int(cols[0]) - pad), min(w, int(cols[-1]) + 1 + pad))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two uint8 images of equal shape (inf when identical)."""
    box = changed_box(a, b)
    if box is None:
        return math.inf
    y0, y1, x0, x1 = box  # outside the box the difference is 0: the sum is exact either way
    d = np.subtract(a[y0:y1, x0:x1], b[y0:y1, x0:x1], dtype=np.int32)
    d *= d  # <= 255**2: exact in int32, summed exactly in int64 (6x faster than float64 copies)
    mse = int(d.sum(dtype=np.int64)) / a.size
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def _gauss(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


_WX = _gauss().view(1, 1, 1, -1).repeat(5, 1, 1, 1)  # separable Gaussian, one filter per moment
_WY = _gauss().view(1, 1, -1, 1).repeat(5, 1, 1, 1)
SSIM_TILE = 256  # output rows/cols per tile of the SSIM map


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM (Wang et al. 2004, Gaussian window 11/1.5) on luma, for uint8 RGB or gray images."""

    def luma(x: np.ndarray) -> torch.Tensor:
        x = x.astype(np.float32)
        if x.ndim == 3:
            x = x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114
        return torch.from_numpy(x)[None, None]

    if min(a.shape[:2]) < 11:
        return 1.0 if np.array_equal(a, b) else float(_ssim_global(luma(a), luma(b)))
    # Where a window holds no changed pixel, x == y there and its SSIM is exactly 1 in float
    # arithmetic too (2*mx*my == mx*mx + my*my, 2*sxy == sxx + syy bit for bit); so the map is
    # computed tile by tile, only for the tiles whose windows touch changed pixels (a cloak
    # changes face regions), and the other windows count as 1.
    box = changed_box(a, b, pad=10)
    if box is None:
        return 1.0
    changed = a != b
    if changed.ndim == 3:
        changed = changed.any(2)
    h, w = a.shape[0] - 10, a.shape[1] - 10  # the map's size (valid windows)
    total, counted = 0.0, 0
    t = SSIM_TILE
    for i0 in range(max(0, box[0]), min(h, box[1]), t):
        for j0 in range(max(0, box[2]), min(w, box[3]), t):
            i1, j1 = min(h, i0 + t), min(w, j0 + t)
            if not changed[i0 : i1 + 10, j0 : j1 + 10].any():
                continue
            m = _ssim_map(luma(a[i0 : i1 + 10, j0 : j1 + 10]), luma(b[i0 : i1 + 10, j0 : j1 + 10]))
            total += float(m.double().sum())
            counted += m.numel()
    n_total = h * w
    return (total + (n_total - counted)) / n_total


def _ssim_map(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The SSIM map over the valid 11x11 windows of two (1,1,H,W) luma tensors."""
    stats = torch.cat([x, y, x * x, y * y, x * y], 1)  # one grouped blur for the five moments
    mx, my, bxx, byy, bxy = F.conv2d(F.conv2d(stats, _WX, groups=5), _WY, groups=5)[0]
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    sxx, syy, sxy = bxx - mx * mx, byy - my * my, bxy - mx * my
    return ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))


def _ssim_global(x: torch.Tensor, y: torch.Tensor) -> float:
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = x.mean(), y.mean()
    sxx, syy = x.var(unbiased=False), y.var(unbiased=False)
    sxy = ((x - mx) * (y - my)).mean()
    return float(((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2)))


# ----------------------------------------------------------------------------- SSIMULACRA 2


def _s2_tensor(a: np.ndarray) -> torch.Tensor:
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, 2)
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].double() / 255.0


def ssimulacra2(ref: np.ndarray, dist: np.ndarray) -> float:
    """SSIMULACRA 2 (Sneyers, libjxl tools/ssimulacra2) of `dist` against `ref`, uint8 RGB (or
    gray) images of equal shape: 100 = identical, ~90 visually lossless, ~70 high quality, ~50
    medium, lower = worse (can go negative). The computation is `facepriv.core.perceptual`'s,
    equal to the PyPI package `ssimulacra2` 0.3.0 (BSD-3), the reference, to float precision
    (tests/test_perceptual.py), small images included: like the reference (and libjxl), an
    image under 256 px a side has fewer than six scales and its weights are walked in order,
    so face crops score as the package scores them (a JPEG q95 face crop ~88-91, random +-4
    noise ~66-73). `Ssimulacra2Ref(ref)` scores many candidates against one reference."""
    return Ssimulacra2Ref(ref).score(dist)


class Ssimulacra2Ref:
    """A reference image prepared for `ssimulacra2`: converted, and its half of the computation
    done (`perceptual.Reference`), once, at the first score."""

    def __init__(self, ref: np.ndarray):
        self.ref = ref
        self.shape = ref.shape
        self._ref = None

    def score(self, dist: np.ndarray) -> float:
        from facepriv.core.perceptual import Reference

        if dist.shape != self.shape:
            raise ValueError(f"ssimulacra2: shapes differ: {self.shape} vs {dist.shape}")
        if np.array_equal(self.ref, dist):
            return 100.0
        if self._ref is None:
            self._ref = Reference(_s2_tensor(self.ref))
        return float(self._ref.score(_s2_tensor(dist)))


# ----------------------------------------------------------------------------- face regions

FACE_METRICS = ("psnr", "ssim", "ssimulacra2")
_METRIC = {"psnr": psnr, "ssim": ssim, "ssimulacra2": ssimulacra2}


def region_quality(orig: np.ndarray, written: np.ndarray, metrics: Sequence[str] = FACE_METRICS) -> dict[str, float]:
    """{metric: value} of two uint8 crops (the same region of the original and the written photo)."""
    return {m: float(_METRIC[m](orig, written)) for m in metrics}


def face_quality(orig: np.ndarray, written: np.ndarray, box: Sequence[float],
                 metrics: Sequence[str] = FACE_METRICS) -> dict[str, float]:
    """PSNR, SSIM and SSIMULACRA 2 of one face: its quality region (`geometry.quality_region`:
    the detector box plus QUALITY_MARGIN of its side each side, clipped) of the written photo
    against the same region of the original, both full uint8 photos of equal shape."""
    h, w = orig.shape[:2]
    x0, y0, x1, y1 = geometry.quality_region(box, w, h)
    return region_quality(orig[y0:y1, x0:x1], written[y0:y1, x0:x1], metrics)


def linf_l2(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """L-inf and L2 norms of b - a in 0-255 units."""
    d = b.astype(np.float64) - a.astype(np.float64)
    return float(np.abs(d).max(initial=0.0)), float(np.sqrt((d**2).sum()))


def rate(num: int, den: int) -> float | None:
    return None if den == 0 else num / den
