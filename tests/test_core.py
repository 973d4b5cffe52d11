"""Core invariants: attacks, geometry, manifest round-trip, checkpoints, CLI end to end on local Ray."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from facepriv.core import geometry
from facepriv.io import manifest
from facepriv.attacks import fgsm, pgd
from facepriv.errors import CheckpointError
from facepriv.models.checkpoint import load_checkpoint, save_checkpoint
from facepriv.models.paper_cnn import PaperCNN

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sample"


def _model(n=5, seed=0):
    torch.manual_seed(seed)
    return PaperCNN(n).eval()


def _x(b=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, 3, 160, 160, generator=g) * 255).round() / 255


def test_paper_cnn_matches_fig6_parameter_counts():
    m = PaperCNN(55)
    counts = [p.numel() for p in m.parameters()]
    assert sum(counts) == 1_083_335  # the figure's total for 55 classes
    assert m(torch.zeros(2, 3, 160, 160)).shape == (2, 55)


def test_fgsm_within_eps_clamped_quantised_and_loss_rises():
    m, x = _model(), _x()
    y = m(x).argmax(1)
    adv = fgsm(m, x, y, eps=8)
    d = (adv - x).abs().max().item() * 255
    assert d <= 8 + 1e-3
    assert adv.min() >= 0 and adv.max() <= 1
    # from quantised pixels a step of 8/255 lands on quantised pixels (or the clamp)
    q = adv * 255
    assert torch.allclose(q, q.round(), atol=1e-3)
    with torch.no_grad():
        assert F.cross_entropy(m(adv), y) > F.cross_entropy(m(x), y)


def test_targeted_fgsm_lowers_target_loss():
    m, x = _model(), _x()
    t = torch.full((len(x),), 3)
    adv = fgsm(m, x, t, eps=4, targeted=True)
    with torch.no_grad():
        assert F.cross_entropy(m(adv), t) < F.cross_entropy(m(x), t)


def test_pgd_within_eps_and_early_stop():
    m, x = _model(), _x()
    y = m(x).argmax(1)
    adv, used = pgd(m, x, y, eps=4, steps=10)
    assert (adv - x).abs().max().item() * 255 <= 4 + 1e-3
    assert adv.min() >= 0 and adv.max() <= 1
    assert used.max() <= 10
    with torch.no_grad():
        assert F.cross_entropy(m(adv), y) > F.cross_entropy(m(x), y)


class _MeanMargin(torch.nn.Module):
    """Two classes; class 0's logit is 255 * (mean pixel - 0.5): a face's margin in 0-255 units
    falls by exactly 1 per signed step of alpha = 1/255."""

    def forward(self, x):
        s = 255 * (x.flatten(1).mean(1) - 0.5)
        return torch.stack([s, torch.zeros_like(s)], 1)


def test_pgd_early_stop_stops_a_fooled_face_and_runs_the_others():
    # margins 1.5 and 10: the first face is fooled after 2 steps (1.5 -> 0.5 -> -0.5) and stops
    # there; the second cannot be fooled within eps 4 and uses all 10 steps
    x = torch.stack([torch.full((3, 8, 8), 0.5 + 1.5 / 255), torch.full((3, 8, 8), 0.5 + 10 / 255)])
    m, y = _MeanMargin(), torch.zeros(2, dtype=torch.long)
    adv, used = pgd(m, x, y, eps=4, steps=10)
    assert used.tolist() == [2, 10]
    early = used < 10
    assert early.any()
    with torch.no_grad():
        assert (m(adv).argmax(1)[early] != y[early]).all()
        assert (m(adv).argmax(1)[~early] == y[~early]).all()
    assert torch.allclose((x - adv)[0], torch.full((3, 8, 8), 2 / 255))  # stopped: no third step
    assert torch.allclose((x - adv)[1], torch.full((3, 8, 8), 4 / 255))  # held at the eps ball
    _, used = pgd(m, x, y, eps=4, steps=10, early_stop=False)
    assert used.tolist() == [10, 10]


class _AverageSaysFooled(torch.nn.Module):
    """Averaged logits call every face fooled (class 1 wins); the plain crop's still say class 0."""

    def __init__(self, plain: bool):
        super().__init__()
        self.plain = plain
        self.plain_logits = None

    def forward(self, x):
        s = x.flatten(1).mean(1, keepdim=True)
        if self.plain:
            self.plain_logits = torch.cat([s.detach() * 0 + 5, s.detach() * 0], 1)
        return torch.cat([s, s * 0 + 3], 1)


