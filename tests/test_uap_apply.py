"""The "uap" strategy adds exactly v, resized to each face's crop box, inside that box only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facepriv.core import geometry
from facepriv import strategies
from facepriv.errors import FacePrivError
from facepriv.core.settings import CloakSettings
from facepriv.strategies.base import FaceItem
from facepriv.strategies.uap import add_universal, resize_to_box


def _items(regions, crops):
    return [FaceItem(photo=None, index=i, region=(0, 0, r.shape[2], r.shape[1]), pixels=r, crop=c,
                     landmarks=np.zeros((5, 2), np.float32), box=np.zeros(4, np.float32))
            for i, (r, c) in enumerate(zip(regions, crops))]


def test_resize_is_bilinear_and_identity_at_size():
    v = torch.rand(3, 16, 16)
    assert torch.equal(resize_to_box(v, 16, 16), v)
    up = resize_to_box(v, 24, 20)
    assert torch.allclose(up, F.interpolate(v[None], size=(24, 20), mode="bilinear", align_corners=False)[0])
    down = resize_to_box(v, 8, 8)
    assert torch.allclose(down, F.interpolate(v[None], size=(8, 8), mode="bilinear", align_corners=False,
                                              antialias=True)[0])


def test_strategy_adds_exactly_v_inside_the_crop_box(tmp_path):
    g = torch.Generator().manual_seed(0)
    v = ((torch.rand(3, 16, 16, generator=g) - 0.5) * 0.08).float()
    path = tmp_path / "v.npy"
    np.save(path, v.numpy())
    regions = [torch.rand(3, 30, 40, generator=g) * 0.8 + 0.1, torch.rand(3, 20, 20, generator=g)]
    crops = [(5, 3, 29, 27), (2, 2, 18, 18)]  # 24x24 (v upsampled), 16x16 (v exactly)
    strat = strategies.make(CloakSettings(attack="uap", extra={"uap": str(path)}), None, torch.device("cpu"))
    adv, steps = strat(_items(regions, crops))
    x = geometry.pack(regions)
    assert adv.shape == x.shape and steps == [1, 1]
    for i, (x0, y0, x1, y1) in enumerate(crops):
        want = (x[i, :, y0:y1, x0:x1] + resize_to_box(v, y1 - y0, x1 - x0)).clamp(0, 1)
        assert torch.allclose(adv[i, :, y0:y1, x0:x1], want, atol=1e-7)
        mask = torch.ones_like(x[i], dtype=torch.bool)
        mask[:, y0:y1, x0:x1] = False
        assert torch.equal(adv[i][mask], x[i][mask])  # untouched outside the crop box
    # region 0 is in (0.1, 0.9): nothing clamps, so the change is v resized, exactly
    x0, y0, x1, y1 = crops[0]
    assert torch.allclose(adv[0, :, y0:y1, x0:x1] - x[0, :, y0:y1, x0:x1], resize_to_box(v, 24, 24), atol=1e-6)
    # the 16x16 box gets v itself (up to clamping at 0/1)
    x0, y0, x1, y1 = crops[1]
    assert torch.allclose(adv[1, :, y0:y1, x0:x1], (x[1, :, y0:y1, x0:x1] + v).clamp(0, 1))
    assert torch.equal(add_universal(x, crops, v), adv)


def test_strategy_needs_a_valid_uap(tmp_path):
    with pytest.raises(FacePrivError, match="--perturbation"):
        strategies.make(CloakSettings(attack="uap"), None, torch.device("cpu"))
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((4, 4), np.float32))
    with pytest.raises(FacePrivError, match=r"\(3, S, S\)"):
        strategies.make(CloakSettings(attack="uap", extra={"uap": str(bad)}), None, torch.device("cpu"))
    with pytest.raises(FacePrivError, match="not found"):
        strategies.make(CloakSettings(attack="uap", extra={"uap": str(tmp_path / "no.npy")}), None, "cpu")


def test_cloak_options_accept_attack_uap(tmp_path):
    import argparse

    from facepriv.cli.options import add_cloak_options, settings_from_args

    v = np.full((3, 8, 8), 6 / 255, np.float32)
    np.save(tmp_path / "v.npy", v)
    p = argparse.ArgumentParser()
    add_cloak_options(p)
    args = p.parse_args(["src", "dst", "--attack", "uap", "--uap", str(tmp_path / "v.npy")])
    s = settings_from_args(args)
    assert s.attack == "uap" and s.model is None and s.eps == pytest.approx(6.0)
    assert s.extra["uap"] == str(tmp_path / "v.npy") and len(s.extra["uap_sha256"]) == 64
    with pytest.raises(FacePrivError, match="--perturbation"):
        settings_from_args(p.parse_args(["src", "dst", "--attack", "uap"]))
    # --eps is v's own size: a different one is refused, not silently overwritten
    with pytest.raises(FacePrivError, match="--eps 4 does not apply to --attack uap"):
        settings_from_args(p.parse_args(["src", "dst", "--attack", "uap", "--uap", str(tmp_path / "v.npy"),
                                         "--eps", "4"]))
    s = settings_from_args(p.parse_args(["src", "dst", "--attack", "uap", "--uap", str(tmp_path / "v.npy"),
                                         "--eps", "6"]))
    assert s.eps == pytest.approx(6.0)
