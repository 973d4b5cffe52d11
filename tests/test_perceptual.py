"""The differentiable SSIMULACRA2 (facepriv.attacks.perceptual) against the PyPI reference, and
the two face-quality shapes of embed-pgd: the quality term in the loss and the L2 ball on the face."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from facepriv.attacks.embed_pgd import QualityTerm, embed_pgd
from facepriv.core.perceptual import ssimulacra2
from facepriv.core.geometry import quality_region

from test_embed_pgd import _models, _regions

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "lfw")


def _reference(a: np.ndarray, b: np.ndarray) -> float:
    """The PyPI ssimulacra2 package's score (it reads files)."""
    import tempfile

    from ssimulacra2 import compute_ssimulacra2

    with tempfile.TemporaryDirectory() as d:
        Image.fromarray(a).save(f"{d}/a.png")
        Image.fromarray(b).save(f"{d}/b.png")
        return float(compute_ssimulacra2(f"{d}/a.png", f"{d}/b.png"))


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].float() / 255


def _face(h=123, w=150) -> np.ndarray:
    import glob

    path = sorted(glob.glob(f"{FIXTURE}/**/*.jpg", recursive=True))[0]
    rgb = np.asarray(Image.open(path).convert("RGB"))
    return np.ascontiguousarray(rgb[60 : 60 + h, 50 : 50 + w])


@pytest.mark.parametrize("shape", [(130, 150), (123, 97), (40, 33), (185, 199)])
def test_matches_the_reference(shape):
    o = _face(*shape)
    rng = np.random.default_rng(0)
    noisy = np.clip(o.astype(int) + rng.choice([-4, 4], o.shape), 0, 255).astype(np.uint8)
    bright = np.clip(o.astype(int) + 6, 0, 255).astype(np.uint8)
    for d in (noisy, bright):
        assert abs(float(ssimulacra2(_t(o), _t(d))) - _reference(o, d)) < 1e-3
    assert float(ssimulacra2(_t(o), _t(o))) == pytest.approx(100.0)


