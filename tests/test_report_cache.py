"""The report scales like the cloak: measures cached (a rerun measures only new rows), the
gallery enrolled once for every judge and cached, and measuring in Ray workers gives the
numbers measuring in process gives."""

from __future__ import annotations

import shutil
from pathlib import Path

import fsspec
import numpy as np
import pytest

from facepriv.io import manifest
from facepriv.report import cache
from facepriv.report.build import ReportSettings, build_report, open_archive
from facepriv.report.measure import Measure
from tests.helpers import HighFreqJudge, NoiseSurrogate


class CountingJudge(HighFreqJudge):
    calls = 0

    def embed(self, image, faces):
        CountingJudge.calls += len(faces)
        return super().embed(image, faces)


def _evaluator(src, out, transforms=("jpeg95", "down0.5")):
    from facepriv.judges import Gallery
    from facepriv.report.evaluate import Evaluator

    j = CountingJudge()
    g = Gallery.from_folder(src, j)
    ev = Evaluator([j], {"fake": g}, "evasion", list(transforms), "folder", progress=False,
                   cache_at=(open_archive(out, ReportSettings()), ""))
    ev._surrogates["fake.pt"] = NoiseSurrogate()
    return ev


def _report(dst, src, out, **kw):
    ev = _evaluator(src, out)
    CountingJudge.calls = 0
    r = build_report([dst], ReportSettings(judges=["fake"], gallery=src, out=out, sample=0, **kw),
                     log=lambda m: None, evaluator=ev)
    return r, CountingJudge.calls


def _rates(r):
    return {x["run_id"]: (x["judges"], x["robustness"]) for x in r["runs"]}


@pytest.fixture()
def dst(archive, tmp_path):
    d = tmp_path / "dst"
    shutil.copytree(archive["dst"], d)
    return d


def test_a_second_report_measures_nothing_and_says_the_same(archive, dst, tmp_path):
    out = str(tmp_path / "rep")
    r1, calls1 = _report(str(dst), archive["src"], out)
    assert calls1 > 0
    assert r1["measured"] == {"R4": {"probes": 4, "cached": 0, "measured": 4},
                              "R8": {"probes": 4, "cached": 0, "measured": 4}}
    assert list((Path(out) / "cache" / "measures").iterdir())  # the cache was written
    r2, calls2 = _report(str(dst), archive["src"], out)
    assert calls2 == 0  # nothing embedded: every face came from the cache
    assert r2["measured"] == {"R4": {"probes": 4, "cached": 4, "measured": 0},
                              "R8": {"probes": 4, "cached": 4, "measured": 0}}
    assert _rates(r2) == _rates(r1)
    assert r1["runs"][0]["judges"]["fake"]["protection_rate"] is not None


def test_only_a_new_run_is_measured(archive, dst, tmp_path):
    out = str(tmp_path / "rep")
    r1, _ = _report(str(dst), archive["src"], out)
    runs = dst / "_facepriv" / "runs"
    shutil.copytree(runs / "R8", runs / "R9")
    part = runs / "R9" / "manifest" / "part-00000.parquet"
    rows = [dict(r, run_id="R9") for r in manifest.rows_from_table(
        manifest.read_manifest(fsspec.filesystem("file"), str(part.parent)))]
    part.write_bytes(manifest.table_bytes(rows))
    r2, calls = _report(str(dst), archive["src"], out)
    assert r2["measured"]["R9"] == {"probes": 4, "cached": 0, "measured": 4}
    assert r2["measured"]["R8"]["measured"] == r2["measured"]["R4"]["measured"] == 0
    # R9's clean faces are R8's: only the cloaked files and their transforms are embedded
    assert calls == 4 * (1 + 2)
    assert _rates(r2)["R9"] == _rates(r1)["R8"]


def test_a_torn_cache_part_is_noted_and_measured_again(archive, dst, tmp_path):
    out = str(tmp_path / "rep")
    _report(str(dst), archive["src"], out)
    parts = sorted((Path(out) / "cache" / "measures").rglob("part-*.parquet"))
    assert len(parts) == 2  # one per run
    parts[0].write_bytes(b"not parquet")
    r, _ = _report(str(dst), archive["src"], out)
    assert sorted(c["measured"] for c in r["measured"].values()) == [0, 4]
    notes = [n for d in r["details"] for n in d["notes"]]
    assert any("report cache part" in n and "measured again" in n for n in notes), notes


def test_the_row_signature_follows_the_row():
    row = {"source_key": "a.jpg", "output_key": "a.jpg", "content_sha256": "x", "settings_hash": "s",
           "finished_at": "t"}
    faces = [{"box": [1, 2, 3, 4]}]
    base = cache.row_signature(row, {"dlib": [0]}, faces)
    assert cache.row_signature(dict(row), {"dlib": [0]}, faces) == base
    for k in row:
        assert cache.row_signature(dict(row, **{k: "changed"}), {"dlib": [0]}, faces) != base, k
    assert cache.row_signature(row, {"dlib": [0], "sface": [0]}, faces) != base
    assert cache.row_signature(row, {"dlib": [0]}, [{"box": [1, 2, 3, 5]}]) != base


