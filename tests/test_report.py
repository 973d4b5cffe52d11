"""facepriv report: aggregation arithmetic on a hand-made manifest, judges and robustness
transforms through the report with a fake judge and a fake surrogate, HTML rendered in
headless Chromium."""

import json
import os
import shutil
import subprocess
import tempfile

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from facepriv.io import manifest
from facepriv.report import aggregate as agg
from facepriv.report import panels as pan
from facepriv.report.build import ReportSettings, build_report
from facepriv.report.probes import probes_of, surrogate_fooled

from helpers import evaluator



# --------------------------------------------------------------------------- pure arithmetic


def face(label=None, judged=False, fooled=None, redetected=True):
    return {"box": [10.0, 10.0, 50.0, 60.0], "landmarks": [20.0] * 10, "label": label, "judged": judged,
            "fooled": fooled, "redetected": redetected, "clean_pred": label, "cloaked_pred": "x"}


def row(key, status="ok", faces=(), psnr=40.0, ssim=0.99, fmt="JPEG", attack="fgsm", eps=8.0, model="m.pt",
        reason=None, t=0.5):
    return manifest.empty_row(run_id="r", source_key=key, output_key=key, status=status, reason=reason,
                              faces=list(faces), n_faces=len(faces), psnr=psnr, ssim=ssim, format=fmt,
                              attack=attack, eps=eps, model=model, t_read=t, t_total=None if t is None else 2 * t)


def handmade():
    return [
        row("A/1.jpg", faces=[face("A", True, True), face(None, False, None, redetected=False)], psnr=30.0, ssim=0.9),
        row("A/2.jpg", faces=[face("A", True, False)], psnr=40.0, ssim=0.95, t=1.5),
        row("B/1.png", faces=[face("B", True, True)], fmt="PNG", psnr=50.0, ssim=1.0),
        row("B/2.png", faces=[face("B", False, None)], fmt="PNG", psnr=float("inf"), ssim=1.0),  # not judged
        row("C/1.jpg", status="no_face", psnr=60.0, ssim=1.0),
        row("C/2.jpg", status="error", reason="cannot read: truncated", psnr=None, ssim=None, t=None),
        row("C/3.jpg", status="error", reason="cannot read: bad header", psnr=None, ssim=None, t=None),
        row("C/4.jpg", status="error", reason="not an image", psnr=None, ssim=None, t=None),
        row("D/1.jpg", status="skipped", faces=[face("D", True, True)], psnr=10.0),  # earlier run's: not counted
    ]


def test_fooling_tables_per_setting_identity_format():
    rows = handmade()
    t = agg.fooling_tables(rows)
    assert t["by_setting"] == [{"attack": "fgsm", "eps": 8, "model": "m.pt", "faces": 5, "judged": 3, "fooled": 2,
                                "fooling_rate": pytest.approx(2 / 3), "redetected": 4}]
    ids = {r["identity"]: r for r in t["by_identity"]}
    assert (ids["A"]["judged"], ids["A"]["fooled"], ids["A"]["fooling_rate"]) == (2, 1, 0.5)
    assert (ids["B"]["judged"], ids["B"]["fooled"], ids["B"]["fooling_rate"]) == (1, 1, 1.0)
    assert ids[None]["judged"] == 0 and ids[None]["fooling_rate"] is None and "D" not in ids
    fm = {r["format"]: r for r in t["by_format"]}
    assert fm["JPEG"]["fooling_rate"] == 0.5 and fm["PNG"]["fooling_rate"] == 1.0 and fm["PNG"]["faces"] == 2


