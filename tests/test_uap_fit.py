"""The universal perturbation's shell: crops dataset, outputs and resume, the distributed loop on
local Ray (coordinator + 2 workers) against the single-process fit, and the CLI on
examples/sample. The toy is the one of test_uap.py: 3 clean classes plus a "sink" class
learned from faces stamped with a fixed pattern, so a universal perturbation exists."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from facepriv.pipeline import crops as crops_mod
from facepriv.attacks.uap import merge_updates
from facepriv.errors import FacePrivError
from facepriv.distributed.uap_fit import FitSettings, fit_distributed, fit_local, load_state, paths, save_outputs

from helpers import backdoor_toy

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "sample"
SIZE = 8


@pytest.fixture(scope="module")
def toy():
    net, faces, labels, _ = backdoor_toy(SIZE)
    u8 = faces.mul(255).round().byte()
    return net, u8, [str(int(y)) for y in labels]


def _crops_file(tmp_path, toy) -> str:
    net, u8, ids = toy
    path = str(tmp_path / "crops.parquet")
    crops_mod.save(path, crops_mod.Crops(u8, ids, [f"{i}/{k}.jpg" for k, i in enumerate(ids)],
                                          {"size": SIZE, "scale": 1.0, "source": "toy", "photos": len(ids),
                                           "faces": len(ids), "skipped": {}}))
    return path


def test_crops_dataset_round_trip(tmp_path, toy):
    path = _crops_file(tmp_path, toy)
    c = crops_mod.load(path)
    assert torch.equal(c.faces, toy[1]) and c.identities == toy[2] and c.meta["size"] == SIZE
    assert pq.read_schema(path).names == ["identity", "source_key", "crop"]
    assert torch.equal(c.floats([2, 0]), toy[1][[2, 0]].float() / 255)


def test_merge_rule_is_sum_then_project_and_one_worker_is_its_own_v():
    g = torch.Generator().manual_seed(1)
    v = (torch.rand(3, 4, 4, generator=g) - 0.5) * 0.05
    a, b = (torch.rand(3, 4, 4, generator=g) - 0.5) * 0.06, (torch.rand(3, 4, 4, generator=g) - 0.5) * 0.06
    merged = merge_updates(v, [a, b], 10.0, "linf")
    assert torch.allclose(merged, (v + a + b).clamp(-10 / 255, 10 / 255))
    assert torch.equal(merged, merge_updates(v, [b, a], 10.0, "linf"))
    # a worker that changed nothing does not pull v back (a mean would halve a's change)
    assert torch.allclose(merge_updates(v, [a, torch.zeros_like(a)], 10.0), merge_updates(v, [a], 10.0))
    w = (v + a).clamp(-10 / 255, 10 / 255)  # one worker's own projected v
    assert torch.allclose(merge_updates(v, [w - v], 10.0), w)


@pytest.mark.slow
def test_distributed_fit_matches_single_process(tmp_path, toy):
    """1 worker = the single-process loop pass for pass; 2 workers within 10 points of it."""
    import ray

    net, u8, _ = toy
    path = _crops_file(tmp_path, toy)
    faces = u8.float() / 255
    s = FitSettings(xi=16.0, delta=0.05, max_passes=3, batch_size=1, seed=0)
    v_ref, h_ref = fit_local(faces, net, s, log=lambda m: None)
    assert h_ref[-1]["fooling_rate"] > 0.5, "the toy should be foolable"
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.shutdown()  # an earlier test's in-process run may have left its Ray instance up
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        out1 = str(tmp_path / "one" / "v.npy")
        v1, h1 = fit_distributed(net, path, SIZE, s, 1, out=out1, torch_threads=1, log=lambda m: None)
        assert np.allclose(v1, v_ref, atol=1e-6)
        assert [h["fooling_rate"] for h in h1] == pytest.approx([h["fooling_rate"] for h in h_ref])
        v2, h2 = fit_distributed(net, path, SIZE, s, 2, torch_threads=1, log=lambda m: None)
    finally:
        ray.shutdown()
    assert np.abs(v2).max() <= 16 / 255 + 1e-7
    assert all(h["workers"] == 2 and h["faces"] == len(u8) for h in h2)
    assert abs(h2[-1]["fooling_rate"] - h_ref[-1]["fooling_rate"]) <= 0.10
    # the recorded rate is the merged v's, aggregated over both shards
    from facepriv.attacks.uap import fooling_rate

    assert h2[-1]["fooling_rate"] == pytest.approx(fooling_rate(net, faces, torch.from_numpy(v2.copy())))
    # outputs: npy, png, history parquet, json sidecar
    p = paths(out1)
    assert np.load(p["npy"]).dtype == np.float32 and np.load(p["npy"]).shape == (3, SIZE, SIZE)
    assert pq.read_table(p["history"]).column_names[:5] == ["pass", "fooling_rate", "norm", "faces", "seconds"]
    assert json.loads(Path(p["json"]).read_text())["passes"] == len(h1)
    assert Path(p["png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_continues_and_refuses_other_settings(tmp_path, toy):
    net, u8, _ = toy
    faces = u8.float() / 255
    out = str(tmp_path / "v.npy")
    info = {"model_sha256": "m", "crops_faces": len(u8), "crops_source": "toy", "size": SIZE}
    s3 = FitSettings(xi=8.0, delta=0.0, max_passes=3)
    v_full, h_full = fit_local(faces, net, s3, log=lambda m: None)
    s2 = FitSettings(xi=8.0, delta=0.0, max_passes=2)
    fit_local(faces, net, s2, out=out, info=info, log=lambda m: None)
    v0, hist = load_state(out, s3, info)
    assert len(hist) == 2
    v, h = fit_local(faces, net, s3, out=out, info=info, v0=v0, history=hist, log=lambda m: None)
    assert [r["pass"] for r in h] == [1, 2, 3]
    assert np.allclose(v, v_full, atol=1e-6)
    with pytest.raises(FacePrivError, match="xi"):
        load_state(out, FitSettings(xi=4.0), info)
    with pytest.raises(FacePrivError, match="model_sha256"):
        load_state(out, s3, {**info, "model_sha256": "other"})


def test_save_outputs_units(tmp_path):
    v = torch.full((3, 4, 4), 0.02)
    out = str(tmp_path / "u.npy")
    save_outputs(out, v, [], FitSettings(xi=5.0), {})
    side = json.loads(Path(paths(out)["json"]).read_text())
    assert side["shape"] == [3, 4, 4] and side["norm_255"] == pytest.approx(5.1) and side["passes"] == 0


@pytest.mark.slow
def test_cli_fit_and_apply_on_sample(tmp_path):
    """uap fit (single process and 2 Ray workers) then uap apply with judging, on examples/sample."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    model = tmp_path / "m.pt"
    from facepriv.models.registry import build_model
    from facepriv.models.checkpoint import save_checkpoint

    classes = sorted(p.name for p in (SAMPLE / "train").iterdir() if p.is_dir())
    torch.manual_seed(0)
    save_checkpoint(str(model), build_model("paper-cnn", len(classes)), "paper-cnn", classes)

    def run(*args):
        r = subprocess.run([sys.executable, "-m", "facepriv.cli", *args], capture_output=True, text=True,
                           env=env, cwd=tmp_path, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        return r

    out = tmp_path / "uap" / "v.npy"
    r = run("uap", "fit", str(SAMPLE / "train"), "--model", str(model), "--xi", "10", "--max-passes", "1",
            "--out", str(out), "--workers", "0", "--no-progress")
    assert "pass   1: fooling rate" in r.stderr
    v = np.load(out)
    assert v.shape == (3, 160, 160) and np.abs(v).max() <= 10 / 255 + 1e-7
    assert (tmp_path / "uap" / "v.crops.parquet").exists()
    # resumed (same settings), reusing the crops dataset (no MTCNN): one more pass, 2 in total
    r = run("uap", "fit", str(SAMPLE / "train"), "--model", str(model), "--xi", "10", "--max-passes", "2",
            "--out", str(out), "--workers", "0", "--delta", "0")
    assert "reusing crops dataset" in r.stderr and "resuming" in r.stderr and "pass   2: fooling rate" in r.stderr
    assert pq.read_table(paths(str(out))["history"]).column("pass").to_pylist() == [1, 2]
    dst = tmp_path / "dst"
    r = run("uap", "apply", str(SAMPLE / "test"), str(dst), "--uap", str(out), "--model", str(model),
            "--labels", "folder", "--workers", "1", "--no-progress")
    summary = json.loads(r.stdout)
    assert summary["attack"] == "uap" and summary["errors"] == 0 and summary["faces"] > 0
    assert summary["eps"] == pytest.approx(float(np.abs(np.load(out)).max()) * 255, abs=0.01)
    assert summary["faces_judged"] >= 0 and summary["faces_redetected"] > 0
    # without a model (in process, no Ray): cloaked, nothing judged, fooling rate null
    from facepriv.core.settings import CloakSettings
    from facepriv.distributed.runner import run_in_process

    s2 = run_in_process(str(SAMPLE / "test"), str(tmp_path / "dst2"),
                        CloakSettings(attack="uap", eps=10.0, labels="folder", extra={"uap": str(out)}))
    assert s2["faces"] > 0 and s2["errors"] == 0 and s2["faces_judged"] == 0 and s2["fooling_rate"] is None