def test_pgd_early_stop_needs_the_plain_crop_fooled_too():
    x = torch.full((2, 3, 8, 8), 0.5)
    y = torch.zeros(2, dtype=torch.long)
    _, used = pgd(_AverageSaysFooled(plain=False), x, y, eps=4, steps=5, kappa=1.0)
    assert used.tolist() == [0, 0]  # the average alone stops at once
    _, used = pgd(_AverageSaysFooled(plain=True), x, y, eps=4, steps=5, kappa=1.0)
    assert used.tolist() == [5, 5]  # the plain crop is not fooled: keep moving


def test_crop_model_gradients_reach_region_pixels_and_select():
    net = _model()
    regions = [torch.rand(3, 120, 100), torch.rand(3, 90, 140)]
    x = geometry.pack(regions).requires_grad_(True)
    boxes = [(10, 10, 90, 110), (20, 5, 100, 85)]
    cm = geometry.CropModel(net, boxes, views=geometry.JITTER_VIEWS[:3],
                            sizes=[tuple(r.shape[1:]) for r in regions])
    cm(x).sum().backward()
    g = x.grad.abs()
    assert g[0, :, 10:110, 10:90].sum() > 0
    assert g[0, :, 115:, :].sum() == 0  # outside the crop (and padding) untouched
    sub = cm.select([1])
    assert torch.allclose(sub(x[1:2]), cm(x)[1:2], atol=1e-5)
    plain = geometry.CropModel(net, boxes)(x)  # view 0 is the un-jittered crop
    assert torch.allclose(cm.plain_logits, plain.detach(), atol=1e-5)


def test_net_over_views_one_call_or_one_per_view_same_logits(monkeypatch):
    net, calls = _model(), []
    orig = net.forward
    monkeypatch.setattr(net, "forward", lambda x: (calls.append(len(x)), orig(x))[1])
    crops = list(_x(12).split(4))  # 3 views x 4 faces
    whole = geometry.net_over_views(net, crops)
    assert calls == [12] and whole.shape == (3, 4, 5)
    monkeypatch.setattr(geometry, "MAX_CROPS_PER_CALL", 8)
    split = geometry.net_over_views(net, crops)
    assert calls == [12, 4, 4, 4]
    assert torch.allclose(whole, split, atol=1e-5)


def test_crop_resize_is_each_crop_resized_alone_forward_and_backward():
    # crop_resize unbinds the batch once; values and gradients are those of slicing each crop
    g = torch.Generator().manual_seed(3)
    x = torch.rand(3, 3, 200, 180, generator=g, requires_grad=True)
    boxes = [(3, 4, 40, 41), (0, 0, 180, 200), (10, 5, 170, 165)]  # upscaled, downscaled, equal
    out = geometry.crop_resize(x, boxes, 160)
    ref = torch.cat([F.interpolate(x[i : i + 1, :, y0:y1, x0:x1], size=(160, 160), mode="bilinear",
                                   antialias=True, align_corners=False) for i, (x0, y0, x1, y1) in enumerate(boxes)])
    assert torch.equal(out, ref)
    w = torch.randn(out.shape, generator=g)
    (ga,) = torch.autograd.grad((out * w).sum(), x)
    (gb,) = torch.autograd.grad((ref * w).sum(), x)
    assert torch.allclose(ga, gb, atol=1e-5)
    assert ga[0, :, 41:, :].abs().sum() == 0 and ga[0, :, :, 40:].abs().sum() == 0


def test_geometry_boxes():
    b = geometry.square_box([10, 20, 30, 60])
    assert np.allclose(b[2] - b[0], 40) and np.allclose(b[3] - b[1], 40)
    assert geometry.int_box([-5, -5, 500, 500], 100, 80) == (0, 0, 100, 80)
    assert geometry.nearest_to_centre(np.array([[0, 0, 10, 10], [45, 45, 55, 55]], np.float32), 100, 100) == 1
    assert np.isclose(geometry.iou(np.array([[0, 0, 10, 10]]), np.array([[5, 0, 15, 10]]))[0, 0], 1 / 3)


