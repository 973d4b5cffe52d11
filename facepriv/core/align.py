"""Differentiable 5-point face alignment, pure torch (+ numpy for the fit).

From MTCNN's five landmarks (left eye, right eye, nose, left mouth corner, right mouth
corner; image pixel coordinates as facenet-pytorch returns them) a similarity transform
(Umeyama least squares: rotation, uniform scale, translation) maps the face onto a
template; the aligned crop is sampled with `F.affine_grid` / `F.grid_sample`, so gradients
reach the original photo's pixels (the attack variable of `facepriv.core.geometry`).

Coordinates: a pixel's centre is at its integer index (the OpenCV / ArcFace convention the
template was made with).

Templates: ``"arcface112"`` is the standard ArcFace 112x112 five-point template;
``"loose224"`` is the same face shrunk to 0.75 about the template's centre and drawn on a
224x224 frame (face about 0.75 of the frame), for models trained on looser crops
(faceres). A named template scales to any output size.

Aliasing: when the face is much larger than the output (a 600-px face sampled to 112),
bilinear grid_sample reads only 4 source pixels per output pixel and aliases. Each face's
source footprint is therefore first cut out (a small box around the output square mapped
back, plus a margin) and, when the transform shrinks by more than `AA_THRESHOLD`, shrunk
with ``F.interpolate(mode="bilinear", antialias=True)`` to about the output's scale; the
transform is adjusted to that smaller image and grid_sample then samples near 1:1. Both
steps are differentiable; cutting the footprint first also keeps large photos cheap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ARCFACE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
LOOSE_SCALE = 0.75
# ArcFace points shrunk to 0.75 about the 112 frame's centre, then drawn on 224.
LOOSE_224 = ((ARCFACE_112 - 55.5) * LOOSE_SCALE + 55.5) * 2.0 + 0.5

TEMPLATES = {"arcface112": (ARCFACE_112, 112), "loose224": (LOOSE_224, 224)}

AA_THRESHOLD = 1.25  # shrink the source first when one output pixel spans more than this many source pixels


def template(name_or_points: str | np.ndarray | None, size: int) -> np.ndarray:
    """Five template points (5,2) in pixel coordinates of a size x size output.

    A name ("arcface112", "loose224") is scaled to `size`; None picks arcface112 for sizes
    up to 160 and loose224 above; an array is used as given.
    """
    if name_or_points is None:
        name_or_points = "arcface112" if size <= 160 else "loose224"
    if isinstance(name_or_points, str):
        if name_or_points not in TEMPLATES:
            raise ValueError(f"unknown template {name_or_points!r}; choose one of {sorted(TEMPLATES)}")
        pts, ref = TEMPLATES[name_or_points]
        # scale about pixel edges: centre coordinate c maps to (c + 0.5) * k - 0.5
        k = size / ref
        return (pts + 0.5) * k - 0.5
    pts = np.asarray(name_or_points, dtype=np.float64)
    if pts.shape != (5, 2):
        raise ValueError(f"template must be (5,2), got {pts.shape}")
    return pts


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (Umeyama, no reflection) mapping points src (K,2) onto dst (K,2).

    Returns the 2x3 matrix M with dst ~= M @ [x, y, 1].
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    var_s = (s0**2).sum() / len(src)
    cov = d0.T @ s0 / len(src)
    u, sig, vt = np.linalg.svd(cov)
    e = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        e[1, 1] = -1
    r = u @ e @ vt
    scale = float((sig * np.diag(e)).sum() / max(var_s, 1e-12))
    m = np.zeros((2, 3))
    m[:, :2] = scale * r
    m[:, 2] = mu_d - m[:, :2] @ mu_s
    return m


def landmark_transforms(landmarks: np.ndarray, size: int, tmpl: str | np.ndarray | None = None) -> np.ndarray:
    """(N,5,2) landmarks -> (N,2,3) matrices mapping image pixels to output pixels."""
    lm = np.asarray(landmarks, dtype=np.float64).reshape(-1, 5, 2)
    dst = template(tmpl, size)
    return np.stack([similarity_transform(p, dst) for p in lm]) if len(lm) else np.zeros((0, 2, 3))


def _inv(m: np.ndarray) -> np.ndarray:
    a = np.vstack([m, [0.0, 0.0, 1.0]])
    return np.linalg.inv(a)[:2]


def _step(m: np.ndarray) -> float:
    """Source pixels per output pixel of `m` (2,3) (image px -> output px)."""
    return 1.0 / math.sqrt(max(abs(np.linalg.det(m[:, :2])), 1e-12))


def _footprint(m: np.ndarray, size: int, h: int, w: int) -> tuple[np.ndarray, float, tuple[int, int, int, int]]:
    """(output px -> image px (2,3), source px per output px, the output square's footprint in
    the image plus a margin, clipped: x0, y0, x1, y1)."""
    inv = _inv(m)  # output px -> image px
    corners = np.array([[-0.5, -0.5, 1], [size - 0.5, -0.5, 1], [-0.5, size - 0.5, 1], [size - 0.5, size - 0.5, 1]])
    src = corners @ inv.T
    step = _step(m)
    margin = 2.0 * max(step, 1.0) + 2.0
    x0 = int(np.clip(math.floor(src[:, 0].min() - margin), 0, w - 1))
    y0 = int(np.clip(math.floor(src[:, 1].min() - margin), 0, h - 1))
    x1 = int(np.clip(math.ceil(src[:, 0].max() + margin) + 1, x0 + 1, w))
    y1 = int(np.clip(math.ceil(src[:, 1].max() + margin) + 1, y0 + 1, h))
    return inv, step, (x0, y0, x1, y1)


def _theta(a: np.ndarray, size: int, ph: int, pw: int) -> np.ndarray:
    """affine_grid's theta (2,3) for `a` (output px -> source px, 3x3) from a ph x pw source."""
    # normalised output coords -> output px -> source px -> normalised source coords (align_corners=False)
    n_out = np.array([[size / 2, 0, (size - 1) / 2], [0, size / 2, (size - 1) / 2], [0, 0, 1.0]])
    n_in = np.array([[2 / pw, 0, 1 / pw - 1], [0, 2 / ph, 1 / ph - 1], [0, 0, 1.0]])
    return (n_in @ a @ n_out)[:2]


