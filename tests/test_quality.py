"""Quality on the face: SSIMULACRA 2 (facepriv.metrics, cross-checked against the PyPI package
`ssimulacra2`), the face quality region, and the per-face budget (facepriv.budget) on the
bytes that will be written."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facepriv import geometry
from facepriv.metrics import S2_MIN_SIDE, Ssimulacra2Ref, face_quality, psnr, ssim, ssimulacra2

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "lfw"


def _photo(name: str = "Colin_Powell/Colin_Powell_0001.jpg") -> np.ndarray:
    return np.array(Image.open(FIXTURES / name).convert("RGB"))


def _noisy(a: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.round(a + rng.normal(0, sigma, a.shape)), 0, 255).astype(np.uint8)


def _png(a: np.ndarray) -> io.BytesIO:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    buf.seek(0)
    return buf


@pytest.mark.parametrize("shape", [(250, 250), (240, 231), (226, 249)])
def test_ssimulacra2_equals_the_package_on_images_with_all_six_scales(shape):
    from ssimulacra2 import compute_ssimulacra2

    a = _photo()[: shape[0], : shape[1]]
    for sigma in (1.0, 4.0):
        b = _noisy(a, sigma)
        want = compute_ssimulacra2(_png(a), _png(b))
        assert abs(ssimulacra2(a, b) - want) < 1e-9, (shape, sigma)
    jpeg = io.BytesIO()
    Image.fromarray(a).save(jpeg, format="JPEG", quality=70)
    b = np.array(Image.open(jpeg).convert("RGB"))
    assert abs(ssimulacra2(a, b) - compute_ssimulacra2(_png(a), _png(b))) < 1e-9


def test_ssimulacra2_identical_is_100_and_more_noise_scores_lower():
    a = _photo()[60:190, 60:190]
    assert ssimulacra2(a, a) == 100.0
    scores = [ssimulacra2(a, _noisy(a, s)) for s in (0.5, 2.0, 6.0, 15.0)]
    assert scores[0] > 90 and all(x > y for x, y in zip(scores, scores[1:])), scores
    assert scores[-1] < 40
    ref = Ssimulacra2Ref(a)  # one prepared reference, many candidates: the same numbers
    assert [ref.score(_noisy(a, s)) for s in (0.5, 2.0, 6.0, 15.0)] == scores
    with pytest.raises(ValueError, match="shapes differ"):
        ssimulacra2(a, a[:-1])


@pytest.mark.parametrize("side", [1, 4, 7, 8, 30, 64, 150])
def test_ssimulacra2_small_regions_use_all_scales_and_still_rank(side):
    """Below S2_MIN_SIDE the package skips scales and misaligns its weights (an image under
    8 px scores 100 however distorted); padded and masked, a small region still ranks."""
    from ssimulacra2 import compute_ssimulacra2

    a = _photo()[70 : 70 + side, 80 : 80 + side]
    mild, strong = ssimulacra2(a, _noisy(a, 1.0)), ssimulacra2(a, _noisy(a, 12.0))
    assert 100.0 > mild > strong, (mild, strong)
    inverted = 255 - a
    assert ssimulacra2(a, inverted) < 30
    if side < 8:
        assert compute_ssimulacra2(_png(a), _png(inverted)) == 100.0  # what the padding avoids
    assert side < S2_MIN_SIDE


def test_ssimulacra2_small_region_counts_only_its_own_pixels():
    """Padding is context, never error-free area: the same distortion scores far higher when its
    40 px region sits in a 240 px image whose other 97% are untouched (the averages diluted)."""
    a = _photo()[40:80, 40:80]
    b = _noisy(a, 6.0)
    small = ssimulacra2(a, b)
    diluted_a = np.pad(a, ((0, 200), (0, 200), (0, 0)), mode="symmetric")
    diluted_b = diluted_a.copy()
    diluted_b[:40, :40] = b
    assert ssimulacra2(diluted_a, diluted_b) > small + 8


def test_quality_region_is_the_box_plus_ten_percent_clipped():
    assert geometry.QUALITY_MARGIN == 0.10
    assert geometry.quality_region([50, 40, 150, 160], 400, 300) == (40, 28, 160, 172)
    assert geometry.quality_region([5, 2, 105, 82], 110, 80) == (0, 0, 110, 80)  # clipped
    assert geometry.quality_region([10.4, 10.6, 20.2, 20.9], 100, 100) == (9, 9, 22, 22)  # rounded out


def test_face_quality_measures_the_face_region_not_the_photo():
    orig = _photo()
    box = [80.0, 70.0, 170.0, 180.0]
    x0, y0, x1, y1 = geometry.quality_region(box, 250, 250)
    written = orig.copy()
    written[y0:y1, x0:x1] = _noisy(orig[y0:y1, x0:x1], 6.0)
    q = face_quality(orig, written, box)
    assert set(q) == {"psnr", "ssim", "ssimulacra2"}
    assert q["psnr"] == pytest.approx(psnr(orig[y0:y1, x0:x1], written[y0:y1, x0:x1]))
    assert q["ssimulacra2"] == pytest.approx(ssimulacra2(orig[y0:y1, x0:x1], written[y0:y1, x0:x1]))
    # the whole photo, mostly untouched, flatters every figure
    assert psnr(orig, written) > q["psnr"] + 2 and ssim(orig, written) > q["ssim"]
    assert face_quality(orig, written, box, metrics=("psnr",)).keys() == {"psnr"}
    assert face_quality(orig, orig, box)["ssimulacra2"] == 100.0
