"""Quality on the face: SSIMULACRA 2 (facepriv.core.metrics, cross-checked against the PyPI package
`ssimulacra2`), the face quality region, and the per-face budget (facepriv.core.budget) on the
bytes that will be written."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facepriv.core import geometry
from facepriv.core.metrics import Ssimulacra2Ref, face_quality, psnr, ssim, ssimulacra2

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
        assert abs(ssimulacra2(a, b) - want) < 1e-6, (shape, sigma)
    jpeg = io.BytesIO()
    Image.fromarray(a).save(jpeg, format="JPEG", quality=70)
    b = np.array(Image.open(jpeg).convert("RGB"))
    assert abs(ssimulacra2(a, b) - compute_ssimulacra2(_png(a), _png(b))) < 1e-6


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


@pytest.mark.parametrize("side", [30, 64, 150])
def test_ssimulacra2_small_regions_score_as_the_package_and_still_rank(side):
    """Face crops are small: under 256 px a side the package has fewer than six scales (its
    weights walked in order, as libjxl does); the project's measure is the package's there too."""
    from ssimulacra2 import compute_ssimulacra2

    a = _photo()[70 : 70 + side, 80 : 80 + side]
    mild, strong = _noisy(a, 1.0), _noisy(a, 12.0)
    for b in (mild, strong):
        assert abs(ssimulacra2(a, b) - compute_ssimulacra2(_png(a), _png(b))) < 1e-6
    assert 100.0 > ssimulacra2(a, mild) > ssimulacra2(a, strong)


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


# --------------------------------------------------------------------------- the per-face budget


def _two_faces(quality: int = 95, amps=(2.0, 10.0), boxes=((70.0, 65.0, 180.0, 195.0), (320.0, 60.0, 430.0, 190.0))):
    """Two fixture faces side by side as one JPEG photo (decoded), and a sign-noise cloak of
    amplitude amps[i] on each face's cloak region (geometry.jpeg_region, as the pipeline)."""
    from facepriv.io import imageio
    from facepriv.core.budget import Cloak

    photo = np.concatenate([_photo(), _photo("Gerhard_Schroeder/Gerhard_Schroeder_0001.jpg")], 1)
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, format="JPEG", quality=quality)
    dec = imageio.decode(buf.getvalue())
    h, w = dec.rgb.shape[:2]
    rng = np.random.default_rng(0)
    cloaks = []
    for box, amp in zip(boxes, amps):
        x0, y0, x1, y1 = region = geometry.jpeg_region(box, w, h, 0.25)
        o = dec.rgb[y0:y1, x0:x1].astype(np.float64)
        adv = np.clip(o + amp * rng.choice([-1.0, 1.0], o.shape), 0, 255)
        cloaks.append(Cloak(region, o, adv, geometry.quality_region(box, w, h)))
    return dec, list(boxes), cloaks


def _written(dec, cloaks, scales, quality: int = 95) -> np.ndarray:
    """The photo with the cloaks pasted at `scales`, encoded as the pipeline writes it, decoded."""
    from facepriv.io import imageio

    canvas = dec.rgb.copy()
    for c, s in zip(cloaks, scales):
        x0, y0, x1, y1 = c.region
        canvas[y0:y1, x0:x1] = c.at(s)
    data, _ = imageio.encode(canvas, dec, quality)
    return imageio.decode(data).rgb


def test_largest_scale_binary_search():
    from facepriv.core.budget import largest_scale

    assert largest_scale(lambda s: s <= 0.3) == pytest.approx(0.3, abs=1 / 256)
    assert largest_scale(lambda s: s <= 0.3) <= 0.3
    assert largest_scale(lambda s: True) == 1.0 and largest_scale(lambda s: False) == 0.0
    assert largest_scale(lambda s: s <= 0.3, hi=0.5) == pytest.approx(0.3, abs=0.5 / 256)


