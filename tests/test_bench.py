"""`facepriv bench` and the optimisations it led to. Never asserts on a timing or a ratio's value:
only that the bench produces its report, and that the fast paths compute the same things."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from facepriv.core import metrics
from facepriv.models.checkpoint import load_checkpoint
from facepriv.models.registry import build_model

from helpers import random_checkpoint

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sample"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "lfw"


def _full_map_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """The reference: SSIM map over the whole image, luma, Gaussian 11/1.5, float64."""
    def luma(x):
        x = x.astype(np.float64)
        x = x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114 if x.ndim == 3 else x
        return torch.from_numpy(x)[None, None]

    g = torch.exp(-((torch.arange(11, dtype=torch.float64) - 5) ** 2) / (2 * 1.5**2))
    g = g / g.sum()

    def blur(t):
        return F.conv2d(F.conv2d(t, g.view(1, 1, 1, -1)), g.view(1, 1, -1, 1))

    x, y = luma(a), luma(b)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = blur(x), blur(y)
    s = ((2 * mx * my + c1) * (2 * (blur(x * y) - mx * my) + c2)) / (
        (mx * mx + my * my + c1) * (blur(x * x) - mx * mx + blur(y * y) - my * my + c2))
    return float(s.mean())


@pytest.mark.parametrize("where", ["middle", "corner", "none", "everywhere"])
def test_psnr_ssim_over_changed_box_equal_the_whole_image(where):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (97, 131, 3), dtype=np.uint8)
    b = a.copy()
    if where == "middle":
        b[40:60, 50:80] = np.clip(b[40:60, 50:80].astype(int) + rng.integers(-8, 9, (20, 30, 3)), 0, 255)
    elif where == "corner":
        b[0:3, 0:4, 1] ^= 1
        b[-2:, -1:, 2] ^= 4
    elif where == "everywhere":
        b = np.clip(b.astype(int) + rng.integers(-3, 4, b.shape), 0, 255).astype(np.uint8)
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    want_psnr = math.inf if mse == 0 else 10 * math.log10(255**2 / mse)
    assert metrics.psnr(a, b) == want_psnr
    assert metrics.ssim(a, b) == pytest.approx(_full_map_ssim(a, b), abs=1e-6)
    assert metrics.ssim(a[..., 0], b[..., 0]) == pytest.approx(_full_map_ssim(a[..., 0], b[..., 0]), abs=1e-6)
    if where == "none":
        assert metrics.ssim(a, b) == 1.0 and metrics.changed_box(a, b) is None


def test_changed_box_bounds_the_difference():
    a = np.zeros((50, 60, 3), np.uint8)
    b = a.copy()
    b[10, 20, 0] = 1
    b[30, 45, 2] = 1
    assert metrics.changed_box(a, b) == (10, 31, 20, 46)
    assert metrics.changed_box(a, b, pad=15) == (0, 46, 5, 60)


@pytest.mark.parametrize("arch", ["paper-cnn", "inception-resnet-v1"])
def test_loaded_conv_models_are_channels_last_with_the_same_outputs_and_gradients(tmp_path, arch):
    from facepriv.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    ref = build_model(arch, 4).eval()
    path = str(tmp_path / "m.pt")
    save_checkpoint(path, ref, arch, list("abcd"))
    net = load_checkpoint(path).model
    conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(3, 3, 160, 160)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    la, lb = ref(xa), net(xb)
    assert torch.allclose(la, lb, atol=1e-4, rtol=1e-4)
    (ga,) = torch.autograd.grad(la.logsumexp(1).sum(), xa)
    (gb,) = torch.autograd.grad(lb.logsumexp(1).sum(), xb)
    assert torch.allclose(ga, gb, atol=1e-5, rtol=1e-3)


def test_detector_channels_last_finds_the_same_faces_as_stock_mtcnn():
    from facenet_pytorch import MTCNN

    from facepriv.pipeline.faces import FaceDetector

    ims = [np.array(Image.open(p).convert("RGB")) for p in sorted(FIXTURES.rglob("*.jpg"))]
    ours = FaceDetector().detect(ims)
    stock = MTCNN(keep_all=True, post_process=False)
    assert next(stock.pnet.parameters()).is_contiguous()
    for im, d in zip(ims, ours):
        boxes, probs = stock.detect(Image.fromarray(im))
        boxes, probs = np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(probs, np.float32).reshape(-1)
        keep = probs >= 0.9
        assert len(d) == int(keep.sum()) > 0
        assert np.allclose(d.boxes, boxes[keep], atol=1e-2)


@pytest.mark.slow
def test_bench_writes_the_report(tmp_path, capsys):
    pytest.importorskip("torchattacks")
    from facepriv.cli import main

    photos = tmp_path / "photos"
    for p in sorted((SAMPLE / "test").rglob("*.jpg"))[:3]:
        (photos / p.parent.name).mkdir(parents=True, exist_ok=True)
        (photos / p.parent.name / p.name).write_bytes(p.read_bytes())
    classes = sorted(d.name for d in (SAMPLE / "test").iterdir() if d.is_dir())
    model = random_checkpoint(str(tmp_path / "m.pt"), classes)
    out = tmp_path / "bench.json"
    rc = main(["bench", str(photos), "--model", model, "--out", str(out), "--warmup", "1", "--steps", "2",
               "--views", "2", "--irv1-photos", "1", "--rss-n", "2", "--no-ray", "--no-progress",
               "--threads", "1", "--preset", "none"])
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["photos"] == 3
    assert isinstance(r["speedup_vs_naive_fgsm"], float) and r["speedup_vs_naive_fgsm"] > 0
    assert set(r["per_face_cost_ratio_pgd10"]) == {"paper-cnn", "inception-resnet-v1"}
    assert all(isinstance(v, float) and v > 0 for v in r["per_face_cost_ratio_pgd10"].values())
    assert set(r["per_face_cost_ratio_pgd10_views1"]) == {"paper-cnn", "inception-resnet-v1"}
    assert isinstance(r["rss_ratio_10n_over_n"], float) and r["rss_ratio_10n_over_n"] > 0
    assert r["rss"]["n"]["photos"] == 2 and r["rss"]["10n"]["photos"] == 20
    assert isinstance(r["speedup_vs_naive_fgsm_same_work"], float)
    for run in ("facepriv_fgsm", "facepriv_fgsm_same_work", "facepriv_pgd", "naive_fgsm", "naive_pgd"):
        assert r[run]["photos"] == 3 and r[run]["faces"] >= 1 and r[run]["photos_per_s"] > 0
    cost = r["per_face"]["inception-resnet-v1"]["views2"]
    assert cost["attack_steps_per_face"] == 2  # kappa = inf: every step forced
    assert set(cost["breakdown_s"]) >= {"t_read", "t_detect", "t_attack", "t_write", "t_judge"}
    assert "speedup_vs_naive_fgsm" in capsys.readouterr().out


def test_bench_counts_the_faces_of_each_pipeline_call(tmp_path):
    """The bare cost is timed on the attack batches the pipeline ran: the faces of each
    process() call (batch_size photos), however the manifest groups its rows into parts."""
    from facepriv.cli.bench import harness
    from facepriv.core.settings import CloakSettings

    bench = harness()
    photos = bench.list_photos([str(FIXTURES)])
    src = bench.stage(photos + [(f, "again/" + k) for f, k in photos], tmp_path / "src")  # 8 photos
    model = random_checkpoint(str(tmp_path / "m.pt"), ["Colin_Powell", "Gerhard_Schroeder"])
    s = CloakSettings(model=model, attack="fgsm", views=1, judge=False, device="cpu")
    run = bench.run_facepriv(src, tmp_path / "dst", s, batch_size=1)
    assert run["photos"] == 8 and run["faces"] >= 8
    assert len(run["faces_per_call"]) == 8 and sum(run["faces_per_call"]) == run["faces"]
    assert all(n >= 1 for n in run["faces_per_call"])
    assert bench.attack_batches(run["faces_per_call"], 32) == run["faces_per_call"]


@pytest.mark.slow
def test_bench_protect_preset_without_a_classifier(tmp_path, monkeypatch, capsys):
    """`facepriv bench PHOTOS` with a (tiny) surrogate installed and no --model: the protect preset's
    section alone - throughput, the per-face cost over the bare surrogate, the breakdown, peak RSS."""
    from test_models_cli import tiny_package

    from facepriv.cli import main
    from facepriv.models import store

    monkeypatch.setenv("FACEPRIV_HOME", str(tmp_path / "home"))
    assert main(["models", "install", "--from", str(tiny_package(tmp_path / "pkg", names=("mobilefacenet",)))]) == 0
    assert store.installed() == ["mobilefacenet"]
    photos = tmp_path / "photos"
    for p in sorted(FIXTURES.rglob("*.jpg"))[:2]:
        (photos / p.parent.name).mkdir(parents=True, exist_ok=True)
        (photos / p.parent.name / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "bench.json"
    capsys.readouterr()
    assert main(["bench", str(photos), "--out", str(out), "--preset-rss-n", "1", "--threads", "1", "--no-ray",
                 "--report-judges", "embedder:mobilefacenet,nosuchjudge", "--report-gallery", str(photos),
                 "--no-progress"]) == 0  # no --model, no --preset: protect, as surrogates are installed
    r = json.loads(out.read_text())
    assert "facepriv_fgsm" not in r and "speedup_vs_naive_fgsm" not in r  # the classifier parts need --model
    d = r["preset"]
    assert (d["preset"], d["attack"], d["surrogate"], d["device"]) == ("protect", "embed-pgd", "mobilefacenet", "cpu")
    assert d["steps"] == 40 and d["photos"] == 2 and d["faces"] >= 2 and d["errors"] == 0
    assert d["attack_steps_per_face"] == 40
    assert d["input_size"] == {"mobilefacenet": 112}
    for k in ("seconds", "photos_per_s", "faces_per_s", "pipeline_per_face_s", "bare_s", "bare_per_face_s", "ratio",
              "surrogate_in_run_over_bare", "ratio_over_in_run_surrogate"):
        assert isinstance(d[k], float) and d[k] > 0, k
    assert r["preset_per_face_cost_ratio"] == d["ratio"]
    assert sum(d["faces_per_call"]) == d["faces"] and set(d["fwd_bwd_s_by_batch"]) == {str(n) for n in d["faces_per_call"]}
    b = d["breakdown_s"]
    assert list(b) == ["read", "detect", "align", "surrogate", "quality", "write_sim", "budget", "attack_other",
                       "encode", "write", "judge", "other"]
    for k in ("read", "detect", "align", "surrogate", "quality", "write_sim", "budget", "encode", "judge"):
        assert b[k] > 0, k
    assert sum(b.values()) == pytest.approx(d["seconds"], rel=1e-6)  # the parts are disjoint and cover the run
    clock = d["stage_clock_s"]
    assert clock["align_bwd"] > 0 and clock["net_bwd"] > 0 and clock["gradient"] > clock["grad_fwd"] > 0
    assert d["rss"]["n"]["photos"] == 1 and d["rss"]["10n"]["photos"] == 10
    assert d["rss"]["n"]["peak_rss_bytes"] > 0 and d["rss_ratio_10n_over_n"] > 0
    rep = d["report"]  # the report timed beside the cloak, on the same written files
    assert rep["judges"] == ["embedder:mobilefacenet"] and rep["not_installed"] == ["nosuchjudge"]
    here = rep["in_process"]
    assert here["report"]["faces_measured"] == 2 and here["report"]["workers"] == 0
    assert here["report"]["per_face_s"] > 0 and here["cloak_per_face_s"] == pytest.approx(d["seconds"] / d["faces"])
    assert here["report_over_cloak_per_face"] == pytest.approx(here["report"]["per_face_s"] / here["cloak_per_face_s"])
    assert r["report_over_cloak_per_face_in_process"] == here["report_over_cloak_per_face"] and "ray" not in rep
    assert here["report"]["judge_names"] == ["tfjs:mobilefacenet"]
    assert here["report"]["verification"]["tfjs:mobilefacenet"] is not None, str(here["report"])  # it judged
    warm = here["report_gallery_enrolled"]  # the same report once the gallery is enrolled (report cache)
    assert warm["faces_measured"] == 2 and warm["per_face_s"] > 0 and warm["gallery"] == str(photos)
    assert r["report_over_cloak_per_face_in_process_gallery_enrolled"] == pytest.approx(
        warm["per_face_s"] / here["cloak_per_face_s"])
    table = capsys.readouterr().out
    assert "report (in process, 0 worker(s), judges embedder:mobilefacenet" in table
    assert "with the gallery enrolled before" in table
    assert "preset protect (embed-pgd on mobilefacenet, 40 steps" in table and "ratio" in table
    assert "budget" in table and "naive" not in table


def test_bench_without_torchattacks_says_how_to_install(monkeypatch, tmp_path):
    import builtins

    from facepriv.cli.bench import harness

    bench = harness()
    from facepriv.errors import FacePrivError

    real = builtins.__import__

    def no_ta(name, *a, **k):
        if name == "torchattacks":
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_ta)
    with pytest.raises(FacePrivError, match=r"pip install -e '\.\[bench\]'"):
        bench.run_bench(bench.BenchOptions(photo_dirs=[str(tmp_path)], model="m.pt"))