def test_quality_faces_errors_timings():
    rows = handmade()
    q = agg.quality(rows)
    assert q["psnr"]["n"] == 4  # inf and errors and skipped left out
    assert q["psnr"]["mean"] == pytest.approx((30 + 40 + 50 + 60) / 4)
    assert q["psnr"]["min"] == 30 and q["psnr"]["max"] == 60 and q["psnr"]["median"] == 45
    assert sum(q["psnr"]["hist"]["counts"]) == 4
    assert q["ssim"]["n"] == 5 and q["ssim"]["mean"] == pytest.approx((0.9 + 0.95 + 1 + 1 + 1) / 5)
    assert agg.faces_per_photo(rows) == {"0": 1, "1": 3, "2": 1}
    assert agg.errors_by_reason(rows) == [
        {"reason": "cannot read", "count": 2, "examples": ["C/2.jpg", "C/3.jpg"]},
        {"reason": "not an image", "count": 1, "examples": ["C/4.jpg"]},
    ]
    tm = agg.timings(rows)
    assert tm["t_read"]["n"] == 5 and tm["t_read"]["sum"] == pytest.approx(0.5 * 4 + 1.5)
    assert tm["t_total"]["mean"] == pytest.approx(2 * (0.5 * 4 + 1.5) / 5)
    assert agg.statuses(rows) == {"error": 3, "no_face": 1, "ok": 4, "skipped": 1}


def test_run_record_and_eps_curve_and_robustness_table():
    rows = handmade()
    judge = {"mode": "evasion", "faces": 4, "clean_correct": 3, "clean_accuracy": 0.75, "protected": 1,
             "protection_rate": 1 / 3, "per_face": ["dropped"]}
    rob = {"jpeg85": {"fooling_rate": 0.25, "judged": 4, "fooled": 1, "judges": {"fake": dict(judge, protection_rate=0.0)}}}
    rec = agg.run_record("r1", rows, {"fake": judge}, rob)
    assert (rec["attack"], rec["eps"], rec["model"]) == ("fgsm", 8, "m.pt")
    assert rec["fooling_rate"] == pytest.approx(2 / 3) and rec["faces_judged"] == 3 and rec["errors"] == 3
    assert rec["psnr_mean"] == pytest.approx(45.0)
    assert rec["judges"]["fake"]["clean_accuracy"] == 0.75 and "per_face" not in rec["judges"]["fake"]
    assert rec["robustness"]["jpeg85"]["fooling_rate"] == 0.25
    assert rec["robustness"]["jpeg85"]["judges"]["fake"]["protection_rate"] == 0.0
    json.dumps(rec)  # machine-readable as is
    # the same setting at another eps -> a curve; a single-eps setting -> none
    rows4 = [dict(r, eps=4.0, faces=[dict(f, fooled=False) for f in r["faces"]]) for r in rows]
    rec4 = agg.run_record("r2", rows4)
    curves = agg.eps_curves([rec, rec4])
    assert curves == {"fgsm / m.pt": [(4.0, 0.0), (8.0, pytest.approx(2 / 3))]}
    assert agg.eps_curves([rec]) == {}
    table = agg.robustness_table([rec])
    assert [t["transform"] for t in table] == ["none", "jpeg85"]
    assert table[1]["fake_protection_rate"] == 0.0 and table[0]["fake_protection_rate"] == pytest.approx(1 / 3)


def test_probes_and_surrogate_rule():
    rows = handmade()
    probes = probes_of(rows, "folder")
    # ok rows with faces only; the labelled face is the probe; skipped/no_face/error are not probes
    assert [p.key for p in probes] == ["A/1.jpg", "A/2.jpg", "B/1.png", "B/2.png"]
    assert [p.identity for p in probes] == ["A", "A", "B", "B"]  # B/2 falls back to its folder
    assert surrogate_fooled({"label": "A"}, "B") and not surrogate_fooled({"label": "A"}, "A")
    assert surrogate_fooled({"label": None, "clean_pred": "A"}, "C")
    assert surrogate_fooled({"label": "A"}, "T", target="T") and not surrogate_fooled({"label": "A"}, "A", target="T")


