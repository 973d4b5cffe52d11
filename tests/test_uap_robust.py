"""`--method robust`: the apply chain, and the fit through it (single process, and sharded with
the sum-then-project merge on local Ray), on the backdoor toy of test_uap.py."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch

from facepriv.attacks import uap_robust
from facepriv.attacks.uap import clean_predictions, fooled_by, merge_updates
from facepriv.distributed.uap_fit import FitSettings, ShardFitter, fit_distributed, fit_local

from helpers import backdoor_toy

SIZE = 8


@pytest.fixture(scope="module")
def toy():
    net, faces, labels, u = backdoor_toy(SIZE)
    return net, faces.mul(255).round().div(255), u


def test_chain_at_the_model_size_is_the_quantised_sum_and_passes_gradients():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 16, 16, generator=g)
    v = ((torch.rand(3, 16, 16, generator=g) - 0.5) * 0.1).requires_grad_(True)
    z = uap_robust.chain(x, v, 16)
    assert torch.allclose(z, ((x + v).clamp(0, 1) * 255).round() / 255, atol=1e-6)
    (gv,) = torch.autograd.grad(z.sum(), v)
    assert gv.abs().sum() > 0  # straight through the uint8 step
    # a shifted re-crop moves the content: not the same pixels, same shape
    shifted = uap_robust.chain(x, v, 16, shift=torch.full((4, 2), 0.1), scale=torch.ones(4))
    assert shifted.shape == z.shape and not torch.allclose(shifted, z)


def test_robust_fit_fools_the_toy_through_the_chain_within_xi(toy):
    net, faces, u = toy
    s = FitSettings(xi=16.0, delta=0.0, max_passes=6, method="robust", robust_batch=10, box_min=6, box_max=10,
                    kappa=2.0, lr=0.25)
    v, hist = fit_local(faces, net, s, log=lambda m: None)
    v = torch.from_numpy(v)
    assert [h["pass"] for h in hist] == list(range(1, 7)) and v.abs().max() <= 16 / 255 + 1e-7
    cp = clean_predictions(net, faces)
    rate = float(uap_robust.chain_fooled_by(net, faces, v, cp, (6, 10)).float().mean())
    assert rate == pytest.approx(hist[-1]["fooling_rate"])
    zero = float(uap_robust.chain_fooled_by(net, faces, torch.zeros_like(v), cp, (6, 10)).float().mean())
    assert zero < 0.2 and rate > 0.5, (zero, [h["fooling_rate"] for h in hist])
    # the planted direction is what it found: v correlates with u
    assert float(torch.nn.functional.cosine_similarity(v.flatten(), u.flatten(), dim=0)) > 0.3
    # and it also fools on the model's own grid (no resampling)
    assert float(fooled_by(net, faces, v, cp).float().mean()) > 0.5


@pytest.mark.slow
def test_robust_distributed_one_worker_is_the_single_process_fit(tmp_path, toy):
    import ray

    from facepriv.pipeline import crops as crops_mod

    net, faces, _ = toy
    u8 = faces.mul(255).round().byte()
    path = str(tmp_path / "crops.parquet")
    ids = [str(i % 3) for i in range(len(u8))]
    crops_mod.save(path, crops_mod.Crops(u8, ids, [f"{i}/{k}.jpg" for k, i in enumerate(ids)],
                                          {"size": SIZE, "scale": 1.0, "source": "toy", "photos": len(ids),
                                           "faces": len(ids), "skipped": {}}))
    s = FitSettings(xi=16.0, delta=0.0, max_passes=3, method="robust", robust_batch=10, box_min=6, box_max=10,
                    kappa=2.0)
    v_ref, h_ref = fit_local(u8.float() / 255, net, s, log=lambda m: None)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.shutdown()  # an earlier test's in-process run may have left its Ray instance up
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        v1, h1 = fit_distributed(net, path, SIZE, s, 1, torch_threads=1, log=lambda m: None)
        v2, h2 = fit_distributed(net, path, SIZE, s, 2, torch_threads=1, log=lambda m: None)
        one = dataclasses.replace(s, max_passes=1)
        v_pass1, _ = fit_distributed(net, path, SIZE, one, 2, torch_threads=1, log=lambda m: None)
    finally:
        ray.shutdown()
    # the merge rule: the workers' epoch deltas (each over its shard, from the same v) are summed,
    # then projected - so two workers together take as many steps per pass as one process
    shards = [ShardFitter(net, path, k, 2, dataclasses.asdict(one)) for k in range(2)]
    deltas = [torch.from_numpy(w.run_pass(np.zeros((3, SIZE, SIZE), np.float32), 1)[0]) for w in shards]
    assert all(d.abs().sum() > 0 for d in deltas)
    expected = merge_updates(torch.zeros(3, SIZE, SIZE), deltas, one.xi, one.norm).numpy()
    assert np.allclose(v_pass1, expected, atol=1e-6)
    assert not np.allclose(v_pass1, merge_updates(torch.zeros(3, SIZE, SIZE), deltas, one.xi, one.norm,
                                                  weights=[0.5, 0.5]).numpy(), atol=1e-6)
    assert np.allclose(v1, v_ref, atol=1e-6)
    assert [h["fooling_rate"] for h in h1] == pytest.approx([h["fooling_rate"] for h in h_ref])
    assert np.abs(v2).max() <= 16 / 255 + 1e-7 and h2[-1]["workers"] == 2
    assert abs(h2[-1]["fooling_rate"] - h_ref[-1]["fooling_rate"]) <= 0.15


def test_cli_options_for_the_robust_method():
    from facepriv.cli import build_parser
    from facepriv.errors import FacePrivError
    from facepriv.cli.uap import settings_from_args

    p = build_parser()
    s = settings_from_args(p.parse_args(["uap", "fit", "data", "--model", "m.pt", "--method", "robust"]))
    assert s.method == "robust" and s.max_passes == 60 and s.box_range == (96, 144) and s.kappa == 5.0
    s = settings_from_args(p.parse_args(["uap", "fit", "data", "--model", "m.pt"]))
    assert s.method == "deepfool" and s.max_passes == 10
    s = settings_from_args(p.parse_args(["uap", "fit", "data", "--model", "m.pt", "--method", "robust",
                                         "--box-range", "40,200", "--max-passes", "5"]))
    assert s.box_range == (40, 200) and s.max_passes == 5
    with pytest.raises(FacePrivError, match="box-range"):
        settings_from_args(p.parse_args(["uap", "fit", "data", "--model", "m.pt", "--box-range", "big"]))