def warp(image: torch.Tensor, m: np.ndarray, size: int, antialias: bool = True) -> torch.Tensor:
    """Sample one aligned face (1,3,size,size) from image (3,H,W) or (1,3,H,W).

    `m` (2,3) maps image pixel coordinates to output pixel coordinates. Outside the image is
    zero. Differentiable with respect to `image`.
    """
    if image.dim() == 3:
        image = image.unsqueeze(0)
    _, _, h, w = image.shape
    m = np.asarray(m, dtype=np.float64)
    inv, step, (x0, y0, x1, y1) = _footprint(m, size, h, w)
    patch = image[:, :, y0:y1, x0:x1]
    # output px -> patch px
    a = np.vstack([inv, [0, 0, 1.0]])
    a = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1.0]]) @ a
    ph, pw = patch.shape[2], patch.shape[3]
    if antialias and step > AA_THRESHOLD:
        nh, nw = max(1, round(ph / step)), max(1, round(pw / step))
        patch = F.interpolate(patch, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
        kx, ky = pw / nw, ph / nh
        a = np.array([[1 / kx, 0, 0.5 / kx - 0.5], [0, 1 / ky, 0.5 / ky - 0.5], [0, 0, 1.0]]) @ a
        ph, pw = nh, nw
    th = torch.as_tensor(_theta(a, size, ph, pw), dtype=patch.dtype, device=patch.device).unsqueeze(0)
    grid = F.affine_grid(th, [1, patch.shape[1], size, size], align_corners=False)
    return F.grid_sample(patch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def warp_packed(x: torch.Tensor, ms: Sequence[np.ndarray], size: int,
                sizes: Sequence[tuple[int, int]] | None = None) -> torch.Tensor:
    """`warp` of each face of a packed batch (B,3,Hmax,Wmax) -> (B,3,size,size): face i from
    its region x[i, :, :h, :w] (`sizes`; default the whole frame) through `ms[i]`. The same
    values as a `warp` per face (to float rounding); the faces that need no antialiasing (one
    output pixel spans at most `AA_THRESHOLD` source pixels) are sampled in one `grid_sample`
    over the batch, reading zero outside each region as `warp` does, the others through `warp`."""
    b, c, hm, wm = x.shape
    if len(ms) != b:
        raise ValueError(f"{b} regions but {len(ms)} transforms")
    sizes = [(hm, wm)] * b if sizes is None else [tuple(int(v) for v in hw) for hw in sizes]
    faces = x.unbind(0)  # one unbind: its backward stacks the faces' gradients once
    thetas, direct, out = [], [], [None] * b
    for i, (m, (h, w)) in enumerate(zip(ms, sizes)):
        m = np.asarray(m, dtype=np.float64)
        if _step(m) > AA_THRESHOLD:
            out[i] = warp(faces[i][:, :h, :w], m, size)
        else:
            direct.append(i)
            thetas.append(_theta(np.vstack([_inv(m), [0, 0, 1.0]]), size, hm, wm))
    if direct:
        src = x if len(direct) == b else torch.stack([faces[i] for i in direct])
        if any(sizes[i] != (hm, wm) for i in direct):  # read zero outside each region, as warp does
            mask = torch.zeros((len(direct), 1, hm, wm), dtype=x.dtype, device=x.device)
            for k, i in enumerate(direct):
                mask[k, :, : sizes[i][0], : sizes[i][1]] = 1
            src = src * mask
        th = torch.as_tensor(np.stack(thetas), dtype=x.dtype, device=x.device)
        grid = F.affine_grid(th, [len(direct), c, size, size], align_corners=False)
        sampled = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if len(direct) == b:
            return sampled
        for k, i in enumerate(direct):
            out[i] = sampled[k : k + 1]
    return torch.cat(out, 0)


def align_faces(
    image: torch.Tensor, landmarks: np.ndarray, size: int, template: str | np.ndarray | None = None
) -> torch.Tensor:
    """Aligned faces (N,3,size,size) from one photo (3,H,W) in [0,1] and landmarks (N,5,2)."""
    ms = landmark_transforms(landmarks, size, template)
    if len(ms) == 0:
        return image.new_zeros((0, image.shape[0], size, size))
    return torch.cat([warp(image, m, size) for m in ms], 0)


class AlignModel(nn.Module):
    """net(aligned faces): a model over packed face regions (B,3,Hmax,Wmax) in [0,1].

    `transforms` are either landmarks (B,5,2) or matrices (B,2,3) (region pixels -> output
    pixels), in each region's own coordinates. `size` defaults to ``net.input_size`` and
    the template to ``net.crop`` (else chosen by size). `sizes` (the regions' (h, w)): each
    face is sampled from its own region only, never from the zero padding of a larger one,
    so its aligned crop does not depend on what it is packed with (without `sizes`, a crop
    reaching past its region reads the padding: the same zeros, but a downscaled crop's
    antialiasing footprint then differs). `select(idx)` gives the same model for a subset of
    faces, like `geometry.CropModel`.
    """

    def __init__(self, net: nn.Module, transforms: np.ndarray | Sequence, size: int | None = None,
                 template: str | np.ndarray | None = None, sizes: Sequence[tuple[int, int]] | None = None):
        super().__init__()
        self.net = net
        self.sizes = [tuple(int(v) for v in hw) for hw in sizes] if sizes is not None else None
        self.size = int(size or getattr(net, "input_size", 112))
        self.template = template if template is not None else getattr(net, "crop", None)
        t = np.asarray(transforms, dtype=np.float64)
        if t.ndim == 3 and t.shape[1:] == (2, 3):
            self.matrices = t
        elif t.ndim == 3 and t.shape[1:] == (5, 2):
            self.matrices = landmark_transforms(t, self.size, self.template)
        elif t.size == 0:
            self.matrices = np.zeros((0, 2, 3))
        else:
            raise ValueError(f"transforms must be landmarks (B,5,2) or matrices (B,2,3), got {t.shape}")

    def align(self, x: torch.Tensor) -> torch.Tensor:
        return warp_packed(x, self.matrices, self.size, self.sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.align(x))

    def select(self, idx: Sequence[int]) -> "AlignModel":
        idx = [int(i) for i in idx]
        return AlignModel(self.net, self.matrices[idx].reshape(-1, 2, 3), self.size, self.template,
                          [self.sizes[i] for i in idx] if self.sizes is not None else None)


def unwarp(v: torch.Tensor, m: np.ndarray, height: int, width: int, antialias: bool = True) -> torch.Tensor:
    """A template-frame image v (C,S,S) drawn into a face's region (C,height,width): the inverse of
    `warp`. `m` (2,3) maps region pixels to template pixels (`landmark_transforms`); each region
    pixel takes v bilinearly sampled where `m` sends it, zero where that falls outside the
    template. A convex combination of v's pixels, so max|out| <= max|v|. When the face is smaller
    in the region than the template (one region pixel spans more than `AA_THRESHOLD` template
    pixels), v is first shrunk (antialiased) to about the region's scale. Differentiable in v."""
    s = v.shape[-1]
    m = np.asarray(m, dtype=np.float64)
    a = np.vstack([m, [0.0, 0.0, 1.0]])  # region px -> template px
    src = v[None]
    step = math.sqrt(max(abs(np.linalg.det(m[:, :2])), 1e-12))  # template px per region px
    if antialias and step > AA_THRESHOLD:
        n = max(1, round(s / step))
        src = F.interpolate(src, size=(n, n), mode="bilinear", antialias=True, align_corners=False)
        k = s / n
        a = np.array([[1 / k, 0, 0.5 / k - 0.5], [0, 1 / k, 0.5 / k - 0.5], [0, 0, 1.0]]) @ a
        s = n
    n_out = np.array([[width / 2, 0, (width - 1) / 2], [0, height / 2, (height - 1) / 2], [0, 0, 1.0]])
    n_in = np.array([[2 / s, 0, 1 / s - 1], [0, 2 / s, 1 / s - 1], [0, 0, 1.0]])
    theta = torch.as_tensor((n_in @ a @ n_out)[:2], dtype=v.dtype, device=v.device).unsqueeze(0)
    grid = F.affine_grid(theta, [1, v.shape[0], height, width], align_corners=False)
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
