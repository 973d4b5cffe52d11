"""A differentiable SSIMULACRA2 in torch, for quality terms inside an attack's loss.

SSIMULACRA2 (Cloudinary / libjxl; the PyPI ``ssimulacra2`` package is the reference the
project measures with, `facepriv.core.metrics`) compares two sRGB images in the XYB colour space
at six scales (each half the size of the one before): an SSIM error map (1 - SSIM, without
the luminance term's denominator) and two edge maps - *artifact* (the distorted image has
detail where the original is smooth) and *detail lost* - each pooled with an L1 and an L4
norm per channel, weighted and mapped to a score: 100 = identical, 90 visually lossless,
70 high quality, 50 medium, 30 low; it can go negative.

This port follows the reference step by step (sRGB -> linear -> opsin absorbance -> cube
root -> XYB made positive; Gaussian blur sigma 1.5; 2x2 box downsampling in linear RGB;
the same 108 weights and the final polynomial), vectorised over a batch of equally sized
images, with the reference's borders (the blur pads columns with zeros and mirrors rows;
a last odd row/column is averaged on its own, as ``avg_pool2d(ceil_mode=True)`` does). It
agrees with the reference to float precision (tests/test_perceptual.py); the budget itself
is checked with the reference on the written file.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

NUM_SCALES = 6
_C2 = 0.0009
_OPSIN = torch.tensor([[0.30, 0.622, 0.078], [0.23, 0.692, 0.078],
                       [0.24342268924547819, 0.20476744424496821, 1.0 - 0.24342268924547819 - 0.20476744424496821]],
                      dtype=torch.float64)
_BIAS = 0.0037930732552754493

# weights[i] in the reference's order: channel, scale, norm (L1, L4), then (ssim, artifact, detail lost)
_WEIGHTS = [
    0.0, 0.0007376606707406586, 0.0, 0.0, 0.0007793481682867309, 0.0, 0.0, 0.0004371155730107379, 0.0,
    1.1041726426657346, 0.00066284834129271, 0.00015231632783718752, 0.0, 0.0016406437456599754, 0.0,
    1.8422455520539298, 11.441172603757666, 0.0, 0.0007989109436015163, 0.000176816438078653, 0.0,
    1.8787594979546387, 10.94906990605142, 0.0, 0.0007289346991508072, 0.9677937080626833, 0.0,
    0.00014003424285435884, 0.9981766977854967, 0.00031949755934435053, 0.0004550992113792063, 0.0, 0.0,
    0.0013648766163243398, 0.0, 0.0, 0.0, 0.0, 0.0, 7.466890328078848, 0.0, 17.445833984131262,
    0.0006235601634041466, 0.0, 0.0, 6.683678146179332, 0.00037724407979611296, 1.027889937768264,
    225.20515300849274, 0.0, 0.0, 19.213238186143016, 0.0011401524586618361, 0.001237755635509985,
    176.39317598450694, 0.0, 0.0, 24.43300999870476, 0.28520802612117757, 0.0004485436923833408, 0.0, 0.0, 0.0,
    34.77906344483772, 44.835625328877896, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0008680556573291698, 0.0,
    0.0, 0.0, 0.0, 0.0, 0.0005313191874358747, 0.0, 0.00016533814161379112, 0.0, 0.0, 0.0, 0.0, 0.0,
    0.0004179171803251336, 0.0017290828234722833, 0.0, 0.0020827005846636437, 0.0, 0.0, 8.826982764996862,
    23.19243343998926, 0.0, 95.1080498811086, 0.9863978034400682, 0.9834382792465353, 0.0012286405048278493,
    171.2667255897307, 0.9807858872435379, 0.0, 0.0, 0.0, 0.0005130064588990679, 0.0, 0.00010854057858411537,
]


def _srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x <= 0.04045, x / 12.92, ((x.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4)


def _xyb(lin: torch.Tensor) -> torch.Tensor:
    """Linear RGB (B,3,H,W) -> positive XYB as the reference's make_positive_xyb leaves it."""
    m = torch.einsum("ij,bjhw->bihw", _OPSIN.to(lin), lin) + _BIAS
    cb = math.pow(_BIAS, 1 / 3)
    # cube root with a finite gradient at 0 (the reference clamps negatives to 0 first)
    m = m.clamp_min(1e-9).pow(1 / 3) - cb
    x = 0.5 * (m[:, 0] - m[:, 1])
    y = 0.5 * (m[:, 0] + m[:, 1])
    b = m[:, 2]
    return torch.stack([x * 14.0 + 0.42, y + 0.01, (b - y) + 0.55], 1)