@pytest.mark.parametrize("shape", [(8, 8), (9, 30), (57, 41), (130, 150)])
def test_the_matrix_blur_is_the_convolution(shape):
    """Small images blur as two matrix products with the borders folded in (mirrored rows,
    zero-padded columns): the reference's convolution, to float64 rounding."""
    from facepriv.core import perceptual

    x = torch.rand(2, 9, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    k = perceptual._kernel()
    blur = perceptual._Blur(*shape, k, torch.float64, x.device)
    assert blur.mats is not None
    torch.testing.assert_close(blur(x), perceptual._blur(x, k), rtol=0, atol=1e-13)
    big = perceptual._Blur(perceptual.MATMUL_MAX + 1, 20, k, torch.float64, x.device)
    assert big.mats is None  # a large image keeps the convolution (a dense matrix would cost more)


def test_float32_scores_and_steers_as_float64():
    """The attack's quality term runs in float32: the same score to a hundredth of a point and
    the same gradient direction as float64, from both blur paths."""
    from facepriv.core.perceptual import Reference

    for shape in [(123, 97), (185, 199)]:
        o = _t(_face(*shape)).double()
        d = (o + 1.5 / 255 * torch.randn(o.shape, generator=torch.Generator().manual_seed(2), dtype=o.dtype)).clamp(0, 1)
        grads, scores = [], []
        for prec in (torch.float64, torch.float32):
            v = d.clone().requires_grad_(True)
            s = Reference(o, prec).score(v)
            (g,) = torch.autograd.grad(s.sum(), v)
            grads.append(g.flatten())
            scores.append(float(s.detach()))
        assert abs(scores[0] - scores[1]) < 0.01 and 0 < scores[0] < 100
        assert float(torch.nn.functional.cosine_similarity(grads[0], grads[1], 0)) > 0.9999


def test_more_noise_scores_lower_and_gradient_flows():
    o = _t(_face())
    g = torch.Generator().manual_seed(0)
    n = torch.randn(o.shape, generator=g)
    s4, s8 = (float(ssimulacra2(o, (o + k / 255 * n).clamp(0, 1))) for k in (4, 8))
    assert 100 > s4 > s8
    d = (o + 4 / 255 * n).clamp(0, 1).requires_grad_(True)
    ssimulacra2(o, d).sum().backward()
    assert torch.isfinite(d.grad).all() and d.grad.abs().sum() > 0


def test_quality_term_raises_the_face_score():
    x, lm = _regions(n=3, size=48)
    models = _models(lm)
    boxes = [(6, 6, 42, 42)] * 3
    plain, _ = embed_pgd(models, x, eps=12, steps=10)
    q = QualityTerm(boxes, target=90, weight=20)
    kind, _ = embed_pgd(models, x, eps=12, steps=10, quality=q)
    crop = (slice(None), slice(None), slice(6, 42), slice(6, 42))
    before, after = ssimulacra2(x[crop], plain[crop]), ssimulacra2(x[crop], kind[crop])
    assert (before < 90).all()  # the plain attack is visible on every face
    assert (after > before + 5).all()
    assert q.last is not None and q.last.shape == (3,)


def test_quality_every_k_steps_evaluates_the_term_on_those_steps_and_still_raises_the_score(monkeypatch):
    """quality_every=k: the term (forward and backward) runs on steps 0, k, 2k, ... and its
    gradient is reused in between, so the faces still score well above the plain attack."""
    x, lm = _regions(n=3, size=48)
    models = _models(lm)
    boxes = [(6, 6, 42, 42)] * 3
    plain, _ = embed_pgd(models, x, eps=12, steps=12)
    q = QualityTerm(boxes, target=90, weight=20)
    calls = []
    real = QualityTerm.penalty
    monkeypatch.setattr(QualityTerm, "penalty", lambda self, a, b: calls.append(1) or real(self, a, b))
    every4, _ = embed_pgd(models, x, eps=12, steps=12, quality=q, quality_every=4)
    assert len(calls) == 3  # steps 0, 4, 8
    calls.clear()
    embed_pgd(models, x, eps=12, steps=12, quality=QualityTerm(boxes, target=90, weight=20))
    assert len(calls) == 12
    crop = (slice(None), slice(None), slice(6, 42), slice(6, 42))
    before, after = ssimulacra2(x[crop], plain[crop]), ssimulacra2(x[crop], every4[crop])
    assert (before < 90).all() and (after > before + 5).all()


def test_reference_side_is_computed_once_with_the_same_scores(monkeypatch):
    """`perceptual.Reference` (and `metrics.Ssimulacra2Ref`, the budget's scorer) prepare the
    original's half once; each score then converts only the candidate, with ssimulacra2's values."""
    from facepriv.core import metrics, perceptual

    o = _face()
    rng = np.random.default_rng(0)
    cands = [np.clip(o.astype(int) + rng.integers(-k, k + 1, o.shape), 0, 255).astype(np.uint8) for k in (3, 6)]
    want = [ssimulacra2(_t(o), _t(c)) for c in cands]
    want_np = [metrics.ssimulacra2(o, c) for c in cands]
    calls = []
    real = perceptual._xyb
    monkeypatch.setattr(perceptual, "_xyb", lambda lin: calls.append(lin.shape) or real(lin))
    ref = perceptual.Reference(_t(o))
    scales = len(calls)
    assert scales == 5  # 150x123: five scales of at least 8 px
    assert [torch.equal(ref.score(_t(c)), w) for c, w in zip(cands, want)] == [True, True]
    assert len(calls) == 3 * scales  # the reference once, then each candidate
    calls.clear()
    prepared = metrics.Ssimulacra2Ref(o)
    assert [prepared.score(c) for c in cands] == want_np
    assert len(calls) == 3 * scales


def test_quality_term_runs_no_backward_for_faces_above_the_target():
    """The term is max(0, target - S) per face: a face above the target adds 0 and no gradient,
    so only the faces below it are differentiated; the gradient is the dense formula's, bit for bit."""
    x, _ = _regions(n=3, size=48)
    boxes = [(6, 6, 42, 42)] * 3
    g = torch.Generator().manual_seed(0)
    amp = torch.tensor([12.0, 2.0, 1.0]).view(3, 1, 1, 1) / 255  # face 0 visibly changed, 1 and 2 barely
    xin = (x + amp * torch.randn(x.shape, generator=g)).clamp(0, 1).requires_grad_(True)
    crop = (slice(None), slice(None), slice(6, 42), slice(6, 42))
    scores = torch.cat([ssimulacra2(x[i : i + 1][crop], xin[i : i + 1][crop]) for i in range(3)])
    target = float(scores[0].detach() + scores[1:].detach().min()) / 2
    assert scores[0] < target < scores[1:].min()
    dense = 20.0 * (target - scores).clamp_min(0).sum() / 100.0
    (want,) = torch.autograd.grad(dense, xin)
    q = QualityTerm(boxes, target=target, weight=20.0, precision=torch.float64)
    (got,) = torch.autograd.grad(q.penalty(x, xin), xin)
    assert torch.equal(got, want) and got[0].abs().sum() > 0 and (got[1:] == 0).all()
    assert torch.equal(q.last, scores.detach())
    assert QualityTerm(boxes, target=float(scores.detach().min()) - 1).penalty(x, xin) is None  # every face above it


def test_face_psnr_ball_holds_and_eps_still_caps():
    x, lm = _regions(n=3, size=48)
    models = _models(lm)
    mask = torch.zeros_like(x[:, :1])
    mask[:, :, 6:42, 6:42] = 1
    rms = 255.0 / 10 ** (38 / 20)
    adv, _ = embed_pgd(models, x, eps=12, steps=10, face_rms=rms, face_mask=mask)
    d = (adv - x) * 255
    got = ((d * mask) ** 2).sum((1, 2, 3)) / (mask.sum((1, 2, 3)) * 3)
    assert (got.sqrt() <= rms + 1e-3).all() and (got.sqrt() > 0.5 * rms).all()
    assert d.abs().max() <= 12 + 1e-3


def test_quality_region_grows_the_box_and_clips():
    assert quality_region((10, 20, 110, 140), 200, 200) == (0, 8, 120, 152)
    assert quality_region((150, 150, 199, 199), 200, 200)[2:] == (200, 200)
