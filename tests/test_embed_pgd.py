"""Label-free embedding PGD (facepriv.attacks.embed_pgd) on tiny synthetic embedders, the
embed-pgd strategy's pieces (decoy choice, quality budget) and, when the pretrained models
are present, one real-model run through the strategy."""

from __future__ import annotations

import json
import os
import types

import numpy as np
import pytest
import torch
from torch import nn

from facepriv.core.align import ARCFACE_112
from facepriv.attacks.embed_pgd import JitteredAlign, embed, embed_pgd, gaussian_kernel, smooth
from facepriv.models.decoys import choose_decoys
from facepriv.strategies.embed import specs_of
from facepriv.core.metrics import psnr, ssim

SHARED = "/work/shared/models/human-models-3.0.4"


class TinyEmbedder(nn.Module):
    kind = "embedder"
    input_size = 32
    crop = "arcface112"

    def __init__(self, seed: int = 0, dim: int = 16):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.c1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16 * 8 * 8, dim)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.3
            p.requires_grad_(False)

    def forward(self, x):
        x = torch.tanh(self.c2(torch.tanh(self.c1(x * 2 - 1))))
        return self.fc(x.flatten(1))


def _regions(n=3, size=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    # smooth random images (low frequency) so the net's features are not pure noise
    x = torch.rand(n, 3, size // 8, size // 8, generator=g)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    lm = np.stack([ARCFACE_112 * (size / 112.0) + np.random.default_rng(i).normal(0, 0.5, (5, 2)) for i in range(n)])
    return x.clamp(0, 1), lm


def _models(lm, seeds=(0,), p=0.0):
    return [JitteredAlign(TinyEmbedder(s), lm, p=p, size=32, seed=s) for s in seeds]


def _cos(models, x, y):
    return [float((a * b).sum(1).mean()) for a, b in zip(embed(models, x), embed(models, y))]


def test_untargeted_stays_in_eps_and_drops_cosine():
    x, lm = _regions()
    models = _models(lm)
    adv, used = embed_pgd(models, x, eps=8, steps=10)
    assert (adv - x).abs().max() <= 8 / 255 + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    assert used.tolist() == [10, 10, 10]
    (c,) = _cos(models, x, adv)
    assert c < 0.9  # clean vs itself is 1.0


def test_more_eps_drops_more():
    x, lm = _regions()
    models = _models(lm)
    small = _cos(models, x, embed_pgd(models, x, eps=1, steps=10)[0])[0]
    big = _cos(models, x, embed_pgd(models, x, eps=12, steps=10)[0])[0]
    assert big < small


def test_ensemble_drops_every_member():
    x, lm = _regions()
    models = _models(lm, seeds=(0, 1))
    adv, _ = embed_pgd(models, x, eps=8, steps=10)
    assert all(c < 0.95 for c in _cos(models, x, adv))


def test_decoy_moves_toward_decoy():
    x, lm = _regions(n=2)
    models = _models(lm)
    clean = embed(models, x)
    # face 0's decoy is face 1 and vice versa
    decoys = [c.flip(0) for c in clean]
    before = float((clean[0] * decoys[0]).sum(1).mean())
    adv, _ = embed_pgd(models, x, eps=8, steps=10, loss="decoy", clean=clean, decoys=decoys)
    after = float((embed(models, adv)[0] * decoys[0]).sum(1).mean())
    assert after > before + 0.05
    with pytest.raises(ValueError):
        embed_pgd(models, x, loss="decoy")


def test_momentum_and_ti_change_the_result():
    x, lm = _regions()
    models = _models(lm)
    plain, _ = embed_pgd(models, x, eps=8, steps=6)
    mom, _ = embed_pgd(models, x, eps=8, steps=6, momentum=1.0)
    ti, _ = embed_pgd(models, x, eps=8, steps=6, ti_sigma=2.0)
    assert not torch.equal(plain, mom)
    assert not torch.equal(plain, ti)
    # TI perturbations are smoother: smaller mean difference between neighbouring pixels
    def rough(a):
        d = a - x
        return float((d[..., 1:] - d[..., :-1]).abs().mean())
    assert rough(ti) < rough(plain)


def test_smooth_is_a_normalised_blur():
    k = gaussian_kernel(1.5)
    assert abs(float(k.sum()) - 1) < 1e-5 and k.shape[0] == k.shape[1] and k.shape[0] % 2 == 1
    g = torch.zeros(1, 3, 21, 21)
    g[0, :, 10, 10] = 1.0
    s = smooth(g, 1.5)
    assert abs(float(s.sum()) - 3.0) < 1e-4 and float(s.max()) < 0.2
    assert torch.equal(smooth(g, 0), g)


def test_input_diversity_jitters_alignment_and_select_keeps_it():
    x, lm = _regions()
    on = JitteredAlign(TinyEmbedder(0), lm, p=1.0, size=32, seed=3)
    off = JitteredAlign(TinyEmbedder(0), lm, p=0.0, size=32)
    assert torch.equal(off.align(x), off.align(x))
    a, b = on.align(x), on.align(x)
    assert not torch.equal(a, b)
    assert (a - off.align(x)).abs().mean() > 1e-3
    sub = on.select([2, 0])
    assert sub.p == 1.0 and sub(x[[2, 0]]).shape == (2, 16)
    # and diversity changes what PGD finds
    m_on = [JitteredAlign(TinyEmbedder(0), lm, p=1.0, size=32, seed=0)]
    assert not torch.equal(embed_pgd(m_on, x, eps=8, steps=4)[0], embed_pgd([off], x, eps=8, steps=4)[0])


def test_pre_sees_what_is_written():
    x, lm = _regions()
    models = _models(lm)
    seen = []

    def pre(z):
        seen.append(z.shape)
        return z + ((z * 255).round() / 255 - z).detach()

    adv, _ = embed_pgd(models, x, eps=4, steps=3, pre=pre)
    assert len(seen) == 4  # clean embedding + 3 steps
    assert (adv - x).abs().max() <= 4 / 255 + 1e-6


def test_choose_decoys_picks_the_least_similar_bank_identity_per_face():
    e = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [-1.0, 0.05], [0.0, 1.0]]), dim=1)
    bank = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]), dim=1)
    assert choose_decoys([e], [bank]) == [2, 2, 0, 3]
    # each face's choice is its own: alone, or in another batch, the same
    assert [choose_decoys([e[i : i + 1]], [bank])[0] for i in range(4)] == [2, 2, 0, 3]
    assert choose_decoys([e.flip(0)], [bank]) == [3, 0, 2, 2]
    # an ensemble: the mean cosine over the surrogates. Face 0 under a second surrogate, cosines to
    # identities 0..3 = (-.45, -.89, .45, .89); with the first's (1, 0, -1, 0) the mean is lowest for 1
    other = torch.nn.functional.normalize(torch.tensor([[0.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [1.0, 0.0]]), dim=1)
    second = torch.nn.functional.normalize(torch.tensor([[1.0, -0.5]]), dim=1)
    assert choose_decoys([e[:1], second], [bank, other]) == [1]
    far = other[:3]
    with pytest.raises(ValueError):
        choose_decoys([e], [bank, far])


def test_specs_of():
    assert specs_of(" mobilefacenet, faceres ,") == ["mobilefacenet", "faceres"]
    assert specs_of(None) == []


@pytest.mark.skipif(not os.path.isdir(SHARED), reason=f"pretrained TF.js models not present at {SHARED}")
def test_strategy_on_real_model_lowers_cosine_within_budget():
    from facepriv.models.store import load_surrogate
    from facepriv.core.settings import CloakSettings
    from facepriv.strategies import FaceItem, make

    spec = os.path.join(SHARED, "mobileface.json")
    s = CloakSettings(attack="embed-pgd", surrogate=spec, eps=8, steps=5, momentum=1.0, input_diversity=0.5,
                      ti_sigma=1.0, min_psnr=33.0, min_ssim=0.95)
    strat = make(s, None, torch.device("cpu"))
    assert strat.resumable is False
    # a synthetic "face": smooth noise with the landmarks of an aligned 112 crop scaled to 128
    g = torch.Generator().manual_seed(0)
    px = torch.nn.functional.interpolate(torch.rand(1, 3, 16, 16, generator=g), size=(128, 128),
                                         mode="bilinear", align_corners=False)[0]
    lm = ARCFACE_112 * (128 / 112)
    ph = types.SimpleNamespace(decoded=types.SimpleNamespace(format="PNG"))
    item = FaceItem(photo=ph, index=0, region=(0, 0, 128, 128), pixels=px, crop=(0, 0, 128, 128), landmarks=lm,
                    box=np.array([0, 0, 128, 128.0]))
    adv, used = strat([item])
    o8 = (px.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    a8 = (adv[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert psnr(o8, a8) >= 33.0 and ssim(o8, a8) >= 0.95
    assert used == [5]
    net = load_surrogate(spec)
    (c,) = _cos([JitteredAlign(net, lm[None], p=0.0)], px[None], adv)
    assert c < 0.9


def test_preset_protect_fills_unset_options_and_explicit_flags_win(tmp_path, monkeypatch):
    from facepriv.cli import build_parser
    from facepriv.cli.options import settings_from_args
    from facepriv.core.settings import PRESETS
    from facepriv.errors import FacePrivError

    monkeypatch.setenv("FACEPRIV_HOME", str(tmp_path))
    args = build_parser().parse_args(["cloak", "a", "b", "--preset", "protect"])
    with pytest.raises(FacePrivError, match="facepriv models install"):
        settings_from_args(args)
    (tmp_path / "models").mkdir()
    for n in ("mobilefacenet", "faceres"):
        (tmp_path / "models" / f"{n}.pt").write_bytes(b"")
    s = settings_from_args(build_parser().parse_args(["cloak", "a", "b", "--preset", "protect"]))
    p = PRESETS["protect"]
    assert s.attack == "embed-pgd" and s.surrogate == "mobilefacenet"  # the preferred one when installed
    assert (s.eps, s.steps, s.momentum, s.input_diversity, s.min_psnr, s.texture_mask) == (
        p["eps"], p["steps"], p["momentum"], p["input_diversity"], p["min_psnr"], p["texture_mask"])
    assert (s.face_psnr, s.quality_target, s.min_face_quality) == (p["face_psnr"], p["quality_target"], 50.0)
    for name, floor in (("discreet", 70.0), ("strong", 30.0)):  # the other two presets, their own floors
        s = settings_from_args(build_parser().parse_args(["cloak", "a", "b", "--preset", name]))
        assert s.attack == "embed-pgd" and s.min_face_quality == floor and s.eps == PRESETS[name]["eps"]
    (tmp_path / "models" / "mobilefacenet.pt").unlink()
    s = settings_from_args(build_parser().parse_args(["cloak", "a", "b", "--preset", "protect"]))
    assert s.surrogate == "faceres"  # else every installed one
    s = settings_from_args(build_parser().parse_args(
        ["cloak", "a", "b", "--preset", "protect", "--eps", "3", "--surrogate", "x.pt", "--momentum", "0"]))
    assert (s.eps, s.surrogate, s.momentum, s.steps) == (3.0, "x.pt", 0.0, p["steps"])
    # no preset: the plain defaults, unchanged for the classifier attacks
    s = settings_from_args(build_parser().parse_args(["cloak", "a", "b"]))
    assert (s.attack, s.eps, s.steps, s.surrogate, s.momentum, s.min_psnr) == ("fgsm", 8.0, 10, None, 0.0, None)
    assert "surrogate" not in s.output_fields(None)


@pytest.mark.skipif(not os.path.isdir(SHARED), reason=f"pretrained TF.js models not present at {SHARED}")
def test_pipeline_embed_pgd_without_model_or_labels_meets_psnr_budget(tmp_path):
    """Cloaker with --attack embed-pgd, no --model: every face region of the written files meets
    --min-psnr, faces recorded."""
    import shutil
    from pathlib import Path

    from facepriv.core.settings import CloakSettings

    from facepriv.pipeline.cloaker import Cloaker

    sample = Path(__file__).resolve().parents[1] / "examples" / "sample" / "test"
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "p").mkdir(parents=True)
    files = sorted((sample / "Colin_Powell").iterdir())[:2]
    for f in files:
        shutil.copy(f, src / "p" / f.name)
    s = CloakSettings(attack="embed-pgd", surrogate=os.path.join(SHARED, "mobileface.json"), eps=12, steps=2,
                      momentum=1.0, input_diversity=0.5, min_psnr=36.0, device="cpu")
    rows = Cloaker(str(src), str(dst), s, "t").process([f"p/{f.name}" for f in files])
    for r in rows:
        assert r["status"] == "ok", r["reason"]
        assert r["n_faces"] >= 1 and all(f["steps"] == 2 and f["linf"] > 0 for f in r["faces"])
        assert all(f["face_psnr"] >= 36.0 and f["face_ssim"] < 1.0 for f in r["faces"])
        assert r["psnr"] >= 36.0 and r["ssim"] < 1.0
        assert (dst / r["source_key"]).is_file()
    assert "surrogate" in json.loads(rows[0]["settings_json"])


def test_texture_map_limits_change_in_flat_areas():
    from facepriv.attacks.embed_pgd import texture_map

    x, lm = _regions()
    x = x.clone()
    x[:, :, :, :24] = 0.5  # left half flat
    m = texture_map(x, 12.0)
    assert m.shape == (3, 1, 48, 48) and float(m.max()) <= 1.0
    assert float(m[..., 4:44, 2:10].mean()) < float(m[..., 4:44, 38:46].mean())
    models = _models(lm)
    adv, _ = embed_pgd(models, x, eps=8, steps=5, eps_map=m)
    assert ((adv - x).abs() <= m * 8 / 255 + 1e-6).all()