def test_search_windows_merge_overlaps_and_fall_back_to_the_whole_photo():
    # two faces far apart: two windows, each the box grown by half its side on every side
    wins = geometry.search_windows(np.array([[100, 100, 140, 140], [500, 300, 560, 360]], np.float32), 1000, 800)
    assert sorted(wins) == [(80, 80, 160, 160), (470, 270, 590, 390)]
    # overlapping windows become one (their bounding rectangle); none overlap afterwards
    wins = geometry.search_windows(np.array([[100, 100, 140, 140], [150, 100, 190, 140],
                                             [600, 600, 620, 620]], np.float32), 1000, 800, min_side=40)
    assert sorted(wins) == [(80, 80, 210, 160), (590, 590, 630, 630)]
    # windows covering most of the photo: the whole photo
    assert geometry.search_windows(np.array([[10, 10, 90, 90]], np.float32), 100, 100) == [(0, 0, 100, 100)]


def test_detect_near_finds_the_faces_detect_finds():
    from facepriv.pipeline.faces import FaceDetector

    canvas = np.full((800, 1200, 3), 128, np.uint8)  # two portraits far apart on a large photo
    for (x, y), f in zip([(40, 60), (860, 480)], sorted((SAMPLE / "test").glob("*/*_0011.jpg"))[:2]):
        canvas[y : y + 250, x : x + 250] = np.asarray(Image.open(f).convert("RGB"))
    det = FaceDetector()
    full = det.detect([canvas])[0]
    assert len(full) >= 2  # LFW photos may hold a second face in the background
    wins = geometry.search_windows(full.boxes, 1200, 800, min_side=40)
    assert 2 <= len(wins) <= len(full) and sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in wins) < 0.2 * 1200 * 800
    near = det.detect_near([canvas], [full.boxes])[0]
    assert len(near) == len(full)
    # the same faces, boxes and landmarks as the whole-photo detection (to float rounding)
    j = geometry.iou(full.boxes, near.boxes).argmax(1)
    assert np.allclose(near.boxes[j], full.boxes, atol=1e-2) and np.allclose(near.probs[j], full.probs, atol=1e-4)
    assert np.allclose(near.landmarks[j], full.landmarks, atol=1e-2)
    assert len(det.detect_near([canvas], [np.zeros((0, 4), np.float32)])[0]) == len(full)  # no boxes: whole photo


def test_paper_cnn_pool_then_relu_is_relu_then_pool_exactly():
    net = _model()
    ref = torch.nn.Sequential(net.features[0], torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                              net.features[3], torch.nn.ReLU(), torch.nn.MaxPool2d(3),
                              net.features[6], torch.nn.ReLU(), torch.nn.MaxPool2d(3))
    x = (_x(2) - 0.5).requires_grad_(True)  # negative inputs too: windows whose max is <= 0
    out = net(x)
    want = net.classifier(ref(x * 255.0))
    assert torch.equal(out, want)
    (ga,) = torch.autograd.grad(out[:, 1].sum(), x)
    (gb,) = torch.autograd.grad(want[:, 1].sum(), x)
    assert torch.allclose(ga, gb, atol=1e-6)
    assert list(PaperCNN(5).state_dict()) == [f"features.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias")] + [
        f"classifier.{i}.{p}" for i in (1, 3) for p in ("weight", "bias")]


def test_manifest_round_trip(tmp_path):
    row = manifest.empty_row(run_id="r", source_key="a/b.jpg", status="ok", n_faces=1, psnr=40.0,
                             faces=[{"box": [1, 2, 3, 4], "prob": 0.99, "landmarks": [0.0] * 10,
                                     "fooled": True, "judged": True, "clean_pred": "A", "cloaked_pred": "B"}])
    data = manifest.table_bytes([row])
    t = pq.read_table(io.BytesIO(data))
    assert t.schema.equals(manifest.SCHEMA)
    back = t.to_pylist()[0]
    assert back["source_key"] == "a/b.jpg" and back["faces"][0]["cloaked_pred"] == "B"
    assert back["faces"][0]["box"] == [1.0, 2.0, 3.0, 4.0]


