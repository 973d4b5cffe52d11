"""Leave-one-out judging in `facepriv report`: which judges crafted a run (white-box), which are
held-out installed embedders, and dlib-like independent judges; `--judge-installed` and
`embedder:NAME` with tiny synthetic embedders installed in a temporary $FACEPRIV_HOME."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from test_models_cli import tiny_package
from helpers import HighFreqJudge

from facepriv.io import manifest
from facepriv.judges import JUDGES, get_judge, register_judge
from facepriv.models import store
from facepriv.models.install import install
from facepriv.report import leave_one_out as loo


def test_crafting_specs_reads_settings_defensively():
    r = lambda sj, model=None: {"settings_json": sj, "model": model}  # noqa: E731
    assert loo.crafting_specs([r(json.dumps({"surrogate": "mobilefacenet, faceres"}))]) == ["mobilefacenet", "faceres"]
    assert loo.crafting_specs([r(json.dumps({"surrogate": ["a.pt", "b"]}), "a.pt")]) == ["a.pt", "b"]
    assert loo.crafting_specs([r("{}", "m.pt")]) == ["m.pt"]  # an older run: no surrogate field
    assert loo.crafting_specs([r("not json"), r(None)]) == []
    assert loo.crafting_specs([r(None), r(json.dumps({"surrogate": "x"}))]) == ["x"]  # first row without settings
    assert loo.stem("/m/mobilefacenet.pt") == "mobilefacenet" and loo.stem("tfjs:faceres.json") == "faceres"


def test_roles_by_hash_and_name():
    judges = [{"name": "dlib", "embedder": False},
              {"name": "tfjs:mobilefacenet", "embedder": True, "sha256": "aa", "model_name": "mobilefacenet"},
              {"name": "tfjs:other", "embedder": True, "sha256": "bb", "model_name": "other"},
              {"name": "tfjs:faceres", "embedder": True, "sha256": "cc", "model_name": "faceres"}]
    specs = [{"spec": "x/renamed.pt", "stem": "renamed", "sha256": "bb"}, {"spec": "faceres", "stem": "faceres",
                                                                              "sha256": None}]
    assert loo.roles(judges, specs) == {"dlib": "independent", "tfjs:mobilefacenet": "held-out",
                                        "tfjs:other": "white-box", "tfjs:faceres": "white-box"}
    assert loo.roles(judges, []) == {"dlib": "independent", "tfjs:mobilefacenet": "held-out",
                                     "tfjs:other": "held-out", "tfjs:faceres": "held-out"}


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEPRIV_HOME", str(tmp_path / "home"))
    install(str(tiny_package(tmp_path / "pkg")), log=lambda m: None)  # tiny mobilefacenet + mobileface
    assert store.installed() == ["mobileface", "mobilefacenet"]
    register_judge("fake", lambda arg=None, **o: HighFreqJudge())
    yield tmp_path / "home"
    JUDGES.pop("fake", None)


def test_embedder_judge_by_installed_name(home):
    j = get_judge("embedder:mobilefacenet")
    assert j.name == "tfjs:mobilefacenet" and j.input_size == 112 and j.metric == "cosine"
    with pytest.raises(Exception, match="not installed"):
        get_judge("embedder:faceres")


def test_report_judge_installed_marks_roles(archive, home, tmp_path, capsys):  # noqa: F811
    from facepriv.cli import main

    dst = tmp_path / "dst"
    shutil.copytree(archive["dst"], dst)
    # R8 becomes an embed-pgd run crafted on mobilefacenet; R4 stays an older run without the field
    mdir = dst / "_facepriv" / "runs" / "R8" / "manifest"
    rows = manifest.rows_from_table(manifest.read_manifest(__import__("fsspec").filesystem("file"), str(mdir)))
    rows = [dict(r, attack="embed-pgd", model=None,
                 settings_json=json.dumps({"surrogate": "mobilefacenet", "attack": "embed-pgd"})) for r in rows]
    (mdir / "part-00000.parquet").write_bytes(manifest.table_bytes(rows))
    out = tmp_path / "rep"
    assert main(["report", str(dst), "--judge", "fake", "--judge-installed", "--gallery", archive["src"],
                 "--transforms", "jpeg85", "--out", str(out), "--no-progress", "--sample", "0"]) == 0
    text = capsys.readouterr().out
    assert "judges by role" in text and "white-box" in text and "held-out" in text
    rep = json.load(open(out / "report.json"))
    assert rep["judges"] == ["fake", "tfjs:mobileface", "tfjs:mobilefacenet"]  # the given judge stays first
    runs = {r["run_id"]: r for r in rep["runs"]}
    assert runs["R8"]["crafted_on"] == ["mobilefacenet"] and runs["R4"]["crafted_on"] == ["fake.pt"]
    role = {(r["run_id"], r["judge"]): r["role"] for r in rep["leave_one_out"]}
    assert role == {("R8", "fake"): "independent", ("R8", "tfjs:mobilefacenet"): "white-box",
                    ("R8", "tfjs:mobileface"): "held-out", ("R4", "fake"): "independent",
                    ("R4", "tfjs:mobilefacenet"): "held-out", ("R4", "tfjs:mobileface"): "held-out"}
    assert runs["R8"]["judges"]["tfjs:mobilefacenet"]["crafting"] is True
    assert runs["R8"]["judges"]["tfjs:mobileface"]["crafting"] is False
    for r in rep["leave_one_out"]:
        assert "jpeg85_protection_rate" in r and r["faces"] == 4
        assert r["embedding_shift"] is not None and r["embedding_shift"] >= 0  # two outputs are unchanged copies
    # the independent fake judge sees the checkerboard cloaks: a real shift, and the same in both runs
    fake = [r["embedding_shift"] for r in rep["leave_one_out"] if r["judge"] == "fake"]
    assert fake[0] > 0 and fake[0] == pytest.approx(fake[1])
    assert os.path.exists(out / "leave_one_out.parquet")
    assert "Judges by role" in open(out / "index.html").read()
