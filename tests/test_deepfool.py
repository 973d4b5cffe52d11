"""DeepFool: cross-check against torchattacks' independent implementation, plus invariants."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from facepriv.attacks.deepfool import deepfool
from facepriv.core.geometry import CropModel

torchattacks = pytest.importorskip("torchattacks")


def tiny_cnn(seed: int = 0, classes: int = 10) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, classes),
    ).eval()


def inputs(n: int = 24, seed: int = 1, size: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # mid-grey range: the perturbations found (|r| < 0.15) never reach the box, so the
    # reference code (which clips every step) and ours (which clips the total) take the same path
    return 0.25 + 0.5 * torch.rand(n, 3, size, size, generator=g)


def l2(r: torch.Tensor) -> torch.Tensor:
    return r.flatten(1).norm(dim=1)


def linf(r: torch.Tensor) -> torch.Tensor:
    return r.flatten(1).abs().max(1).values


def test_matches_torchattacks():
    net, x = tiny_cnn(), inputs()
    with torch.no_grad():
        y = net(x).argmax(1)
    ours = deepfool(net, x, num_candidates=10, overshoot=0.02, max_iter=50)
    adv = torchattacks.DeepFool(net, steps=50, overshoot=0.02)(x, y)
    with torch.no_grad():
        theirs_fooled = net(adv).argmax(1) != y
    assert torch.equal(ours.converged, theirs_fooled)
    assert ours.converged.all()
    # With every class a candidate and no clipping, both follow the same iterates; the only
    # difference is the reference code's 1e-4 nudge per step (ours has it, torchattacks'
    # hasn't), worth (1 + overshoot) * 1e-4 in L2 per iteration. Allow twice that plus 0.1 %.
    n_ours, n_theirs = l2(ours.r), l2(adv - x)
    tol = 2e-4 * ours.iterations.float() + 1e-3 * n_theirs
    assert ((n_ours - n_theirs).abs() <= tol).all(), (n_ours, n_theirs)
    # and the perturbations point the same way
    cos = nn.functional.cosine_similarity(ours.r.flatten(1), (adv - x).flatten(1))
    assert (cos > 0.999).all()


def test_batched_equals_one_by_one():
    net, x = tiny_cnn(2), inputs(8, seed=3)
    for norm in ("l2", "linf"):
        batch = deepfool(net, x, num_candidates=4, norm=norm)
        for i in range(len(x)):
            one = deepfool(net, x[i : i + 1], num_candidates=4, norm=norm)
            assert torch.allclose(batch.r[i], one.r[0], atol=1e-6)
            assert batch.iterations[i] == one.iterations[0]
            assert batch.converged[i] == one.converged[0]


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_converged_faces_change_label_and_stay_in_box(norm):
    net = tiny_cnn(3)
    x = torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(4))  # full range: clipping happens
    res = deepfool(net, x, num_candidates=5, norm=norm)
    with torch.no_grad():
        clean = net(x).argmax(1)
        adv = net(x + res.r).argmax(1)
    assert res.converged.sum() >= 14
    assert (adv[res.converged] != clean[res.converged]).all()
    assert torch.equal(adv, res.label)
    assert (x + res.r).min() >= 0 and (x + res.r).max() <= 1
    assert (res.iterations <= 50).all() and (res.iterations[res.converged] >= 1).all()


def test_affine_model_closed_form():
    """On an affine classifier DeepFool is exact in one step: the minimal perturbation to the
    nearest candidate boundary, |f'| / ||w'||_q, along w' / ||w'||_2 (L2) or sign(w') (L-inf)."""
    torch.manual_seed(5)
    lin = nn.Linear(3 * 4 * 4, 6)
    net = nn.Sequential(nn.Flatten(), lin).eval()
    x = inputs(10, seed=6, size=4)
    res2 = deepfool(net, x, num_candidates=6, overshoot=0.02, norm="l2")
    resi = deepfool(net, x, num_candidates=6, overshoot=0.02, norm="linf")
    with torch.no_grad():
        f = net(x)
    lab = f.argmax(1)
    W = lin.weight.detach()
    for i in range(len(x)):
        others = [c for c in range(6) if c != lab[i]]
        fd = (f[i, others] - f[i, lab[i]]).abs()
        wd = W[others] - W[lab[i]]
        want2 = 1.02 * ((fd / wd.norm(dim=1)).min() + 1e-4)
        wanti = 1.02 * ((fd / wd.abs().sum(1)).min() + 1e-4)
        assert res2.iterations[i] == 1 and resi.iterations[i] == 1
        assert torch.isclose(l2(res2.r[i : i + 1])[0], want2, rtol=1e-4)
        assert torch.isclose(linf(resi.r[i : i + 1])[0], wanti, rtol=1e-4)
        # an L-inf step is a signed vector: every pixel moves by the same amount
        assert torch.allclose(resi.r[i].abs(), wanti.expand_as(resi.r[i]), rtol=1e-4)
        # the L-inf variant is the smaller perturbation in L-inf, the L2 one in L2
        assert linf(resi.r[i : i + 1])[0] <= linf(res2.r[i : i + 1])[0] * 1.0001
        assert l2(res2.r[i : i + 1])[0] <= l2(resi.r[i : i + 1])[0] * 1.0001


def test_linf_bounded_on_cnn():
    """On the CNN the L-inf variant needs a much smaller L-inf change than the L2 variant,
    and its L-inf norm is a few sign steps: at most (1+overshoot) * sum of its step sizes."""
    net, x = tiny_cnn(7), inputs(16, seed=8)
    ri = deepfool(net, x, num_candidates=10, norm="linf")
    r2 = deepfool(net, x, num_candidates=10, norm="l2")
    assert ri.converged.all() and r2.converged.all()
    assert (linf(ri.r) < linf(r2.r)).float().mean() >= 0.9
    assert torch.median(linf(ri.r) / linf(r2.r)) < 0.6
    assert (linf(ri.r) < 0.1).all()


def test_label_argument_and_max_iter():
    net, x = tiny_cnn(9), inputs(6, seed=10)
    with torch.no_grad():
        pred = net(x).argmax(1)
    y = pred.clone()
    y[:3] = (pred[:3] + 1) % 10  # already "fooled" with respect to y
    res = deepfool(net, x, y=y)
    assert res.converged[:3].all() and (res.iterations[:3] == 0).all()
    assert (res.r[:3] == 0).all()
    assert res.converged[3:].all()
    res0 = deepfool(net, x, max_iter=0)
    assert not res0.converged.any() and (res0.r == 0).all()
    res1 = deepfool(net, x, max_iter=1)
    assert (res1.iterations <= 1).all()
    with pytest.raises(ValueError):
        deepfool(net, x, norm="l1")


def test_uses_select_for_running_faces():
    """A CropModel (packed regions) only crops the faces still running."""
    torch.manual_seed(11)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5)).eval()
    regions = 0.25 + 0.5 * torch.rand(4, 3, 12, 12)
    boxes = [(0, 0, 12, 12), (2, 2, 10, 10), (1, 0, 11, 12), (0, 2, 12, 10)]
    sizes = []

    class Spy(CropModel):
        def forward(self, x):
            sizes.append(len(x))
            return super().forward(x)

        def select(self, idx):
            return Spy(self.net, [self.boxes[int(i)] for i in idx], self.size)

    model = Spy(net, boxes, size=8)
    with torch.no_grad():
        y = model(regions).argmax(1)
    y[0] = (y[0] + 1) % 5  # face 0 counts as fooled already: it is never run
    sizes.clear()
    res = deepfool(model, regions, num_candidates=5, y=y)
    assert res.converged.all() and res.iterations[0] == 0
    assert sizes[0] == 4 and max(sizes[1:]) == 3
    for i in range(1, 4):
        one = deepfool(CropModel(net, [boxes[i]], size=8), regions[i : i + 1], num_candidates=5)
        assert torch.allclose(res.r[i], one.r[0], atol=1e-6)