def test_amplified_perturbation_panel():
    clean = np.full((80, 80, 3), 100, np.uint8)
    cloaked = clean.copy()
    cloaked[30:40, 30:40] += 4
    a, amp, b, gain = pan.panel(clean, cloaked, [20, 20, 60, 60], size=64)
    assert a.shape == amp.shape == b.shape == (64, 64, 3)
    assert gain == pytest.approx(127 / 4)
    assert amp.max() == 255 and int(np.median(amp)) == 128  # zero perturbation -> mid grey
    assert pan.amplify(clean, clean)[1] == 0.0
    assert pan.eps_curve_png({"x": [(2, 0.1), (4, 0.5)]})[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- report over files


@pytest.fixture(scope="module")
def report(archive):
    out = str(archive["base"] / "report")
    ev = evaluator(src=archive["src"])
    r = build_report([archive["dst"]], ReportSettings(judges=["fake"], gallery=archive["src"], out=out, sample=4),
                     log=lambda m: None, evaluator=ev)
    return r, out


def test_report_judges_and_robustness(report):
    r, out = report
    runs = {x["run_id"]: x for x in r["runs"]}
    assert set(runs) == {"R4", "R8"}
    r8 = runs["R8"]
    assert (r8["attack"], r8["eps"], r8["model"]) == ("fgsm", 8, "fake.pt")
    assert r8["fooling_rate"] == 0.5 and r8["faces_judged"] == 2 and r8["errors"] == 1  # from the manifest
    assert r8["psnr_mean"] == pytest.approx(30.0) and r8["ssim_mean"] == pytest.approx(0.95)
    j = r8["judges"]["fake"]
    # every clean probe is enrolled -> recognised; the two checkerboard outputs evade, the copies do not
    assert (j["faces"], j["clean_accuracy"], j["protection_rate"]) == (4, 1.0, 0.5)
    rob = r8["robustness"]
    assert set(rob) == {"jpeg95", "down0.5"}
    assert rob["jpeg95"]["judges"]["fake"]["protection_rate"] == 0.5  # JPEG q95 keeps the checkerboard
    assert rob["down0.5"]["judges"]["fake"]["protection_rate"] == 0.0  # downscaling removes it
    # surrogate: judged faces are Colin's two; noise -> fooled, clean copy -> not
    assert (rob["jpeg95"]["judged"], rob["jpeg95"]["fooled"], rob["jpeg95"]["fooling_rate"]) == (2, 1, 0.5)
    assert rob["down0.5"]["fooling_rate"] == 0.0
    assert runs["R4"]["fooling_rate"] == 0.0  # its manifest says nothing was fooled
    # eps curve over the two runs, outputs written, Parquet tables readable
    assert r["eps_curves"]["fgsm / fake.pt"] == [[4.0, 0.0], [8.0, 0.5]]
    for name in ("report.json", "index.html", "runs.parquet", "robustness.parquet", "judged_faces.parquet",
                 "fooling_by_identity.parquet", "fooling_by_format.parquet", "errors.parquet", "photos.parquet"):
        assert os.path.exists(os.path.join(out, name)), name
    faces = pq.read_table(os.path.join(out, "judged_faces.parquet")).to_pylist()
    assert len(faces) == 8 and {f["fake_protected"] for f in faces if f["run_id"] == "R8"} == {True, False}
    on_disk = json.load(open(os.path.join(out, "report.json")))
    assert on_disk["runs"][0]["judges"]["fake"]["protection_rate"] in (0.5,)
    page = open(os.path.join(out, "index.html")).read()
    assert page.count("data:image/png;base64,") >= 1 + 4  # the curve and the panels
    assert "Colin_Powell_0001.png" in page and "fake protection rate" in page


def test_poisoning_mode(archive):
    ev = evaluator("poisoning", transforms=(), src=archive["src"])
    rows = manifest.rows_from_table(manifest.read_manifest(
        __import__("fsspec").filesystem("file"), os.path.join(archive["dst"], "_facepriv", "runs", "R8")))
    from facepriv.io.archive import Archive

    res = ev.evaluate(rows, Archive(archive["src"], {}), Archive(archive["dst"], {}))
    j = res.judges["fake"]
    # gallery = the run's cloaked outputs; probes = the 4 clean --gallery photos. A clean probe whose
    # own enrolment is a checkerboard is matched by the identity's other (unchanged) photo instead.
    assert j["mode"] == "poisoning" and j["faces"] == 4 and j["clean_accuracy"] == 1.0
    assert 0.0 <= j["protection_rate"] <= 1.0


def test_cli_without_judges(archive, tmp_path, capsys):
    from facepriv.cli import main

    out = str(tmp_path / "rep")
    assert main(["report", archive["dst"], "--no-robustness", "--out", out, "--no-progress", "--sample", "1"]) == 0
    assert "R8" in capsys.readouterr().out
    rep = json.load(open(os.path.join(out, "report.json")))
    assert [r["judges"] for r in rep["runs"]] == [{}, {}] and rep["transforms"] == []
    assert main(["report", str(tmp_path / "nothing")]) == 2  # no runs: a usage error, not a crash


# --------------------------------------------------------------------------- HTML in Chromium


def chromium():
    for c in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(c)
        if p:
            return p
    return None


def headless(page, *flags):
    """Run headless Chromium on a local page (1200 x 1600 window); returns its stdout."""
    profile = tempfile.mkdtemp()
    try:
        return subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                               "--no-first-run", "--disable-background-networking", "--disable-component-update",
                               "--disable-sync", f"--user-data-dir={profile}", "--window-size=1200,1600",
                               "--hide-scrollbars", *flags, "file://" + page], check=True, timeout=120,
                              capture_output=True, text=True).stdout
    finally:
        shutil.rmtree(profile, ignore_errors=True)


