"""jobs/transfer_sweep.py: the grid, the exact cloak flags per technique (parsed by the real
`facepriv cloak` parser), table assembly from fake per-configuration results, resume and dry run.
The real cloak is not run here."""

from __future__ import annotations

import csv
import importlib.util
import json
import os

import pyarrow.parquet as pq
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("transfer_sweep", os.path.join(HERE, "..", "jobs", "transfer_sweep.py"))
ts = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ts)


def test_grid_and_technique_flags_reach_the_settings(tmp_path):
    from facepriv.cli import build_parser
    from facepriv.cli.options import settings_from_args

    cfgs = ts.grid(["mobilefacenet", "mobilefacenet,faceres"], [4, 8], ["plain", "mi", "mi-di-ti"])
    assert len(cfgs) == 12 and len({c["name"] for c in cfgs}) == 12
    assert cfgs[-1]["name"] == "mobilefacenet+faceres_eps8_mi-di-ti"
    with pytest.raises(ValueError, match="unknown technique"):
        ts.grid(["a"], [8], ["fancy"])
    want = {"plain": (0.0, 0.0, 0.0), "mi": (1.0, 0.0, 0.0), "mi-di-ti": (1.0, 0.5, 1.0)}
    for c in cfgs[-3:]:
        argv = ts.cloak_argv(c, "src", str(tmp_path / "dst"), ["--steps", "3"])
        s = settings_from_args(build_parser().parse_args(argv))
        assert (s.attack, s.surrogate, s.eps, s.steps) == ("embed-pgd", "mobilefacenet,faceres", 8.0, 3)
        assert (s.momentum, s.input_diversity, s.ti_sigma) == want[c["technique"]]


def fake_record(run_id, dlib, jpeg, wb_shift, ho=None):
    judges = {"dlib": {"role": "independent", "protection_rate": dlib, "clean_accuracy": 0.96, "faces": 25},
              "tfjs:mobilefacenet": {"role": "white-box", "protection_rate": 1.0, "embedding_shift": wb_shift}}
    if ho is not None:
        judges["tfjs:faceres"] = {"role": "held-out", "protection_rate": ho, "embedding_shift": 0.1}
    return {"run_id": run_id, "faces": 25, "judges": judges, "psnr_mean": 38.123, "psnr_min": 35.5,
            "ssim_mean": 0.97, "ssim_min": 0.951, "robustness": {"jpeg85": {"judges": {"dlib": {"protection_rate": jpeg}}}}}


def test_table_row_and_markdown():
    c = ts.grid(["mobilefacenet"], [8], ["mi"])[0]
    row = ts.table_row(c, fake_record("R1", 0.5, 0.4, 0.8, ho=0.25), 2.0)
    assert (row["dlib_protection"], row["dlib_protection_jpeg85"], row["whitebox_drop"], row["whitebox_protection"],
            row["heldout_protection"], row["seconds_per_face"], row["faces"]) == (0.5, 0.4, 0.8, 1.0, 0.25, 2.0, 25)
    empty = ts.table_row(c, {"run_id": "R2", "judges": {"dlib": {"protection_rate": 0.1}}}, None)
    assert empty["whitebox_drop"] is None and empty["dlib_protection_jpeg85"] is None  # not guessed
    md = ts.markdown([row, empty])
    lines = md.splitlines()
    assert lines[0].startswith("| surrogates | eps | technique | faces | white-box drop")
    assert "| mobilefacenet | 8 | mi | 25 | 0.8000 | 100.0% | 96.0% | 50.0% | 40.0% | 25.0% | 38.12 |" in lines[2]
    assert lines[3].count(" - ") >= 5


def test_resume_assembles_results_without_cloaking(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    cfgs = ts.grid(["mobilefacenet"], [4, 8], ["plain"])
    (out / "results").mkdir(parents=True)
    for i, c in enumerate(reversed(cfgs)):  # written out of order: the table follows the grid
        row = ts.table_row(c, fake_record(f"R{i}", 0.1 * (i + 1), 0.05, 0.5), 1.5)
        (out / "results" / f"{c['name']}.json").write_text(json.dumps({"config": c, "row": row}))

    def boom(*a, **k):
        raise AssertionError("a finished configuration must not be run again")

    monkeypatch.setattr(ts, "cloak", boom)
    monkeypatch.setattr(ts, "make_evaluator", boom)
    argv = [str(tmp_path), "--gallery", str(tmp_path), "--out", str(out), "--eps", "4", "8", "--techniques", "plain"]
    assert ts.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.index("| mobilefacenet | 4 |") < printed.index("| mobilefacenet | 8 |")
    rows = list(csv.DictReader(open(out / "transfer_table.csv")))
    assert [r["config"] for r in rows] == [c["name"] for c in cfgs] and rows[0]["dlib_protection"] == "0.2"
    tab = pq.read_table(out / "transfer_table.parquet").to_pylist()
    assert [r["dlib_protection"] for r in tab] == [pytest.approx(0.2), pytest.approx(0.1)]
    assert "white-box drop" in (out / "transfer_table.md").read_text()
    # dry run: the commands, the finished ones marked
    assert ts.main(argv + ["--eps", "4", "8", "12", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    cloaks = [x for x in lines if " cloak " in x]
    assert len(cloaks) == 3 and cloaks[0].startswith("# done: facepriv cloak") and cloaks[2].startswith("facepriv cloak")
    assert "--attack embed-pgd --surrogate mobilefacenet --eps 12 --momentum 0" in cloaks[2]
    assert not (out / "runs").exists()  # nothing was run