def test_a_measure_survives_its_bytes():
    e = np.arange(4, dtype=np.float32)
    m = Measure("k/a.jpg", None, "k/a.jpg: cannot read the original", True,
                clean={"dlib": {0: e, 1: None}}, cloak={"dlib": {0: e + 1, 1: None}},
                trans={"jpeg85": {"dlib": {0: None, 1: e * 2}}}, trans_redetected={"jpeg85": False},
                trans_pred={"jpeg85": "Colin"}, trans_fooled={"jpeg85": True})
    back = Measure.from_bytes(m.to_bytes())
    assert (back.key, back.error, back.clean_error, back.redetected) == (m.key, None, m.clean_error, True)
    assert back.clean["dlib"][1] is None and back.trans["jpeg85"]["dlib"][0] is None
    np.testing.assert_array_equal(back.cloak["dlib"][0], e + 1)
    np.testing.assert_array_equal(back.trans["jpeg85"]["dlib"][1], e * 2)
    assert (back.trans_redetected, back.trans_pred, back.trans_fooled) == ({"jpeg85": False}, {"jpeg85": "Colin"},
                                                                         {"jpeg85": True})


class CountingDetector:
    def __init__(self):
        from facepriv.pipeline.faces import FaceDetector

        self.inner = FaceDetector()
        self.images = 0

    def detect(self, images):
        self.images += len(images)
        return self.inner.detect(images)


class OtherJudge(CountingJudge):
    name = "other"


def test_one_detection_per_gallery_photo_for_every_judge(archive):
    from facepriv.judges import Gallery, galleries_from_folder

    det = CountingDetector()
    gs = galleries_from_folder(archive["src"], [CountingJudge(), OtherJudge()], det)
    assert det.images == 4  # 4 photos, 2 judges: each photo detected once
    assert sorted(gs) == ["fake", "other"] and len(gs["fake"]) == len(gs["other"]) == 4
    alone = Gallery.from_folder(archive["src"], CountingJudge())
    for ident in alone.identities:
        np.testing.assert_allclose(gs["fake"].embeddings[ident], alone.embeddings[ident], rtol=1e-6)


def test_the_gallery_is_enrolled_once_and_again_when_it_changes(archive, tmp_path):
    from facepriv.report.gallery import enrol

    gal = tmp_path / "gallery"
    shutil.copytree(archive["src"], gal)
    s = ReportSettings(gallery=str(gal))
    out = open_archive(str(tmp_path / "rep"), s)
    logs: list[str] = []
    CountingJudge.calls = 0
    g1 = enrol(s, [CountingJudge()], out, "", logs.append, [])["fake"]
    assert CountingJudge.calls == 4
    g2 = enrol(s, [CountingJudge()], out, "", logs.append, [])["fake"]
    assert CountingJudge.calls == 4  # from the cache: nothing embedded
    assert any("from the report cache" in m for m in logs)
    assert g2.identities == g1.identities and g2.sources == g1.sources
    for ident in g1.identities:
        np.testing.assert_array_equal(g2.embeddings[ident], g1.embeddings[ident])
    photo = next(gal.rglob("*.png"))
    shutil.copy(next(p for p in gal.rglob("*.png") if p != photo), photo)  # a gallery photo replaced
    enrol(s, [CountingJudge()], out, "", logs.append, [])
    assert CountingJudge.calls == 8  # enrolled again


def _gallery_file(out: Path) -> str:
    (f,) = sorted((out / cache.CACHE / "galleries").glob("*.npz"))
    return f"{cache.CACHE}/galleries/{f.name}"


def _dlib_ready() -> str | None:
    try:
        from facepriv.judges import get_judge

        get_judge("dlib")
    except Exception as e:  # noqa: BLE001
        return f"the dlib judge is not installed here ({type(e).__name__}: {e}); CI installs it with '.[test]'"
    return None


@pytest.mark.skipif(_dlib_ready() is not None, reason=str(_dlib_ready()))
def test_ray_workers_measure_what_the_process_measures(archive, dst, tmp_path):
    import ray

    from facepriv.distributed import judging

    logs: dict[int, list[str]] = {0: [], 2: []}

    def run(workers, out):
        s = ReportSettings(judges=["dlib"], gallery=archive["src"], out=str(tmp_path / out), sample=0,
                           transforms=["jpeg85"], workers=workers, batch_size=1, progress=False)
        return build_report([str(dst)], s, log=logs[workers].append, remote=judging)

    try:
        here = run(0, "here")
        there = run(2, "there")
        assert ray.is_initialized()  # the workers really were Ray actors
    finally:
        ray.shutdown()
    # the gallery was enrolled in the workers there, here in this process; the same embeddings
    assert any("in 2 Ray workers" in m for m in logs[2]) and not any("Ray workers" in m for m in logs[0])
    g_here = cache.load_gallery(open_archive(str(tmp_path / "here"), ReportSettings()), _gallery_file(tmp_path / "here"))
    g_there = cache.load_gallery(open_archive(str(tmp_path / "there"), ReportSettings()),
                                 _gallery_file(tmp_path / "there"))
    assert g_here.identities == g_there.identities and len(g_here) == len(g_there) > 0
    for ident in g_here.identities:
        np.testing.assert_allclose(g_there.embeddings[ident], g_here.embeddings[ident], atol=1e-4)
    assert there["measured"] == here["measured"]
    assert _rates(there) == _rates(here)
    faces = here["runs"][0]["judges"]["dlib"]
    assert faces["faces"] == 4 and faces["clean_accuracy"] is not None