def _kernel(sigma: float = 1.5) -> torch.Tensor:
    r = int(3.33 * sigma + 0.5)  # scipy's radius for truncate=3.33
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    return g / g.sum()


def _blur(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    c, r = x.shape[1], (len(k) - 1) // 2
    kh = k.to(x).view(1, 1, 1, -1).expand(c, 1, 1, -1)
    kv = k.to(x).view(1, 1, -1, 1).expand(c, 1, -1, 1)
    # as the reference (whose XYB planes are transposed, W x H): rows mirrored with the edge
    # pixel repeated (scipy's "reflect"), columns padded with zeros
    x = torch.cat([x[..., :r, :].flip(-2), x, x[..., -r:, :].flip(-2)], -2)
    x = F.conv2d(x, kv, groups=c)
    return F.conv2d(F.pad(x, (r, r, 0, 0)), kh, groups=c)


MATMUL_MAX = 192  # images up to this side blur as two small matrix products (fewer, faster ops than conv)


def _blur_matrices(h: int, w: int, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`_blur` as matrices: blur(x) = mv @ x @ mht, the borders (rows mirrored, columns zero-padded) folded in."""
    mv, mht = _blur_matrices_np(h, w, tuple(k.tolist()))
    return torch.tensor(mv, dtype=k.dtype), torch.tensor(mht, dtype=k.dtype)


@functools.lru_cache(maxsize=512)
def _blur_matrices_np(h: int, w: int, kk: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The matrices of `_blur_matrices` (float64, read-only), built once per (h, w, kernel): every
    face of a size shares them (each SSIMULACRA 2 reference and budget region used to rebuild them)."""
    r = (len(kk) - 1) // 2
    k = np.asarray(kk, np.float64)
    t = np.arange(2 * r + 1)
    i = np.arange(h)[:, None]
    p = i + t[None, :] - r  # row of the padded image, in the original's indices
    src = np.where(p < 0, -1 - p, np.where(p >= h, 2 * h - 1 - p, p))
    mv = np.zeros((h, h))
    np.add.at(mv, (np.broadcast_to(i, src.shape), src), np.broadcast_to(k, src.shape))
    j = np.arange(w)[:, None]
    q = j + t[None, :] - r
    ok = (q >= 0) & (q < w)
    mh = np.zeros((w, w))
    np.add.at(mh, (np.broadcast_to(j, q.shape)[ok], q[ok]), np.broadcast_to(k, q.shape)[ok])
    mht = np.ascontiguousarray(mh.T)
    mv.flags.writeable = mht.flags.writeable = False
    return mv, mht


class _Blur:
    """The blur of one scale: matrices for small images, else the convolutions."""

    def __init__(self, h: int, w: int, k: torch.Tensor, dtype: torch.dtype, device):
        self.k = k
        self.mats = None
        if max(h, w) <= MATMUL_MAX:
            mv, mht = _blur_matrices(h, w, k)
            self.mats = (mv.to(dtype=dtype, device=device), mht.to(dtype=dtype, device=device))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.mats is None:
            return _blur(x, self.k)
        mv, mht = self.mats
        return torch.matmul(torch.matmul(mv, x), mht)


def _norms(d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(L1 mean, L4 norm) per image and channel: (B,3) each."""
    l1 = d.mean((2, 3))
    m4 = (d**4).mean((2, 3))
    tiny = 1e-300 if m4.dtype == torch.float64 else 1e-30
    l4 = torch.where(m4 > 0, m4.clamp_min(tiny).pow(0.25), torch.zeros_like(m4))  # 0 (and its gradient) at 0
    return l1, l4


def ssimulacra2(ref: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
    """SSIMULACRA2 of `dist` against `ref`, (B,3,H,W) sRGB in [0, 1] -> (B,) scores.
    Differentiable in both (float64 inside for the small SSIM denominators)."""
    if ref.shape != dist.shape:
        raise ValueError(f"ssimulacra2 takes two (B,3,H,W) tensors of one shape, got {ref.shape} and {dist.shape}")
    return Reference(ref).score(dist)


class Reference:
    """The reference's half of SSIMULACRA2, computed once (per scale: its XYB planes, their
    blurred means, variances and edge terms), for scoring many candidates against one
    reference: `Reference(ref).score(dist)` is `ssimulacra2(ref, dist)`, the same operations on
    the same values (bit for bit), without redoing the reference's side each time (an attack
    scores every step against the same original; the budget search every candidate scale).

    `precision`: the dtype inside (float64, the default, agrees with the reference to float
    precision; float32 is ~1.3-1.6x faster on a CPU and agrees to ~0.01 of a point, enough
    for steering an attack's loss - the floors themselves are always checked in float64 / the
    reference on the written file)."""

    def __init__(self, ref: torch.Tensor, precision: torch.dtype = torch.float64):
        if ref.dim() != 4 or ref.shape[1] != 3:
            raise ValueError(f"ssimulacra2 takes (B,3,H,W) tensors, got {ref.shape}")
        self.shape, self.dtype, self.device = ref.shape, ref.dtype, ref.device
        self.precision = precision
        self.k = _kernel()
        l1 = _srgb_to_linear(ref.to(precision))
        self.scales: list[tuple[torch.Tensor, ...]] = []  # per scale: i1, mu1, its variance, 1 + |i1 - mu1|
        self.blurs: list[_Blur] = []
        for scale in range(NUM_SCALES):
            if l1.shape[2] < 8 or l1.shape[3] < 8:
                break
            i1 = _xyb(l1)
            blur = _Blur(i1.shape[2], i1.shape[3], self.k, precision, i1.device)
            mu1, s11 = blur(torch.cat([i1, i1 * i1], 1)).split(3, 1)
            self.blurs.append(blur)
            self.scales.append((i1, mu1, s11 - mu1 * mu1, 1.0 + (i1 - mu1).abs()))
            if scale < NUM_SCALES - 1:
                l1 = F.avg_pool2d(l1, 2, ceil_mode=True)

    def score(self, dist: torch.Tensor) -> torch.Tensor:
        """SSIMULACRA2 of `dist` (the reference's shape) against the reference: (B,) scores."""
        if dist.shape != self.shape:
            raise ValueError(f"ssimulacra2 takes two (B,3,H,W) tensors of one shape, got {self.shape} and {dist.shape}")
        if not self.scales:
            return torch.full((self.shape[0],), 100.0, dtype=self.dtype, device=self.device)
        l2 = _srgb_to_linear(dist.to(self.precision))
        per_scale = []  # per scale: (B, 3 channels, 2 norms, 3 kinds)
        for scale, ((i1, mu1, var1, edge1), blur) in enumerate(zip(self.scales, self.blurs)):
            i2 = _xyb(l2)
            mu2, s22, s12 = blur(torch.cat([i2, i2 * i2, i1 * i2], 1)).split(3, 1)  # three blurs in one
            num_m = 1.0 - (mu1 - mu2) ** 2
            num_s = 2.0 * (s12 - mu1 * mu2) + _C2
            den_s = var1 + (s22 - mu2 * mu2) + _C2
            d = (1.0 - num_m * num_s / den_s).clamp_min(0.0)
            ratio = (1.0 + (i2 - mu2).abs()) / edge1 - 1.0
            kinds = [_norms(d), _norms(ratio.clamp_min(0.0)), _norms((-ratio).clamp_min(0.0))]
            # (B,3,2 norms,3 kinds)
            per_scale.append(torch.stack([torch.stack([kd[0], kd[1]], -1) for kd in kinds], -1))
            if scale < len(self.scales) - 1:
                l2 = F.avg_pool2d(l2, 2, ceil_mode=True)
        # the reference's order: channel, scale, norm, kind
        v = torch.stack(per_scale, 2)  # (B, 3, S, 2, 3)
        w = _weights_for(len(per_scale), self.device).to(self.precision)
        s = (v.abs() * w).sum((1, 2, 3, 4)) * 0.9562382616834844
        s = 2.326765642916932 * s - 0.020884521182843837 * s * s + 6.248496625763138e-05 * s * s * s
        out = torch.where(s > 0, 100.0 - 10.0 * s.clamp_min(1e-12).pow(0.6276336467831387), torch.full_like(s, 100.0))
        return out.to(self.dtype)


def _weights_for(n_scales: int, device) -> torch.Tensor:
    """The reference walks the weights in order with as many scales as the image had (a small
    image uses the first 3 * n * 6 weights, as it does)."""
    return torch.tensor(_WEIGHTS[: 3 * n_scales * 6], dtype=torch.float64, device=device).view(3, n_scales, 2, 3)
