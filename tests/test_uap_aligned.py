"""The aligned-frame universal perturbation (issue 20): the inverse warp, the label-free fit
(gradient sums, signed step, projection, plateau), 1 process vs 2 Ray workers, resume, and
the surrogate-free apply (`--attack uap --perturbation v.npy` on an aligned v)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facepriv.attacks import uap_aligned as ua
from facepriv.cli import build_parser
from facepriv.cli.options import settings_from_args
from facepriv.core import geometry
from facepriv.core.align import ARCFACE_112, landmark_transforms, unwarp, warp
from facepriv.core.settings import CloakSettings
from facepriv.distributed.uap_aligned_fit import AlignedFitSettings, fit_aligned, load_state, save_outputs
from facepriv.errors import FacePrivError
from facepriv.io.perturbation import describe
from facepriv.pipeline.crops import Crops
from facepriv import strategies
from facepriv.strategies.base import FaceItem
from tests.test_embed_pgd import TinyEmbedder

S = 32  # TinyEmbedder's input: the fit frame is arcface112 drawn at 32 x 32


def _smooth(n, size, seed, lo=4):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, lo, lo, generator=g)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def _crops(n=24, ids=4, seed=0) -> Crops:
    u8 = (_smooth(n, S, seed, 6) * 255).round().byte()
    names = [f"id{i % ids}" for i in range(n)]
    return Crops(u8, names, [f"{nm}/{i}.jpg" for i, nm in enumerate(names)],
                 {"size": S, "scale": 1.0, "frame": "aligned", "template": "arcface112", "source": "toy"})


def _settings(**kw):
    base = dict(xi=16.0, surrogate="tiny", template="arcface112", size=S, loss="untargeted", lr=0.2, batch=8,
                max_passes=3, patience=0, jitter=1.0, jpeg_quality=None, seed=0)
    return AlignedFitSettings(**{**base, **kw})


def test_unwarp_draws_v_into_the_face_and_aligning_gets_it_back():
    v = (_smooth(1, 112, 1, 5)[0] - 0.5) * 0.2
    lm = ARCFACE_112 * 1.4 + [30.0, 20.0]  # a face 1.4x the template, offset in a 220x200 region
    m = landmark_transforms(lm[None], 112)[0]
    d = unwarp(v, m, 220, 200)
    assert d.shape == (3, 220, 200)
    assert d.abs().max() <= v.abs().max() + 1e-6  # a convex combination: the xi bound holds in pixels
    back = warp(d, m, 112)[0]
    assert (back[:, 6:-6, 6:-6] - v[:, 6:-6, 6:-6]).abs().max() < 0.01
    # pixels the template does not reach are untouched
    assert d[:, -20:, :].abs().max() == 0 and d[:, :, -10:].abs().max() == 0
    # a face smaller than the template: v is shrunk first (antialiased), still bounded
    small = landmark_transforms((ARCFACE_112 * 0.5 + 5)[None], 112)[0]
    d2 = unwarp(v, small, 70, 70)
    assert d2.abs().max() <= v.abs().max() + 1e-6
    assert (warp(d2, small, 112)[0][:, 10:-10, 10:-10] - v[:, 10:-10, 10:-10]).abs().max() < 0.03


def test_gradient_sums_add_across_shards_and_the_step_projects():
    net = TinyEmbedder()
    a = _smooth(6, S, 3)
    clean = [ua.unit_embeddings(net, a)]
    v = torch.zeros(3, S, S)
    mats = ua.jitter_matrices(6, S, ua.face_rngs(0, 1, range(6)))
    g_all, loss_all, n = ua.shard_gradient([net], a, clean, v, None, mats)
    g1, l1, _ = ua.shard_gradient([net], a[:2], [clean[0][:2]], v, None, mats[:2])
    g2, l2, _ = ua.shard_gradient([net], a[2:], [clean[0][2:]], v, None, mats[2:])
    assert n == 6 and torch.allclose(g1 + g2, g_all, atol=1e-6) and l1 + l2 == pytest.approx(loss_all, abs=1e-5)
    v2 = ua.step(v + 0.5, g_all, 0.5, 16.0)
    assert v2.abs().max() <= 16 / 255 + 1e-7
    assert ua.plateaued([0.1, 0.2, 0.2005, 0.2008], patience=2, tol=0.002)
    assert not ua.plateaued([0.1, 0.2, 0.25, 0.3], patience=2, tol=0.002)


def test_fit_shifts_embeddings_label_free_and_stops_on_plateau():
    net = TinyEmbedder()
    c = _crops()
    v, hist = fit_aligned(c, _settings(max_passes=4), 0, surrogates=[net], log=lambda m: None)
    assert len(hist) == 4 and np.abs(v).max() <= 16 / 255 + 1e-7
    assert hist[-1]["shift"] > 0.05 and hist[-1]["shift"] > hist[0]["shift"] - 1e-9
    # the same shift measured directly: 1 - mean cos of the written a + v against the clean faces
    a = c.floats()
    cos = (ua.unit_embeddings(net, ua.chain(a, torch.from_numpy(v))) * ua.unit_embeddings(net, a)).sum(1).mean()
    assert hist[-1]["shift"] == pytest.approx(1 - float(cos), abs=1e-4)
    # a tolerance nothing can meet: stops after patience + 1 passes
    _, h2 = fit_aligned(c, _settings(max_passes=10, patience=2, tol=10.0), 0, surrogates=[net], log=lambda m: None)
    assert len(h2) == 3


def test_quality_term_in_the_fit_keeps_the_crops_scoring_higher():
    """--quality-target in the fit: the per-face SSIMULACRA 2 term changes the gradient, and
    the fitted v costs the written crops less quality than the fit without it (same budget)."""
    from facepriv.core.perceptual import ssimulacra2

    net = TinyEmbedder()
    c = _crops()
    a = c.floats()
    clean = [ua.unit_embeddings(net, a)]
    v0 = (_smooth(1, S, 5, 8)[0] - 0.5) * 0.1
    g0, _, _ = ua.shard_gradient([net], a, clean, v0)
    gq, _, _ = ua.shard_gradient([net], a, clean, v0, quality=(95.0, 50.0))
    assert not torch.allclose(g0, gq)
    plain, _ = fit_aligned(c, _settings(max_passes=3, rms=6.0), 0, surrogates=[net], log=lambda m: None)
    kind, _ = fit_aligned(c, _settings(max_passes=3, rms=6.0, quality_target=95.0, quality_weight=50.0), 0,
                          surrogates=[net], log=lambda m: None)
    s_plain = ssimulacra2(a, ua.chain(a, torch.from_numpy(plain))).mean()
    s_kind = ssimulacra2(a, ua.chain(a, torch.from_numpy(kind))).mean()
    assert s_kind > s_plain + 1.0


def test_holdout_gallery_figure_counts_protected_faces():
    net, held = TinyEmbedder(0), TinyEmbedder(5)
    c = _crops()
    _, hist = fit_aligned(c, _settings(max_passes=2, holdout="held"), 0, surrogates=[net], holdout=held,
                          log=lambda m: None)
    h = hist[-1]
    assert 0 < h["holdout_identified"] <= len(c)
    assert 0.0 <= h["holdout_protection"] <= 1.0


def test_resume_continues_the_fit_exactly_and_refuses_other_settings(tmp_path):
    net = TinyEmbedder()
    c = _crops()
    out = str(tmp_path / "v.npy")
    info = {"surrogates": [{"spec": "tiny", "sha256": "x"}], "fit_data": {"faces": len(c), "source": "toy"}}
    v_full, h_full = fit_aligned(c, _settings(max_passes=3), 0, surrogates=[net], log=lambda m: None)

    def interrupt(msg):  # the fit is killed after its second pass was checkpointed
        if msg.startswith("pass   2"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit_aligned(c, _settings(max_passes=3), 0, out=out, info=info, surrogates=[net], log=interrupt)
    v0, hist = load_state(out, _settings(max_passes=3), info)
    assert len(hist) == 2
    v, h = fit_aligned(c, _settings(max_passes=3), 0, out=out, info=info, v0=v0, history=hist, surrogates=[net],
                       log=lambda m: None)
    assert [r["pass"] for r in h] == [1, 2, 3]
    assert np.allclose(v, v_full, atol=1e-6)
    assert h[-1]["shift"] == pytest.approx(h_full[-1]["shift"], abs=1e-6)
    with pytest.raises(FacePrivError, match="xi"):
        load_state(out, _settings(xi=8.0), info)
    side = json.loads(open(out[:-4] + ".json").read())
    assert side["frame"] == "aligned" and side["template"] == "arcface112" and side["xi"] == 16.0
    assert side["surrogates"] == info["surrogates"] and side["fit_data"] == info["fit_data"]


@pytest.mark.slow
def test_two_workers_within_five_points_of_one_process():
    import ray

    net, held = TinyEmbedder(0), TinyEmbedder(5)
    c = _crops(n=30)
    s = _settings(max_passes=3, holdout="held")
    v1, h1 = fit_aligned(c, s, 0, surrogates=[net], holdout=held, log=lambda m: None)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        v2, h2 = fit_aligned(c, s, 2, surrogates=[net], holdout=held, torch_threads=1, log=lambda m: None)
    finally:
        ray.shutdown()
    assert all(h["workers"] == 2 and h["faces"] == len(c) for h in h2)
    assert abs(h2[-1]["shift"] - h1[-1]["shift"]) <= 0.05
    assert abs(h2[-1]["holdout_protection"] - h1[-1]["holdout_protection"]) <= 0.05
    assert np.abs(v2 - v1).max() <= 2 * s.lr * s.xi / 255  # the same steps, up to float summation order


def _aligned_file(tmp_path, v):
    out = str(tmp_path / "v.npy")
    save_outputs(out, v.numpy(), [], _settings(size=v.shape[-1]),
                 {"surrogates": [{"spec": "tiny", "sha256": "x"}], "fit_data": {"faces": 3}})
    return out


def test_apply_draws_v_through_each_faces_landmarks_without_a_surrogate(tmp_path):
    v = (_smooth(1, 112, 2, 5)[0] - 0.5) * 0.1
    path = _aligned_file(tmp_path, v)
    info = describe(path)
    assert info["frame"] == "aligned" and info["template"] == "arcface112" and info["xi"] == 16.0
    g = torch.Generator().manual_seed(0)
    regions = [torch.rand(3, 160, 150, generator=g) * 0.6 + 0.2, torch.rand(3, 90, 100, generator=g) * 0.6 + 0.2]
    lms = [ARCFACE_112 * 1.2 + [10.0, 12.0], ARCFACE_112 * 0.7 + [8.0, 5.0]]
    items = [FaceItem(photo=None, index=i, region=(0, 0, r.shape[2], r.shape[1]), pixels=r, crop=(0, 0, 10, 10),
                      landmarks=lm, box=np.array([8, 8, r.shape[2] - 8, r.shape[1] - 8], np.float32))
             for i, (r, lm) in enumerate(zip(regions, lms))]
    strat = strategies.make(CloakSettings(attack="uap", extra={"uap": path}), None, torch.device("cpu"))
    adv, steps = strat(items)
    x = geometry.pack(regions)
    assert steps == [1, 1]
    for i, (r, lm) in enumerate(zip(regions, lms)):
        h, w = r.shape[1:]
        m = landmark_transforms(lm[None], 112)[0]
        assert torch.allclose(adv[i, :, :h, :w] - x[i, :, :h, :w], unwarp(v, m, h, w), atol=1e-6)
    # with a quality floor the change shrinks until the face region meets it (no surrogate involved)
    floor = 95.0
    s = CloakSettings(attack="uap", extra={"uap": path}, min_face_quality=floor)
    strat = strategies.make(s, None, torch.device("cpu"))
    adv2, _ = strat(items)
    from facepriv.core.metrics import ssimulacra2

    assert any(sc < 1.0 for sc in strat.last_scales)
    for i, r in enumerate(regions):
        h, w = r.shape[1:]
        box = geometry.quality_region(items[i].box, w, h)
        x0, y0, x1, y1 = box
        ref = (x[i, :, :h, :w].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        got = (adv2[i, :, :h, :w].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        assert ssimulacra2(ref[y0:y1, x0:x1], got[y0:y1, x0:x1]) >= floor - 1e-6


def test_cli_takes_perturbation_and_uap_and_records_the_frame(tmp_path):
    v = (_smooth(1, 112, 2, 5)[0] - 0.5) * 0.1
    path = _aligned_file(tmp_path, v)
    for flag in ("--perturbation", "--uap"):
        args = build_parser().parse_args(["cloak", "SRC", "DST", "--attack", "uap", flag, path,
                                          "--min-face-quality", "50"])
        s = settings_from_args(args)
        assert s.extra["uap"] == path and s.extra["uap_frame"] == "aligned"
        assert s.extra["uap_surrogates"] == ["tiny"]
        assert s.output_fields(None)["min_face_quality"] == 50.0  # the floor is part of the settings hash
    # a crop-frame file (no frame in its sidecar) keeps its settings unchanged
    old = str(tmp_path / "old.npy")
    np.save(old, v.numpy())
    s = settings_from_args(build_parser().parse_args(["cloak", "SRC", "DST", "--attack", "uap", "--uap", old]))
    assert "uap_frame" not in s.extra and "min_face_quality" not in s.output_fields(None)
    assert describe(old)["frame"] == "crop"


def test_rms_bound_projects_into_the_l2_ball_and_takes_l2_steps():
    g = torch.randn(3, S, S)
    v = ua.step(torch.zeros(3, S, S), g, 1.0, xi=20.0, rms=3.0)
    assert float(v.pow(2).mean().sqrt()) * 255 == pytest.approx(3.0, rel=1e-4)
    assert v.abs().max() <= 20 / 255 + 1e-7
    assert torch.allclose(v, -g / g.pow(2).mean().sqrt() * 3 / 255, atol=1e-7)  # an L2 step along -g, not a sign step
    assert ua.project(torch.full((3, S, S), 0.5), 10.0, rms=4.0).abs().max() * 255 == pytest.approx(4.0, rel=1e-4)


def _fixture_photos(tmp_path):
    from tests.helpers import FIXTURES
    import shutil

    src = tmp_path / "src"
    for ident in sorted(os.listdir(FIXTURES)):
        shutil.copytree(os.path.join(FIXTURES, ident), src / ident)
    return src


def test_aligned_crops_are_each_faces_template_crop(tmp_path):
    from facepriv.pipeline import crops as crops_mod

    src = _fixture_photos(tmp_path)
    path = str(tmp_path / "a.parquet")
    c = crops_mod.load_or_extract(str(src), path, 112, frame="aligned", template="arcface112", progress=False,
                                  log=lambda m: None)
    assert len(c) == 4 and c.faces.shape == (4, 3, 112, 112)
    assert c.meta["frame"] == "aligned" and c.meta["template"] == "arcface112"
    back = crops_mod.load(path)
    assert torch.equal(back.faces, c.faces) and back.identities == c.identities
    # the crop frame of the same folder is another dataset: not reused
    msgs = []
    crops_mod.load_or_extract(str(src), path, 112, log=msgs.append, progress=False)
    assert any("re-extracting" in m for m in msgs)


def test_cloak_applies_an_aligned_v_end_to_end_without_a_surrogate(tmp_path):
    """The pipeline with --attack uap and an aligned v: every face changed, within max|v| in
    pixels (PNG-exact is not needed: the floor is checked on the written JPEG)."""
    from facepriv.distributed.runner import run_in_process
    from facepriv.io.manifest import read_manifest
    import fsspec

    src = _fixture_photos(tmp_path)
    v = (_smooth(1, 112, 4, 7)[0] - 0.5) * 0.12
    path = _aligned_file(tmp_path, v)
    dst = tmp_path / "dst"
    args = build_parser().parse_args(["cloak", str(src), str(dst), "--attack", "uap", "--perturbation", path,
                                      "--min-face-quality", "60"])
    s = settings_from_args(args)
    assert s.surrogate is None and s.model is None
    run_in_process(str(src), str(dst), s)
    rows = read_manifest(fsspec.filesystem("file"), str(dst / "_facepriv" / "runs")).to_pylist()
    faces = [f for r in rows for f in r["faces"]]
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows) and faces
    assert all(f["face_ssimulacra2"] >= 60 - 0.5 for f in faces)  # the floor on the written face region
    assert all(f["face_psnr"] < 60 for f in faces)  # and the faces did change


def test_top_up_takes_the_protect_attack_and_is_part_of_the_settings_hash(tmp_path, monkeypatch):
    from facepriv.core.settings import PRESETS
    from facepriv.errors import UsageError

    v = (_smooth(1, 112, 2, 5)[0] - 0.5) * 0.1
    path = _aligned_file(tmp_path, v)
    monkeypatch.setenv("FACEPRIV_HOME", str(tmp_path / "home"))
    base = ["cloak", "SRC", "DST", "--attack", "uap", "--perturbation", path, "--min-face-quality", "50"]
    with pytest.raises(UsageError, match="facepriv models install"):  # a top-up needs a surrogate
        settings_from_args(build_parser().parse_args(base + ["--top-up", "5"]))
    (tmp_path / "home" / "models").mkdir(parents=True)
    for n in ("mobileface", "mobilefacenet"):
        (tmp_path / "home" / "models" / f"{n}.pt").write_bytes(b"")
    plain = settings_from_args(build_parser().parse_args(base))
    s = settings_from_args(build_parser().parse_args(base + ["--top-up", "5"]))
    p = PRESETS["protect"]
    assert (s.attack, s.top_up, s.top_up_above, s.surrogate) == ("uap", 5, 0.4, "mobilefacenet")
    assert (s.face_psnr, s.quality_target, s.quality_every, s.embed_loss, s.input_diversity) == (
        p["face_psnr"], p["quality_target"], p["quality_every"], p["embed_loss"], p["input_diversity"])
    assert s.min_face_quality == 50.0 and s.min_psnr is None  # the floors are the user's, not the preset's
    assert s.eps == pytest.approx(float(v.abs().max()) * 255, abs=1e-3)  # v's own size caps the top-up too
    assert "top_up" not in plain.output_fields(None) and plain.surrogate is None
    assert s.output_fields(None, ["abc"])["top_up"] == 5 and s.hash(None, ["abc"]) != plain.hash(None)
    s2 = settings_from_args(build_parser().parse_args(base + ["--top-up", "5", "--top-up-above", "0.2",
                                                              "--surrogate", "mobileface"]))
    assert (s2.top_up_above, s2.surrogate) == (0.2, "mobileface")
    with pytest.raises(UsageError, match="--top-up applies to --attack uap"):
        settings_from_args(build_parser().parse_args(["cloak", "SRC", "DST", "--preset", "protect", "--top-up", "3"]))


SHARED_MODELS = "/work/shared/models/human-models-3.0.4"


@pytest.mark.skipif(not os.path.isdir(SHARED_MODELS), reason=f"pretrained TF.js models not present at {SHARED_MODELS}")
def test_top_up_steps_only_the_faces_the_universal_cloak_left_close(tmp_path):
    """With --top-up the faces above --top-up-above get N embed-pgd steps from the universal
    cloak (their would-be file moves further from the clean embedding, the floor still holds);
    a threshold no face reaches leaves the plain universal cloak, exactly."""
    import types
    from dataclasses import replace

    from facepriv.core.align import ARCFACE_112
    from facepriv.core.metrics import ssimulacra2
    from facepriv.core.settings import PRESETS

    v = (_smooth(1, 112, 3, 6)[0] - 0.5) * 0.08
    path = _aligned_file(tmp_path, v)
    spec = os.path.join(SHARED_MODELS, "mobileface.json")
    attack = {k: PRESETS["protect"][k] for k in ("embed_loss", "momentum", "input_diversity", "face_psnr",
                                                 "quality_target", "quality_every")}
    s = CloakSettings(attack="uap", extra={"uap": path, "uap_frame": "aligned"}, eps=float(v.abs().max()) * 255,
                      min_face_quality=40.0, surrogate=spec, top_up=3, top_up_above=-1.0, **attack)
    g = torch.Generator().manual_seed(0)
    px = F.interpolate(torch.rand(1, 3, 16, 16, generator=g), size=(128, 128), mode="bilinear",
                       align_corners=False)[0]
    ph = types.SimpleNamespace(decoded=types.SimpleNamespace(format="PNG"))
    item = FaceItem(photo=ph, index=0, region=(0, 0, 128, 128), pixels=px, crop=(0, 0, 128, 128),
                    landmarks=ARCFACE_112 * (128 / 112), box=np.array([8, 8, 120, 120.0]))
    topped = strategies.make(s, None, torch.device("cpu"))
    adv, steps = topped([item])
    assert steps == [1 + 3] and topped.last_topped == [True]
    plain_strat = strategies.make(replace(s, top_up_above=1.0), None, torch.device("cpu"))
    plain, steps0 = plain_strat([item])
    assert steps0 == [1] and plain_strat.last_topped == [False]
    assert torch.equal(plain, strategies.make(replace(s, top_up=0), None, torch.device("cpu"))([item])[0])
    x = px[None]
    before, after = topped.topup.similarity([item], x, plain)[0], topped.topup.similarity([item], x, adv)[0]
    assert after < before - 0.05
    o8 = (px.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    a8 = (adv[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert ssimulacra2(o8[8:120, 8:120], a8[8:120, 8:120]) >= 40 - 0.5