def test_checkpoint_round_trip_and_bad_files(tmp_path):
    m = _model(3)
    p = tmp_path / "m.pt"
    sha = save_checkpoint(str(p), m, "paper-cnn", ["a", "b", "c"], train_acc=0.5)
    L = load_checkpoint(str(p))
    assert L.sha256 == sha and L.classes == ["a", "b", "c"] and L.meta["train_acc"] == 0.5
    x = _x(2)
    assert torch.allclose(L.model(x), m(x), atol=1e-5)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt or not a facepriv checkpoint"):
        load_checkpoint(str(bad))
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a facepriv checkpoint"):
        load_checkpoint(str(tmp_path / "other.pt"))
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(str(tmp_path / "missing.pt"))


@pytest.mark.slow
def test_cli_cloak_end_to_end_on_local_ray(tmp_path, capsys):
    """Cloak a few real photos (incl. a no-face photo and an RGBA PNG) on local Ray, judge on files."""
    from facepriv.cli import main

    src = tmp_path / "src"
    for name in ("Colin_Powell", "Tony_Blair"):
        (src / name).mkdir(parents=True)
        for f in sorted((SAMPLE / "test" / name).iterdir())[:2]:
            shutil.copy(f, src / name / f.name)
    shutil.copy(SAMPLE / "test" / "landscape_noface.jpg", src / "landscape_noface.jpg")
    shutil.copy(SAMPLE / "test" / "portrait_rgba.png", src / "portrait_rgba.png")
    classes = sorted(p.name for p in (SAMPLE / "train").iterdir())
    ckpt = tmp_path / "model.pt"
    save_checkpoint(str(ckpt), _model(len(classes)), "paper-cnn", classes)
    dst = tmp_path / "dst"
    os.environ["RAY_AUTH_MODE"] = "disabled"
    rc = main([
        "cloak", str(src), str(dst), "--model", str(ckpt), "--attack", "pgd", "--eps", "4", "--steps", "3",
        "--views", "1", "--workers", "1", "--no-progress"])
    assert rc == 0
    runs = list((dst / "_facepriv" / "runs").iterdir())
    assert len(runs) == 1
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["inputs"] == 6 and summary["errors"] == 0 and summary["no_face"] == 1
    rows = pq.read_table(runs[0] / "manifest").to_pylist()
    assert sorted(r["source_key"] for r in rows) == sorted(
        str(p.relative_to(src)) for p in src.rglob("*") if p.is_file())
    for r in rows:
        out = Image.open(dst / r["source_key"])
        orig = Image.open(src / r["source_key"])
        assert out.size == orig.size and out.format == orig.format
        if r["status"] == "ok":
            assert r["faces"] and all(f["cloaked_pred"] is not None for f in r["faces"])
    assert Image.open(dst / "portrait_rgba.png").mode == "RGBA"
    assert (src / "Colin_Powell").exists() and not (src / "_facepriv").exists()


def test_memory_trim_is_safe_and_can_be_turned_off(monkeypatch):
    """trim() calls malloc_trim(0) when libc has it and says so; FACEPRIV_MALLOC_TRIM=0 skips it;
    without malloc_trim it is a no-op returning False. On glibc (Linux CI) the real call is True."""
    import platform

    from facepriv.runs import memory

    calls: list[int] = []
    fake = type("Libc", (), {"malloc_trim": staticmethod(lambda pad: calls.append(pad) or 1)})()
    monkeypatch.setattr(memory, "_libc", fake)
    assert memory.trim() is True and calls == [0]
    monkeypatch.setenv("FACEPRIV_MALLOC_TRIM", "0")
    assert memory.trim() is False and calls == [0], "turned off: malloc_trim must not run"
    monkeypatch.delenv("FACEPRIV_MALLOC_TRIM")
    monkeypatch.setattr(memory, "_libc", False)  # no libc with malloc_trim (musl, macOS)
    assert memory.trim() is False
    monkeypatch.setattr(memory, "_libc", None)  # the real library, loaded again
    assert memory.trim() is (platform.libc_ver()[0] == "glibc")