NEEDS_CHROMIUM = pytest.mark.skipif(chromium() is None, reason="chromium is not installed (apt-get install chromium)")


@NEEDS_CHROMIUM
def test_index_html_renders_in_headless_chromium(report, tmp_path):
    _, out = report
    shot = tmp_path / "out.png"
    headless(os.path.join(out, "index.html"), f"--screenshot={shot}")
    img = np.asarray(Image.open(shot).convert("RGB")).astype(np.float64)
    assert img.shape[:2] == (1600, 1200)
    assert img.std() > 20  # not blank: text, tables and face panels
    # the face panels put colour on the page (a blank or text-only page is nearly grey)
    sat = img.max(2) - img.min(2)
    assert (sat > 60).mean() > 0.01


# after the page has loaded: every chart <img> (kind, decoded size, place on the page) and where the
# Runs table starts, written into the DOM for --dump-dom
PROBE = """<script>window.addEventListener('load', () => {
  const charts = [...document.querySelectorAll('img.chart')].map(i => { const r = i.getBoundingClientRect();
    return {kind: i.dataset.kind, src: i.getAttribute('src'), complete: i.complete, naturalWidth: i.naturalWidth,
            naturalHeight: i.naturalHeight, x: r.x, y: r.y, w: r.width, h: r.height}; });
  const runs = [...document.querySelectorAll('h2')].find(h => h.textContent === 'Runs');
  const pre = document.createElement('pre'); pre.id = 'probe';
  pre.textContent = JSON.stringify({charts, runs_y: runs ? runs.getBoundingClientRect().y : null});
  document.body.appendChild(pre); });</script>"""