@pytest.mark.parametrize("quality", [95, 80])
def test_search_window_decodes_like_the_whole_file_inside_the_region(quality):
    """JPEG codes blocks alone: a window on the 16 px grid with a border holds, inside the quality
    region, the very pixels the whole written file holds (4:4:4 at q95, 4:2:0 at q80)."""
    from facepriv.io import imageio
    from facepriv.core.budget import search_window

    dec, _, cloaks = _two_faces(quality)
    h, w = dec.rgb.shape[:2]
    canvas = dec.rgb.copy()
    for c in cloaks:
        x0, y0, x1, y1 = c.region
        canvas[y0:y1, x0:x1] = c.at(1.0)
    write = imageio.writer(dec, quality)
    whole = write(canvas, (0, 0, w, h))
    assert np.array_equal(whole, _written(dec, cloaks, [1.0, 1.0], quality))
    for c in cloaks:
        x0, y0, x1, y1 = win = search_window(c.quality, w, h)
        assert x0 % 16 == 0 and y0 % 16 == 0 and (x1 % 16 == 0 or x1 == w) and (y1 % 16 == 0 or y1 == h)
        part = write(canvas[y0:y1, x0:x1], win)
        qx0, qy0, qx1, qy1 = c.quality
        assert np.array_equal(part[qy0 - y0 : qy1 - y0, qx0 - x0 : qx1 - x0], whole[qy0:qy1, qx0:qx1])


def test_budget_binds_each_face_region_of_the_encoded_bytes_not_the_photo():
    """Face 0 carries a small cloak, face 1 a large one. The whole written photo meets the PSNR
    floor with both at full strength (a whole-photo budget keeps them) while face 1's region does
    not; per face, face 0 keeps its whole cloak, face 1 is scaled until its region of the ENCODED
    bytes meets the floor, and barely more would break it."""
    from facepriv.io import imageio
    from facepriv.core.budget import Floors, fit_photo

    dec, boxes, cloaks = _two_faces()
    floor = 32.0
    full = _written(dec, cloaks, [1.0, 1.0])
    assert psnr(dec.rgb, full) >= floor  # what the old whole-photo binding checked: passes
    assert face_quality(dec.rgb, full, boxes[1])["psnr"] < floor - 3  # while the face does not
    assert face_quality(dec.rgb, full, boxes[0])["psnr"] >= floor
    scales = fit_photo(dec.rgb, dec.rgb, cloaks, Floors(psnr=floor), imageio.writer(dec, 95))
    assert scales[0] == 1.0 and 0.0 < scales[1] < 1.0
    out = _written(dec, cloaks, scales)
    assert all(face_quality(dec.rgb, out, b)["psnr"] >= floor for b in boxes)
    more = _written(dec, cloaks, [1.0, scales[1] + 2 / 256])
    assert face_quality(dec.rgb, more, boxes[1])["psnr"] < floor  # the largest on the search grid


def test_budget_face_quality_floor_and_all_three_together():
    from facepriv.io import imageio
    from facepriv.core.budget import Floors, fit_photo

    dec, boxes, cloaks = _two_faces(amps=(3.0, 8.0))
    write = imageio.writer(dec, 95)
    full = _written(dec, cloaks, [1.0, 1.0])
    assert face_quality(dec.rgb, full, boxes[1])["ssimulacra2"] < 70
    scales = fit_photo(dec.rgb, dec.rgb, cloaks, Floors(ssimulacra2=70.0), write)
    assert 0.0 < scales[1] < 1.0
    q = face_quality(dec.rgb, _written(dec, cloaks, scales), boxes[1])
    assert q["ssimulacra2"] >= 70.0
    floors = Floors(psnr=33.0, ssim=0.96, ssimulacra2=80.0)
    scales = fit_photo(dec.rgb, dec.rgb, cloaks, floors, write)
    out = _written(dec, cloaks, scales)
    for b in boxes:
        q = face_quality(dec.rgb, out, b)
        assert q["psnr"] >= 33.0 and q["ssim"] >= 0.96 and q["ssimulacra2"] >= 80.0, q
    assert fit_photo(dec.rgb, dec.rgb, cloaks, Floors(), write) == [1.0, 1.0]  # no floors: untouched


