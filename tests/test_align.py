"""facepriv.core.align: the similarity fit maps landmarks onto the template, the warp puts image
points where the transform says, gradients reach the photo's pixels, an identity-like
case reproduces a plain crop, large faces are antialiased, AlignModel fits the geometry
conventions (packed regions, select)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facepriv.core.align import (
    ARCFACE_112,
    AlignModel,
    align_faces,
    landmark_transforms,
    similarity_transform,
    template,
    warp,
    warp_packed,
)

RNG = np.random.default_rng(1)


def _similar(points: np.ndarray, scale: float, angle_deg: float, shift) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    r = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return points @ (scale * r).T + np.asarray(shift)


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:, :2].T + m[:, 2]


def test_exact_similarity_maps_landmarks_onto_template():
    lm = _similar(ARCFACE_112, 2.7, 17.0, (40.0, -12.0))
    m = similarity_transform(lm, ARCFACE_112)
    assert np.abs(_apply(m, lm) - ARCFACE_112).max() < 1e-9
    # a similarity: equal singular values, no reflection
    sv = np.linalg.svd(m[:, :2], compute_uv=False)
    assert abs(sv[0] - sv[1]) < 1e-9 and np.linalg.det(m[:, :2]) > 0
    assert abs(sv[0] - 1 / 2.7) < 1e-9


def test_noisy_fit_is_the_least_squares_similarity():
    lm = _similar(ARCFACE_112, 1.3, -8.0, (5.0, 9.0)) + RNG.normal(0, 1.5, (5, 2))
    m = similarity_transform(lm, ARCFACE_112)
    # independent reference: linear least squares in (a, b, tx, ty), M = [[a,-b,tx],[b,a,ty]]
    rows, rhs = [], []
    for (x, y), (u, v) in zip(lm, ARCFACE_112):
        rows += [[x, -y, 1, 0], [y, x, 0, 1]]
        rhs += [u, v]
    a, b, tx, ty = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)[0]
    assert np.allclose(m, [[a, -b, tx], [b, a, ty]], atol=1e-8)


def test_templates():
    assert np.allclose(template("arcface112", 112), ARCFACE_112)
    assert np.allclose(template("arcface112", 224), (ARCFACE_112 + 0.5) * 2 - 0.5)
    loose = template("loose224", 224)
    tight = template("arcface112", 224)
    span = lambda p: np.ptp(p[:, 0])  # noqa: E731
    assert abs(span(loose) / span(tight) - 0.75) < 1e-9
    assert np.allclose(loose.mean(0), tight.mean(0) * 0.75 + 111.5 * 0.25)  # shrunk about the frame's centre
    assert np.allclose(template(None, 224), loose) and np.allclose(template(None, 112), ARCFACE_112)


def test_identity_like_case_reproduces_a_plain_crop():
    img = torch.rand(3, 200, 180)
    lm = ARCFACE_112 + [30.0, 45.0]  # integer shift, scale 1, no rotation
    out = align_faces(img, lm[None], 112, "arcface112")
    assert out.shape == (1, 3, 112, 112)
    assert torch.allclose(out[0], img[:, 45:157, 30:142], atol=1e-4)  # float32 grid rounding


def _blobs(h: int, w: int, pts: np.ndarray, sigma: float) -> torch.Tensor:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    out = np.zeros((h, w))
    for x, y in pts:
        out += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return torch.from_numpy(np.repeat(out[None], 3, 0)).float()


def _peak(img: torch.Tensor, near: np.ndarray, r: int = 6) -> np.ndarray:
    """Intensity-weighted centroid of img[0] in a window around `near`."""
    x0, y0 = int(round(near[0])), int(round(near[1]))
    win = img[0, y0 - r : y0 + r + 1, x0 - r : x0 + r + 1].double().numpy()
    win = np.clip(win - win.max() * 0.3, 0, None)
    yy, xx = np.mgrid[y0 - r : y0 + r + 1, x0 - r : x0 + r + 1]
    return np.array([(win * xx).sum() / win.sum(), (win * yy).sum() / win.sum()])


def test_warp_puts_landmarks_on_the_template_up_and_down_scaling():
    for scale, sigma in ((0.8, 1.5), (3.5, 6.0)):  # face smaller than output (no AA); 3.5x larger (AA path)
        lm = _similar(ARCFACE_112, scale, 12.0, (60.0, 20.0))
        h, w = int(lm[:, 1].max() + 150), int(lm[:, 0].max() + 150)
        img = _blobs(h, w, lm, sigma)
        out = align_faces(img, lm[None], 112, "arcface112")[0]
        for p in ARCFACE_112:
            assert np.abs(_peak(out, p) - p).max() < 0.5, (scale, p, _peak(out, p))


def test_gradients_reach_the_photo_pixels():
    img = torch.rand(3, 300, 300, requires_grad=True)
    lm = _similar(ARCFACE_112, 1.6, -10.0, (80.0, 60.0))
    out = align_faces(img, lm[None], 112)
    out.sum().backward()
    g = img.grad.abs().sum(0)
    assert g.sum() > 0
    ys, xs = np.nonzero(g.numpy())
    # the gradient lies on the face's footprint only
    corners = _apply(np.linalg.inv(np.vstack([similarity_transform(lm, ARCFACE_112), [0, 0, 1]]))[:2],
                     np.array([[0, 0], [111, 0], [0, 111], [111, 111]], float))
    assert xs.min() >= corners[:, 0].min() - 4 and xs.max() <= corners[:, 0].max() + 4
    assert ys.min() >= corners[:, 1].min() - 4 and ys.max() <= corners[:, 1].max() + 4


def test_large_faces_are_antialiased():
    # a 1-px checkerboard seen through a 4x downscale: antialiased -> flat grey, not aliasing
    h = w = 600
    cb = torch.from_numpy(((np.indices((h, w)).sum(0) % 2)).astype(np.float32)).expand(3, h, w).contiguous()
    lm = _similar(ARCFACE_112, 4.0, 7.0, (60.0, 40.0))
    m = landmark_transforms(lm[None], 112)[0]
    aa = warp(cb, m, 112, antialias=True)
    raw = warp(cb, m, 112, antialias=False)
    assert aa.std() < 0.05 and abs(aa.mean() - 0.5) < 0.02
    assert raw.std() > 4 * aa.std()


def test_two_x_downscale_matches_an_antialiased_resize():
    img = torch.rand(3, 300, 300)
    # smooth content: both methods must agree up to the second (bilinear) resampling's blur
    img = F.avg_pool2d(F.avg_pool2d(img[None], 11, 1, 5), 11, 1, 5)[0]
    lm = (ARCFACE_112 + 0.5) * 2 - 0.5 + [40.0, 30.0]  # the 224 crop at (40, 30), twice the output
    out = align_faces(img, lm[None], 112, "arcface112")
    ref = F.interpolate(img[None, :, 30:254, 40:264], size=(112, 112), mode="bilinear", antialias=True,
                        align_corners=False)
    err = (out - ref)[..., 4:-4, 4:-4]
    assert err.abs().max() < 0.01 and abs(err.mean()) < 1e-4  # no shift


class _MeanNet(nn.Module):
    input_size = 112
    crop = "arcface112"
    kind = "embedder"

    def forward(self, x):
        return x.mean((2, 3))


def test_align_model_on_packed_regions_and_select():
    from facepriv.core.geometry import pack

    r1, r2 = torch.rand(3, 150, 130), torch.rand(3, 260, 240)
    lm1 = _similar(ARCFACE_112, 0.9, 5.0, (15.0, 10.0))
    lm2 = _similar(ARCFACE_112, 1.8, -15.0, (30.0, 40.0))
    x = pack([r1, r2]).requires_grad_(True)
    model = AlignModel(_MeanNet(), np.stack([lm1, lm2]))
    out = model(x)
    assert out.shape == (2, 3)
    ref = torch.cat([align_faces(r1, lm1[None], 112).mean((2, 3)), align_faces(r2, lm2[None], 112).mean((2, 3))])
    assert torch.allclose(out, ref, atol=1e-6)
    sub = model.select([1])
    assert torch.allclose(sub(x[1:]), ref[1:], atol=1e-6)
    # matrices are accepted as well as landmarks
    mats = AlignModel(_MeanNet(), model.matrices)
    assert torch.allclose(mats(x), out, atol=1e-6)
    out.sum().backward()
    assert x.grad[0].abs().sum() > 0 and x.grad[1].abs().sum() > 0


def test_packed_warp_equals_a_warp_per_region():
    # faces with and without antialiasing, regions smaller than the packed frame (read as zero
    # outside, not the padding), values and gradients as one warp per region (float64)
    rng = np.random.default_rng(3)
    sizes = [(300, 280), (250, 250), (300, 200), (180, 280), (120, 100), (290, 270)]
    x = torch.rand(len(sizes), 3, 300, 280, dtype=torch.float64)
    x[1, :, 250:, :] = 5.0  # padding that must not be read
    ms, steps = [], []
    for h, w in sizes:
        scale = rng.uniform(0.4, 1.3)
        m = _similar(np.eye(2), scale, rng.uniform(-20, 20), (0, 0))
        c = np.array([w / 2, h / 2]) + rng.uniform(-30, 30, 2)
        ms.append(np.hstack([m, (np.array([56.0, 56.0]) - m @ c)[:, None]]))
        steps.append(1 / scale)
    assert min(steps) < 1.25 < max(steps)  # both paths are taken
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya = torch.cat([warp(a[i, :, :h, :w], m, 112) for i, (m, (h, w)) in enumerate(zip(ms, sizes))])
    yb = warp_packed(b, ms, 112, sizes)
    assert torch.allclose(ya, yb, atol=1e-10)
    g = torch.randn_like(ya)
    (ga,), (gb,) = torch.autograd.grad(ya, a, g), torch.autograd.grad(yb, b, g)
    assert torch.allclose(ga, gb, atol=1e-10)
    assert gb[1, :, 250:].abs().max() == 0
