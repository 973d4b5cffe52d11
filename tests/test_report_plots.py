"""The report's charts (facepriv.report.plots) on hand-made numbers: the PNGs decode at the
documented size, are not blank, a bar's height follows its rate, the floors are drawn; and the
numbers they are drawn from (aggregate.protection_by_stage, quality_values, quality_floors)."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from facepriv.io import manifest
from facepriv.report import aggregate as agg
from facepriv.report import plots

BAR_RGB = (31, 119, 180)  # tab20's first colour: the first judge's identification bars
LIGHT_RGB = (174, 199, 232)  # tab20's second: its verification bars
FLOOR_RGB = (176, 0, 32)  # plots.FLOOR_COLOUR


def decode(png: bytes) -> np.ndarray:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)


def pixels_of(img: np.ndarray, rgb, tol: int = 3) -> int:
    return int((np.abs(img - np.array(rgb)).max(axis=2) <= tol).sum())


def test_bar_chart_size_not_blank_and_bar_height_follows_the_rate():
    low = decode(plots.protection_bars_png(["as written"], {"dlib identification": [0.2]}))
    high = decode(plots.protection_bars_png(["as written"], {"dlib identification": [0.8]}))
    w, h = (round(v * plots.DPI) for v in plots.BARS_SIZE)
    assert low.shape == high.shape == (h, w, 3)
    assert low.std() > 0 and high.std() > 0
    # same bar width, four times the height: four times the bar's pixels
    n_low, n_high = pixels_of(low, BAR_RGB), pixels_of(high, BAR_RGB)
    assert n_low > 100
    assert n_high / n_low == pytest.approx(4.0, rel=0.1)


def test_bar_chart_groups_judges_and_kinds_with_their_colours():
    stages = ["as written", "JPEG q95", "half size"]
    only_id = decode(plots.protection_bars_png(stages, {"dlib identification": [0.9, 0.8, 0.1]}))
    both = decode(plots.protection_bars_png(stages, {"dlib identification": [0.9, 0.8, 0.1],
                                                     "dlib verification": [0.7, None, 0.3]}))
    assert pixels_of(only_id, LIGHT_RGB) == 0 and pixels_of(both, LIGHT_RGB) > 100
    with pytest.raises(ValueError):
        plots.protection_bars_png(stages, {})
    assert plots.describe_protection(stages, {"dlib verification": [0.7, None, 0.3]}) == (
        "dlib verification: as written 0.70, JPEG q95 n/a, half size 0.30")
    assert [plots.stage_label(t) for t in ("jpeg95", "jpeg75", "down0.5", "down0.25", "blur")] == [
        "JPEG q95", "JPEG q75", "half size", "size x0.25", "blur"]


def test_quality_histograms_size_and_floors():
    rng = np.random.default_rng(0)
    values = {"psnr": list(rng.normal(45, 2, 40)), "ssim": [], "face_psnr": list(rng.normal(39, 1, 40)),
              "face_ssimulacra2": list(rng.normal(75, 5, 40))}
    plain = decode(plots.quality_hist_png(values))
    floored = decode(plots.quality_hist_png(values, {"face_psnr": 38.0, "face_ssimulacra2": 70.0}))
    n = 3  # psnr, face_psnr, face_ssimulacra2: ssim has no values, face_ssim is absent
    assert plain.shape == floored.shape == (round(plots.HIST_PANEL[1] * plots.DPI),
                                            round(plots.HIST_PANEL[0] * plots.DPI) * n, 3)
    assert plain.std() > 0
    assert pixels_of(plain, FLOOR_RGB, tol=10) == 0 and pixels_of(floored, FLOOR_RGB, tol=10) > 50
    with pytest.raises(ValueError):
        plots.quality_hist_png({"psnr": [], "ssim": []})


def test_protection_by_stage_from_a_run_record():
    ident = {"protection_rate": 0.5, "verification": {"protection_rate": 0.25}}
    run = {"judges": {"dlib": ident, "sface": {"protection_rate": None, "verification": {"protection_rate": 1.0}}},
           "robustness": {"jpeg95": {"judges": {"dlib": {"protection_rate": 0.4}}},
                          "down0.5": {"judges": {}}}}
    stages, series = agg.protection_by_stage(run)
    assert stages == ["as written", "jpeg95", "down0.5"]
    assert series == {"dlib identification": [0.5, 0.4, None], "dlib verification": [0.25, None, None],
                      "sface verification": [1.0, None, None]}  # sface identification: never measured
    assert agg.protection_by_stage({"judges": {}, "robustness": {"jpeg95": {"judges": {}}}})[1] == {}


def test_quality_values_and_floors_from_rows():
    f = {"box": [0, 0, 1, 1], "face_psnr": 39.0, "face_ssim": 0.97, "face_ssimulacra2": None}
    sj = json.dumps({"min_psnr": 38.0, "min_ssim": None, "min_face_quality": 70})
    rows = [manifest.empty_row(source_key="a", status="ok", faces=[f, dict(f, face_psnr=float("inf"))], psnr=45.0,
                               ssim=0.99, settings_json=sj),
            manifest.empty_row(source_key="b", status="ok", faces=[], psnr=float("inf"), ssim=1.0),
            manifest.empty_row(source_key="c", status="error", psnr=10.0),
            manifest.empty_row(source_key="d", status="skipped", psnr=11.0, faces=[f])]
    v = agg.quality_values(rows)
    assert v == {"psnr": [45.0], "ssim": [0.99, 1.0], "face_psnr": [39.0], "face_ssim": [0.97, 0.97],
                 "face_ssimulacra2": []}
    assert agg.quality_floors(rows) == {"face_psnr": 38.0, "face_ssimulacra2": 70.0}
    assert agg.quality_floors([dict(r, settings_json=None) for r in rows]) == {}