def test_budget_overlapping_faces_and_a_face_of_another_chunk():
    """Face 1's cloak region reaches into face 0's quality region, and a third face (another
    chunk's, `extra`) sits inside face 1's cloak region: after the whole-photo check every
    region of the encoded bytes meets the floor."""
    from facepriv.io import imageio
    from facepriv.core.budget import Floors, fit_photo

    boxes = ((40.0, 60.0, 150.0, 180.0), (170.0, 60.0, 280.0, 180.0))
    dec, _, cloaks = _two_faces(amps=(2.0, 10.0), boxes=boxes)
    assert cloaks[1].region[0] < cloaks[0].quality[2]  # face 1's cloak overlaps face 0's region
    other = geometry.quality_region((285.0, 150.0, 330.0, 200.0), dec.rgb.shape[1], dec.rgb.shape[0])
    floor = 34.0
    scales = fit_photo(dec.rgb, dec.rgb, cloaks, Floors(psnr=floor), imageio.writer(dec, 95), extra=[other])
    out = _written(dec, cloaks, scales)
    for b in boxes:
        assert face_quality(dec.rgb, out, b)["psnr"] >= floor
    x0, y0, x1, y1 = other
    assert psnr(dec.rgb[y0:y1, x0:x1], out[y0:y1, x0:x1]) >= floor
    assert scales[1] < 1.0


def test_budget_floor_the_file_cannot_meet_gives_zero_and_stops():
    from facepriv.io import imageio
    from facepriv.core.budget import Floors, fit_photo

    dec, _, cloaks = _two_faces()
    assert fit_photo(dec.rgb, dec.rgb, cloaks, Floors(psnr=99.0), imageio.writer(dec, 95)) == [0.0, 0.0]


def test_new_option_is_declared_once_hashed_and_checked(tmp_path, capsys):
    from facepriv.cli import build_parser, main
    from facepriv.cli.options import settings_from_args
    from facepriv.core.settings import EMBED_FIELDS, PRESETS, CloakSettings

    assert "min_face_quality" in EMBED_FIELDS
    assert [PRESETS[n]["min_face_quality"] for n in ("discreet", "protect", "strong")] == [70.0, 50.0, 30.0]
    s = settings_from_args(build_parser().parse_args(
        ["cloak", "a", "b", "--attack", "embed-pgd", "--surrogate", "x.pt", "--min-face-quality", "70"]))
    assert s.min_face_quality == 70.0
    base = CloakSettings(attack="embed-pgd", surrogate="x.pt")
    assert base.hash(None) != CloakSettings(attack="embed-pgd", surrogate="x.pt", min_face_quality=70.0).hash(None)
    assert CloakSettings().hash(None) == CloakSettings(min_face_quality=70.0).hash(None)  # not in others' hash
    with pytest.raises(SystemExit):
        main(["cloak", "--help"])
    assert "SSIMULACRA 2 on the face region" in " ".join(capsys.readouterr().out.split())
    assert main(["cloak", str(tmp_path), str(tmp_path / "o"), "--attack", "embed-pgd", "--surrogate", "x.pt",
                 "--min-face-quality", "101"]) == 2
    assert main(["cloak", str(tmp_path), str(tmp_path / "o"), "--attack", "embed-pgd", "--surrogate", "x.pt",
                 "--min-ssim", "1.5"]) == 2


# --------------------------------------------------------------------------- pipeline, manifest, summary, report


def _tiny_surrogate(tmp_path, monkeypatch) -> str:
    """A small random face-embedding surrogate saved as a .pt checkpoint (TinyEmbedder)."""
    from test_embed_pgd import TinyEmbedder

    from facepriv.models import registry
    from facepriv.models.checkpoint import save_checkpoint

    monkeypatch.setitem(registry.ARCHES, "test-tiny-embedder", lambda num_classes, **b: TinyEmbedder())
    path = str(tmp_path / "tiny.pt")
    save_checkpoint(path, TinyEmbedder(), arch="test-tiny-embedder", classes=[], kind="embedder")
    return path


