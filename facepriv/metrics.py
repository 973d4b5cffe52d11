"""Image-quality and perturbation metrics, pure numpy/torch: PSNR, SSIM, SSIMULACRA 2, and
the three of them on a face's quality region (`face_quality`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import geometry


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

S2_MIN_SIDE = 225  # the smallest side whose 6th scale (ceil-halved 5 times) still has the 8 px libjxl needs
_S2_RADIUS = 5  # the package's Gaussian (sigma 1.5, truncate 3.33): int(3.33 * 1.5 + 0.5) taps each side
_S2: dict[str, torch.Tensor] = {}


def _s2_constants() -> dict[str, torch.Tensor]:
    """The reference's constants, taken from the PyPI package `ssimulacra2` itself (opsin
    absorbance matrix and bias, the 108 weights), plus the sRGB -> linear table and the blur."""
    if not _S2:
        from ssimulacra2 import ssimulacra2 as ref

        d = torch.float64
        _S2["m"] = torch.tensor(ref.kOpsinAbsorbanceMatrix, dtype=d).view(3, 3)
        _S2["bias"] = torch.tensor(ref.kOpsinAbsorbanceBias, dtype=d).view(3, 1, 1)
        _S2["cbrt_bias"] = torch.tensor(np.cbrt(ref.kOpsinAbsorbanceBias), dtype=d).view(3, 1, 1)
        _S2["w"] = torch.tensor(ref.weights, dtype=d).view(3, 6, 2, 3)  # channel, scale, norm, map
        _S2["lut"] = torch.from_numpy(ref.srgb_to_linear(np.arange(256, dtype=np.float64)))
        x = torch.arange(-_S2_RADIUS, _S2_RADIUS + 1, dtype=d)
        g = torch.exp(-0.5 * x**2 / 1.5**2)
        _S2["g"] = g / g.sum()
    return _S2


def _s2_xyb(lin: torch.Tensor, c: dict[str, torch.Tensor]) -> torch.Tensor:
    """Linear RGB (3,H,W) -> XYB made positive (libjxl's MakePositiveXYB)."""
    m = torch.einsum("ij,jhw->ihw", c["m"], lin) + c["bias"]
    m = m.clamp_min(0).pow(1 / 3) - c["cbrt_bias"]
    x, y, b = 0.5 * (m[0] - m[1]), 0.5 * (m[0] + m[1]), m[2]
    return torch.stack([x * 14 + 0.42, y + 0.01, (b - y) + 0.55])


def _s2_blur(p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The package's blur of planes (N,H,W): zeros beyond the left/right edges, mirror
    (half-sample) beyond the top/bottom (its arrays are transposed, so its 'vertical' zero
    padding falls on the image's columns). Shifted sums with the kernel's symmetry (torch's
    conv2d with a 1x11 kernel is ~3x slower on CPU)."""
    r = _S2_RADIUS
    h, w = p.shape[1:]
    q = F.pad(p, (r, r))
    out = q[:, :, r : r + w] * g[r]
    for k in range(1, r + 1):
        out = out + (q[:, :, r - k : r - k + w] + q[:, :, r + k : r + k + w]) * g[r + k]
    q = torch.cat([out[:, :r].flip(1), out, out[:, -r:].flip(1)], 1)
    out = q[:, r : r + h] * g[r]
    for k in range(1, r + 1):
        out = out + (q[:, r - k : r - k + h] + q[:, r + k : r + k + h]) * g[r + k]
    return out


def _s2_down(lin: torch.Tensor) -> torch.Tensor:
    """2x2 box downsampling; a block cut by the right/bottom edge averages the pixels it has."""
    _, h, w = lin.shape
    pad = (0, w % 2, 0, h % 2)
    s = F.avg_pool2d(F.pad(lin, pad)[None], 2, divisor_override=1)[0]
    n = F.avg_pool2d(F.pad(torch.ones_like(lin[:1]), pad)[None], 2, divisor_override=1)[0]
    return s / n


def _s2_norms(m: torch.Tensor) -> torch.Tensor:
    """(C,h,w) error maps -> (C, 2): their mean and 4-norm."""
    m = m.flatten(1)
    return torch.stack([m.mean(1), (m**4).mean(1) ** 0.25], 1)


def ssimulacra2(ref: np.ndarray, dist: np.ndarray) -> float:
    """SSIMULACRA 2 (Sneyers, libjxl tools/ssimulacra2, April 2023 weights) of `dist` against
    `ref`, uint8 RGB (or gray) images of equal shape: 100 = identical, ~90 visually lossless,
    ~70 high quality, ~50 medium, lower = worse (can go negative). `Ssimulacra2Ref(ref)` scores
    many candidates against one reference without redoing the reference's half of the work.

    The PyPI package `ssimulacra2` 0.3.0 (BSD-3) is the reference: this is the same
    computation vectorised in torch float64 (its constants are read from the package);
    tests/test_quality.py checks it equals the package (to 1e-9) on images of at least
    S2_MIN_SIDE px a side.

    Small images. The reference stops at the first scale with a side under 8 px and then
    applies the remaining weights in sequence, so below 225 px the weights fitted for one
    channel and scale land on another (libjxl does the same), and an image under 8 px scores
    100 whatever the distortion. Here an image with a side under S2_MIN_SIDE is first padded
    on its right and bottom by mirroring (both images, each with its own pixels) up to that
    side, so all six scales exist and carry their own weights, and every error map is
    averaged over the image's own footprint at that scale only (the padding is context for
    the blurs and the coarse scales, never counted as error-free pixels)."""
    return Ssimulacra2Ref(ref).score(dist)


class Ssimulacra2Ref:
    """A reference image prepared for `ssimulacra2`: its XYB pyramid and blurred planes."""

    def __init__(self, ref: np.ndarray):
        self.ref = ref
        self.shape = ref.shape
        self.c = c = _s2_constants()
        h, w = ref.shape[:2]
        self.pad = ((0, max(0, S2_MIN_SIDE - h)), (0, max(0, S2_MIN_SIDE - w)), (0, 0))
        lin = self._linear(ref)
        self.scales = []  # per scale: (h, w, hh, ww, xyb, mu, sigma^2) of the reference
        for scale in range(6):
            if scale:
                lin = _s2_down(lin)
                h, w = (h + 1) // 2, (w + 1) // 2
            # the maps are averaged over [:h, :w] and their blurs reach _S2_RADIUS px further,
            # so the rest of the padding (context for the coarser scales) is not blurred here
            hh, ww = min(lin.shape[1], h + _S2_RADIUS), min(lin.shape[2], w + _S2_RADIUS)
            i1 = _s2_xyb(lin[:, :hh, :ww], c)
            s11, mu1 = _s2_blur(torch.cat([i1 * i1, i1]), c["g"]).split(3)
            self.scales.append((h, w, hh, ww, i1, mu1, s11))

    def _linear(self, a: np.ndarray) -> torch.Tensor:
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, 2)
        if self.pad[0][1] or self.pad[1][1]:
            a = np.pad(a, self.pad, mode="symmetric")
        return self.c["lut"][torch.from_numpy(np.ascontiguousarray(a)).long()].permute(2, 0, 1)

    def score(self, dist: np.ndarray) -> float:
        if dist.shape != self.shape:
            raise ValueError(f"ssimulacra2: shapes differ: {self.shape} vs {dist.shape}")
        if np.array_equal(self.ref, dist):
            return 100.0
        c = self.c
        lin = self._linear(dist)
        terms = []  # per scale: (3 channels, 2 norms, 3 maps)
        for scale, (h, w, hh, ww, i1, mu1, s11) in enumerate(self.scales):
            if scale:
                lin = _s2_down(lin)
            i2 = _s2_xyb(lin[:, :hh, :ww], c)
            s22, s12, mu2 = _s2_blur(torch.cat([i2 * i2, i1 * i2, i2]), c["g"]).split(3)
            num_m = 1.0 - (mu1 - mu2) ** 2
            num_s = 2 * (s12 - mu1 * mu2) + 0.0009
            den_s = (s11 - mu1 * mu1) + (s22 - mu2 * mu2) + 0.0009
            d_ssim = (1.0 - num_m * num_s / den_s).clamp_min(0)
            d_edge = (1.0 + (i2 - mu2).abs()) / (1.0 + (i1 - mu1).abs()) - 1.0
            maps = [d_ssim, d_edge.clamp_min(0), (-d_edge).clamp_min(0)]  # ssim, ringing, blurring
            terms.append(torch.stack([_s2_norms(m[:, :h, :w]) for m in maps], 2))
        x = float((c["w"] * torch.stack(terms, 1).abs()).sum()) * 0.9562382616834844
        x = 2.326765642916932 * x - 0.020884521182843837 * x * x + 6.248496625763138e-05 * x * x * x
        return 100.0 - 10.0 * x**0.6276336467831387 if x > 0 else 100.0


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