@NEEDS_CHROMIUM
def test_index_html_shows_the_charts_in_headless_chromium(report, tmp_path):
    """The bar chart and the quality histograms: <img>s near the top of the page (above the Runs
    table), loaded by the browser at the PNG's size, and drawn: the screenshot of the first bar
    chart's place holds its bars."""
    import html as html_mod

    _, out = report
    page = open(os.path.join(out, "index.html")).read()
    probe = str(tmp_path / "index_probe.html")  # index.html + PROBE; its relative paths resolve in `out`
    with open(probe, "w") as fh:
        fh.write(page.replace("<head>", f"<head><base href='file://{out}/'>", 1).replace("</body>", PROBE + "</body>"))
    dom = headless(probe, "--dump-dom", "--virtual-time-budget=10000")
    found = json.loads(html_mod.unescape(dom.split("<pre id=\"probe\">", 1)[1].split("</pre>", 1)[0]))
    charts = found["charts"]
    bars = [c for c in charts if c["kind"] == "protection"]
    assert len(bars) == 2 and len([c for c in charts if c["kind"] == "quality"]) == 2  # one of each per run
    for c in charts:
        assert c["complete"] and c["naturalWidth"] > 0 and c["naturalHeight"] > 0, c  # the PNG loaded
        assert c["w"] > 0 and c["h"] > 0 and c["y"] < found["runs_y"], c  # shown, above the Runs table
    w, h = Image.open(os.path.join(out, bars[0]["src"])).size  # the PNG the report wrote beside index.html
    assert (bars[0]["naturalWidth"], bars[0]["naturalHeight"]) == (w, h) == (bars[0]["w"], bars[0]["h"])  # 1:1
    shot = tmp_path / "charts.png"
    headless(probe, f"--screenshot={shot}")
    img = np.asarray(Image.open(shot).convert("RGB")).astype(np.int16)
    x, y = int(bars[0]["x"]), int(bars[0]["y"])
    assert y + h <= img.shape[0] and x + w <= img.shape[1]  # the first bar chart is in the screenshot
    crop = img[y: y + h, x: x + w]
    assert crop.std() > 20  # not blank
    # the fake judge's identification bars (tab20's first colour), not only axes and text
    assert (np.abs(crop - np.array([31, 119, 180])).max(axis=2) <= 6).sum() > 1000


# --------------------------------------------------------------------------- S3


def test_report_on_s3_archives(archive):
    """The same report with SRC and DST in S3 (moto's server on loopback), written back to DST."""
    pytest.importorskip("moto")
    from helpers import moto_s3

    env = {"AWS_ACCESS_KEY_ID": "AKIAREPORTTEST", "AWS_SECRET_ACCESS_KEY": "report-secret", "AWS_DEFAULT_REGION": "us-east-1"}
    with moto_s3(env) as (endpoint, client):
        os.environ["AWS_ENDPOINT_URL_S3"] = endpoint
        for bucket, root in (("rsrc", archive["src"]), ("rdst", archive["dst"])):
            client.create_bucket(Bucket=bucket)
            for dirpath, _, files in os.walk(root):
                for f in files:
                    path = os.path.join(dirpath, f)
                    key = os.path.relpath(path, root)
                    if key.startswith("_facepriv/report"):
                        continue
                    data = open(path, "rb").read()
                    if f == "summary.json":
                        data = json.dumps(dict(json.loads(data), src="s3://rsrc")).encode()
                    client.put_object(Bucket=bucket, Key=key, Body=data)
        ev = evaluator(transforms=("jpeg85",), src=archive["src"])
        r = build_report(["s3://rdst"], ReportSettings(judges=["fake"], gallery=archive["src"], sample=2,
                                                       run_ids=["R8"]), log=lambda m: None, evaluator=ev)
        run = r["runs"][0]
        assert run["src"] == "s3://rsrc" and run["fooling_rate"] == 0.5
        assert run["judges"]["fake"]["protection_rate"] == 0.5
        assert run["robustness"]["jpeg85"]["judges"]["fake"]["protection_rate"] == 0.5
        keys = {o["Key"] for o in client.list_objects_v2(Bucket="rdst", Prefix="_facepriv/report/")["Contents"]}
        assert {"_facepriv/report/report.json", "_facepriv/report/index.html"} <= keys
        assert "rsrc" not in {b["Name"] for b in client.list_buckets()["Buckets"]} or not [
            o for o in client.list_objects_v2(Bucket="rsrc").get("Contents", []) if "_facepriv" in o["Key"]]