@pytest.fixture(scope="module")
def group_src(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("group") / "src"
    src.mkdir()
    photo = np.concatenate([_photo(), _photo("Gerhard_Schroeder/Gerhard_Schroeder_0001.jpg")], 1)
    Image.fromarray(photo).save(src / "two.jpg", quality=95)
    return src


def test_pipeline_records_face_quality_of_the_written_file_and_binds_each_face(group_src, tmp_path, monkeypatch):
    from facepriv.io import imageio
    from facepriv.io import manifest
    from facepriv.core.settings import CloakSettings
    from facepriv.pipeline.cloaker import Cloaker
    from facepriv.pipeline.tally import Tally

    floor = 40.0
    s = CloakSettings(attack="embed-pgd", surrogate=_tiny_surrogate(tmp_path, monkeypatch), eps=12, steps=2,
                      min_psnr=floor, min_face_quality=75.0, device="cpu")
    dst = tmp_path / "dst"
    rows = Cloaker(str(group_src), str(dst), s, "run").process(["two.jpg"])
    (r,) = manifest.to_table(rows).to_pylist()  # through the Parquet schema
    assert r["status"] == "ok" and r["n_faces"] >= 2, r["reason"]
    orig = imageio.decode((group_src / "two.jpg").read_bytes()).rgb
    written = imageio.decode((dst / "two.jpg").read_bytes()).rgb
    for f in r["faces"]:
        q = face_quality(orig, written, f["box"])
        assert f["face_psnr"] == pytest.approx(q["psnr"], rel=1e-5)
        assert f["face_ssim"] == pytest.approx(q["ssim"], rel=1e-5)
        assert f["face_ssimulacra2"] == pytest.approx(q["ssimulacra2"], rel=1e-5)
        assert f["face_psnr"] >= floor and f["face_ssimulacra2"] >= 75.0 and f["linf"] > 0
    summary = Tally().add_all(rows).summary("run", 1.0)
    ps = sorted(f["face_psnr"] for f in r["faces"])
    assert summary["face_psnr_min"] == pytest.approx(ps[0]) and summary["face_psnr_min"] >= floor
    assert summary["face_psnr_mean"] == pytest.approx(sum(ps) / len(ps))
    assert ps[0] <= summary["face_psnr_p10"] <= ps[-1] and summary["face_ssimulacra2_p10"] is not None
    # judging off: nothing was read back, so no face figures
    off = Cloaker(str(group_src), str(tmp_path / "dst-off"), dataclasses.replace(s, judge=False), "run2")
    (r2,) = manifest.to_table(off.process(["two.jpg"])).to_pylist()
    assert r2["faces"] and all(f["face_psnr"] is None and f["face_ssimulacra2"] is None for f in r2["faces"])
    assert Tally().add_all([r2]).summary("run2", 1.0)["face_psnr_mean"] is None


def _face(psnr_, ssim_, s2):
    return {"box": [0.0, 0.0, 10.0, 10.0], "judged": False, "face_psnr": psnr_, "face_ssim": ssim_,
            "face_ssimulacra2": s2}


def test_report_shows_face_mean_p10_min_next_to_the_photo_figures():
    from facepriv.io import manifest
    from facepriv.report import aggregate as agg
    from facepriv.report import html
    from facepriv.report.build import print_runs

    faces = [_face(30.0 + i, 0.90 + i / 100, 50.0 + 5 * i) for i in range(10)]
    rows = [manifest.empty_row(run_id="r", source_key=f"{i}.jpg", status="ok", faces=faces[2 * i : 2 * i + 2],
                               n_faces=2, psnr=40.0, ssim=0.99) for i in range(5)]
    rows.append(manifest.empty_row(run_id="r", source_key="x.jpg", status="ok", n_faces=1, psnr=50.0, ssim=1.0,
                                   faces=[_face(float("inf"), 1.0, 100.0)]))  # unchanged face: inf PSNR skipped
    rows.append(manifest.empty_row(run_id="r", source_key="y.jpg", status="skipped", n_faces=1,
                                   faces=[_face(1.0, 0.1, -50.0)]))  # an earlier run's: not counted
    rec = agg.run_record("r", rows)
    assert rec["face_psnr_mean"] == pytest.approx(34.5) and rec["face_psnr_min"] == 30.0
    assert rec["face_psnr_p10"] == pytest.approx(30.9)  # linear interpolation, as np.quantile
    assert rec["face_ssimulacra2_min"] == 50.0 and rec["face_ssimulacra2_mean"] == pytest.approx((725 + 100) / 11)
    assert rec["face_ssim_min"] == pytest.approx(0.90) and rec["psnr_mean"] == pytest.approx((200 + 50) / 6)
    from facepriv.pipeline.tally import Tally

    summary = Tally().add_all(manifest.to_table(rows).to_pylist()).summary("r", 1.0)  # float32 through the manifest
    for k in ("face_psnr_mean", "face_psnr_p10", "face_psnr_min", "face_ssimulacra2_p10"):
        assert summary[k] == pytest.approx(rec[k], rel=1e-6), k
    q = agg.quality(rows)
    assert q["face_psnr"]["n"] == 10 and q["face_ssimulacra2"]["n"] == 11 and q["face_psnr"]["p10"] == rec["face_psnr_p10"]
    report = {"runs": [rec], "details": [{"quality": q}], "judges": [], "transforms": []}
    buf = io.StringIO()
    print_runs(report, file=buf)
    head, line = buf.getvalue().splitlines()[:2]
    assert "face PSNR mean/p10/min" in head and "face SSIMULACRA2 mean/p10/min" in head
    assert "34.50/30.90/30.00" in line and "0.9500/0.9100/0.9000" in line and "75.0/55.0/50.0" in line
    page = html.render(report)
    assert "face SSIMULACRA2 mean / p10 / min" in page and "34.50 / 30.90 / 30.00" in page
    assert "face SSIMULACRA2</td>" in page and "photo PSNR</td>" in page


def test_ssim_matches_scikit_image_on_fixture_crops():
    """facepriv's SSIM against an independent implementation, skimage's structural_similarity,
    set up as facepriv computes it: on luma (BT.601 weights), 11x11 Gaussian window of sigma 1.5
    (skimage's truncate 3.5 gives radius 5), population covariances, data range 255, mean over
    the valid windows only (skimage crops 5 px at the border). Tolerance 5e-5 (observed <= 5e-6; sample covariances
    instead would differ by 2e-4 to 1e-3): facepriv works in
    float32, skimage in float64."""
    from skimage.metrics import structural_similarity

    def luma(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64)
        return x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114

    def jpeg(x: np.ndarray, q: int) -> np.ndarray:
        buf = io.BytesIO()
        Image.fromarray(x).save(buf, "JPEG", quality=q)
        return np.array(Image.open(buf).convert("RGB"))

    rng = np.random.default_rng(0)
    checked = []
    for path in (FIXTURES / "Colin_Powell" / "Colin_Powell_0001.jpg",
                 FIXTURES / "Gerhard_Schroeder" / "Gerhard_Schroeder_0001.jpg"):
        crop = np.array(Image.open(path).convert("RGB"))[60:190, 70:180]  # the face, 130 x 110
        noisy = np.clip(crop.astype(int) + rng.integers(-4, 5, crop.shape), 0, 255).astype(np.uint8)
        for dist in (jpeg(crop, 30), noisy, np.ascontiguousarray(crop[:, ::-1])):
            ref = structural_similarity(luma(crop), luma(dist), gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False, data_range=255)
            ours = ssim(crop, dist)
            assert abs(ours - ref) <= 5e-5, (path.name, ours, ref)
            checked.append(ref)
    assert min(checked) < 0.5 < max(checked) < 1.0  # the cases span a wide range of SSIM


def test_cloak_settings_come_from_one_declaration():
    """Every cloak flag that shapes the cloak defaults to None and names a CloakSettings field,
    so with no flags the settings are exactly the dataclass defaults (declared once there)."""
    import dataclasses

    from facepriv.cli import build_parser
    from facepriv.cli.options import settings_from_args
    from facepriv.core.settings import CloakSettings

    args = build_parser().parse_args(["cloak", "a", "b"])
    assert settings_from_args(args) == CloakSettings()
    fields = {f.name for f in dataclasses.fields(CloakSettings)}
    shaped = [k for k in vars(args) if k in fields]
    assert len(shaped) >= 25 and all(getattr(args, k) is None for k in shaped if k not in ("keep_metadata",))
    given = build_parser().parse_args(["cloak", "a", "b", "--views", "3", "--no-judge", "--thresholds", "0.5", "0.6",
                                       "0.7", "--jpeg-quality", "90"])
    s = settings_from_args(given)
    assert (s.views, s.judge, s.thresholds, s.jpeg_quality) == (3, False, (0.5, 0.6, 0.7), 90)
