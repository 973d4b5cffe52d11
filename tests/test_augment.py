"""Training augmentation: the crop jitter `facepriv train` applies, in the units its options say."""

from __future__ import annotations

import torch

from facepriv.pipeline.train import TRAIN_SCALE, _augment, _centre


def _dot(size: int, loose: int) -> torch.Tensor:
    """A loose crop (as training stores them) that is black but for a white 4x4 square at its centre."""
    x = torch.zeros(64, 3, loose, loose)
    c = loose // 2
    x[:, :, c - 2 : c + 2, c - 2 : c + 2] = 1.0
    return x


def _centroid(x: torch.Tensor) -> torch.Tensor:
    w = x[:, 0]
    ys, xs = torch.meshgrid(torch.arange(w.shape[1]).float(), torch.arange(w.shape[2]).float(), indexing="ij")
    m = w.sum((1, 2))
    return torch.stack([(w * xs).sum((1, 2)) / m, (w * ys).sum((1, 2)) / m], 1)


def test_augment_shift_is_a_fraction_of_the_crop_side():
    size = 160
    loose = int(round(size * TRAIN_SCALE))
    x = _dot(size, loose)
    centre = _centroid(_centre(x, size))
    for shift in (0.0, 0.05, 0.1):
        out = _augment(x, size, torch.Generator().manual_seed(0), shift=shift, scale=0.0)
        moved = (_centroid(out) - centre).abs()
        assert out.shape == (64, 3, size, size)
        assert moved.max() <= shift * size + 1.0  # within +-shift of the side (1 px for resampling)
        if shift > 0:
            assert moved.max() >= 0.6 * shift * size  # and it does move that far (64 draws)


def test_augment_scale_changes_the_face_size():
    size = 160
    loose = int(round(size * TRAIN_SCALE))
    x = _dot(size, loose)
    base = _centre(x, size)[:, 0].sum((1, 2))
    out = _augment(x, size, torch.Generator().manual_seed(1), shift=0.0, scale=0.15)[:, 0].sum((1, 2))
    ratio = (out / base).sqrt()  # the square's side grows (or shrinks) as 1 / crop scale
    assert ratio.min() >= 1 / 1.15 - 0.05 and ratio.max() <= 1 / 0.85 + 0.05
    assert ratio.max() - ratio.min() > 0.15
