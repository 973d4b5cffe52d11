"""Universal perturbation (Algorithm 1), its projection, and the merge rule the distributed
loop uses. The toy: 3 clean classes plus a 4th "sink" class learned from faces of any class
stamped with a fixed pattern u (|u| = 12.75/255), so a universal perturbation exists (u
itself fools ~97 % of the clean faces) and DeepFool has to find it face by face."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from facepriv.attacks.uap import (
    clean_predictions,
    fooled_by,
    fooling_rate,
    merge_updates,
    pass_seed,
    perturbation_norm,
    project,
    uap_pass_shard,
    universal_perturbation,
)

from helpers import backdoor_toy

SIZE = 8


@pytest.fixture(scope="module")
def toy():
    net, faces, _, u = backdoor_toy(SIZE)
    return net, faces, u


# --- projection and merge rule (pure tensors) ------------------------------------------------

@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_project_bounds_and_idempotent(norm):
    g = torch.Generator().manual_seed(1)
    xi = 10.0 if norm == "linf" else 200.0
    for scale in (0.001, 0.1, 3.0):
        v = scale * torch.randn(3, SIZE, SIZE, generator=g)
        p = project(v, xi, norm)
        assert perturbation_norm(p, norm) <= xi * (1 + 1e-5)
        assert torch.allclose(project(p, xi, norm), p)
        if perturbation_norm(v, norm) <= xi:
            assert torch.equal(p, v)  # inside the ball: untouched
    v = torch.randn(3, SIZE, SIZE, generator=g)
    if norm == "l2":  # L2 keeps the direction
        assert torch.allclose(nn.functional.cosine_similarity(project(v, xi, norm).flatten(), v.flatten(), 0), torch.tensor(1.0))
    else:
        assert torch.equal(project(v, xi, norm), v.clamp(-xi / 255, xi / 255))
    with pytest.raises(ValueError):
        project(v, xi, "l1")


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_merge_rule_properties(norm):
    g = torch.Generator().manual_seed(2)
    xi = 10.0 if norm == "linf" else 150.0
    v = project(0.05 * torch.randn(3, SIZE, SIZE, generator=g), xi, norm)
    a, b, c = (0.05 * torch.randn(3, SIZE, SIZE, generator=g) for _ in range(3))
    # the norm bound always holds
    for dvs in ([a], [a, b, c], [10 * a, -7 * b]):
        assert perturbation_norm(merge_updates(v, dvs, xi, norm), norm) <= xi * (1 + 1e-5)
    # one worker: equals its own (projected) step
    assert torch.allclose(merge_updates(v, [a], xi, norm), project(v + a, xi, norm))
    # a worker's delta = v_w - v with v_w in the ball: the merge returns v_w exactly
    v_w = project(v + a, xi, norm)
    assert torch.allclose(merge_updates(v, [v_w - v], xi, norm), v_w, atol=1e-7)
    # order of workers does not matter; [a, b] merges like [a + b]; stacked tensor == list
    m = merge_updates(v, [a, b, c], xi, norm)
    assert torch.allclose(m, merge_updates(v, [c, a, b], xi, norm), atol=1e-7)
    assert torch.allclose(merge_updates(v, [a, b], xi, norm), merge_updates(v, [a + b], xi, norm), atol=1e-7)
    assert torch.allclose(m, merge_updates(v, torch.stack([a, b, c]), xi, norm))
    # idle workers (zero delta) do not pull v back; no updates leave v as it is
    assert torch.allclose(merge_updates(v, [a, torch.zeros_like(a)], xi, norm), merge_updates(v, [a], xi, norm))
    assert torch.allclose(merge_updates(v, [], xi, norm), v)
    # weights: a mean is weights 1/W
    assert torch.allclose(merge_updates(v, [a, b], xi, norm, weights=[0.5, 0.5]), project(v + (a + b) / 2, xi, norm))
    with pytest.raises(ValueError):
        merge_updates(v, [a, b], xi, norm, weights=[1.0])
    with pytest.raises(ValueError):
        merge_updates(v, [a[:1]], xi, norm)


# --- the algorithm on the toy ----------------------------------------------------------------

def test_fooling_rate_basics(toy):
    net, faces, u = toy
    cp = clean_predictions(net, faces, batch_size=7)
    assert torch.equal(cp, net(faces).argmax(1))
    assert fooling_rate(net, faces, torch.zeros_like(u)) == 0.0
    fr_u = fooling_rate(net, faces, u, cp, batch_size=7)
    assert fr_u >= 0.9  # the planted universal perturbation exists
    assert fr_u == pytest.approx(float(fooled_by(net, faces, u, cp).float().mean()))
    assert fooling_rate(net, faces[:0], u) == 0.0


def test_fooling_rate_rises_over_passes(toy):
    net, faces, _ = toy
    norms = []
    v, hist = universal_perturbation(net, faces, xi=13, norm="linf", delta=0.1, max_passes=5, batch_size=15,
                                     seed=0, callback=lambda v, rec: norms.append(perturbation_norm(v, "linf")))
    frs = [h["fooling_rate"] for h in hist]
    assert len(hist) >= 2, frs  # one pass is not enough here ...
    assert frs[-1] > frs[0] and frs[-1] >= 0.9, frs  # ... and the passes after it raise the rate
    assert [h["pass"] for h in hist] == list(range(1, len(hist) + 1))
    assert all(h["faces"] == len(faces) and h["seconds"] >= 0 for h in hist)
    assert max(norms) <= 13 * (1 + 1e-5)
    assert v.shape == faces.shape[1:]
    assert fooling_rate(net, faces, v) == pytest.approx(frs[-1])


@pytest.mark.parametrize("norm,xi,bs", [("linf", 8, 1), ("linf", 13, 4), ("l2", 180, 1), ("l2", 100, 8)])
def test_norm_bound_every_pass(toy, norm, xi, bs):
    net, faces, _ = toy
    seen = []
    v, hist = universal_perturbation(net, faces, xi=xi, norm=norm, delta=0.0, max_passes=3, batch_size=bs,
                                     callback=lambda v, rec: seen.append(v.clone()))
    assert len(hist) == 3 and len(seen) == 3  # delta = 0: runs every pass
    for vv, h in zip(seen, hist):
        assert perturbation_norm(vv, norm) <= xi * (1 + 1e-5)
        assert h["norm"] == pytest.approx(perturbation_norm(vv, norm))
    assert hist[-1]["fooling_rate"] > 0.2


def test_resume_continues_exactly(toy):
    net, faces, _ = toy
    kw = dict(xi=13, norm="linf", delta=0.1, batch_size=15, seed=0)
    v2, h2 = universal_perturbation(net, faces, max_passes=2, **kw)
    v1, h1 = universal_perturbation(net, faces, max_passes=1, **kw)
    vr, hr = universal_perturbation(net, faces, max_passes=1, v0=v1, start_pass=len(h1), **kw)
    assert [h["pass"] for h in h1 + hr] == [1, 2]
    assert torch.allclose(vr, v2)
    assert [h["fooling_rate"] for h in h1 + hr] == [h["fooling_rate"] for h in h2]
    # a v0 that already meets the goal: nothing to do
    vd, hd = universal_perturbation(net, faces, max_passes=3, v0=v2, start_pass=2, **kw)
    assert hd == [] and torch.equal(vd, v2)
    # callback can stop the loop
    _, hs = universal_perturbation(net, faces, max_passes=5, callback=lambda v, r: True, **{**kw, "delta": 0.0})
    assert len(hs) == 1


def test_shard_pass_is_the_single_process_step(toy):
    """The worker unit with one worker reproduces one pass of the single-process loop, and
    its counts are the fooling rate of the v it was given."""
    net, faces, _ = toy
    cp = clean_predictions(net, faces)
    v1, _ = universal_perturbation(net, faces, xi=13, norm="linf", delta=0.0, max_passes=1, batch_size=4, seed=3)
    res = uap_pass_shard(net, faces, torch.zeros_like(v1), xi=13, norm="linf", clean_pred=cp, batch_size=4,
                         seed=pass_seed(3, 1))
    assert (res.fooled, res.total) == (0, len(faces))
    assert torch.allclose(merge_updates(torch.zeros_like(v1), [res.delta], 13, "linf"), v1)
    # counts from two shards add up to the fooling rate of the v they were given
    parts = [uap_pass_shard(net, faces[w::2], v1, xi=13, clean_pred=cp[w::2], batch_size=4, seed=w) for w in range(2)]
    assert sum(p.total for p in parts) == len(faces)
    assert sum(p.fooled for p in parts) / len(faces) == pytest.approx(fooling_rate(net, faces, v1, cp))
    # no shuffle: deterministic without a seed
    r1 = uap_pass_shard(net, faces, v1, xi=13, clean_pred=cp, batch_size=4, shuffle=False)
    r2 = uap_pass_shard(net, faces, v1, xi=13, clean_pred=cp, batch_size=4, shuffle=False)
    assert torch.equal(r1.delta, r2.delta)
    with pytest.raises(ValueError):
        uap_pass_shard(net, faces, v1[:, :4], xi=13)


def test_two_workers_close_to_single_process(toy):
    """The coordinator's loop (2 shards, merged by sum then projection) gets within 10 points
    of the single-process fit."""
    net, faces, _ = toy
    cp = clean_predictions(net, faces)
    _, hist = universal_perturbation(net, faces, xi=13, norm="linf", delta=0.0, max_passes=3, batch_size=8)
    v = torch.zeros_like(faces[0])
    frs = []
    for p in range(1, 4):
        parts = [uap_pass_shard(net, faces[w::2], v, xi=13, clean_pred=cp[w::2], batch_size=8,
                                seed=pass_seed(0, p, w)) for w in range(2)]
        v = merge_updates(v, [r.delta for r in parts], 13, "linf")
        assert perturbation_norm(v, "linf") <= 13 * (1 + 1e-5)
        frs.append(fooling_rate(net, faces, v, cp))
    assert max(frs) >= max(h["fooling_rate"] for h in hist) - 0.10
