"""Image-quality and perturbation metrics, pure numpy/torch."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two uint8 images of equal shape (inf when identical)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def _gauss(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM (Wang et al. 2004, Gaussian window 11/1.5) on luma, for uint8 RGB or gray images."""

    def luma(x: np.ndarray) -> torch.Tensor:
        x = x.astype(np.float32)
        if x.ndim == 3:
            x = x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114
        return torch.from_numpy(x)[None, None]

    x, y = luma(a), luma(b)
    if min(x.shape[-2:]) < 11:
        return 1.0 if np.array_equal(a, b) else float(_ssim_global(x, y))
    g = _gauss()
    wx, wy = g.view(1, 1, 1, -1), g.view(1, 1, -1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, wx), wy)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return float(s.mean())


def _ssim_global(x: torch.Tensor, y: torch.Tensor) -> float:
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = x.mean(), y.mean()
    sxx, syy = x.var(unbiased=False), y.var(unbiased=False)
    sxy = ((x - mx) * (y - my)).mean()
    return float(((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2)))


def linf_l2(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """L-inf and L2 norms of b - a in 0-255 units."""
    d = b.astype(np.float64) - a.astype(np.float64)
    return float(np.abs(d).max(initial=0.0)), float(np.sqrt((d**2).sum()))


def rate(num: int, den: int) -> float | None:
    return None if den == 0 else num / den
