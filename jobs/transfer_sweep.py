"""Transfer sweep: surrogate sets x eps x technique on a labelled folder, judged by dlib.

    python jobs/transfer_sweep.py TEST_DIR --gallery TRAIN_DIR --out OUT \\
        --surrogates mobilefacenet mobilefacenet,mobileface,faceres --eps 4 8 --techniques plain mi mi-di-ti
    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/transfer_sweep.py ... --runner ray

For every configuration it runs exactly what a user would run,
``facepriv cloak SRC OUT/runs/NAME --attack embed-pgd --surrogate S --eps E <technique flags>``
(`--runner process`: the same parser and settings, cloaked in this process without Ray;
`--runner ray`: `facepriv cloak` on the Ray cluster, e.g. inside a `ray job submit`), then the
report on the written files (facepriv.report, in this process): dlib in evasion mode against
the clean --gallery (the headline: dlib never crafts), the same after JPEG q85 re-encoding,
and the crafting surrogates themselves as white-box judges (`embedder:NAME`; their mean
clean-vs-cloaked cosine distance is the "white-box drop"). With --held-out every installed
surrogate judges every run too, and the table gets the mean protection of the ones the run
did not craft on (leave-one-out).

Techniques: plain = `--momentum 0`; mi = `--momentum 1.0` (MI-FGSM); mi-di-ti = `--momentum 1.0
--input-diversity 0.5 --ti-sigma 1.0`. --cloak-args adds flags to every cloak (e.g.
"--steps 20 --min-psnr 35").

Writes OUT/results/NAME.json per configuration (resumable: a configuration whose result exists
is skipped; a finished cloak run without a result is reported, not re-cloaked) and the table
OUT/transfer_table.{csv,parquet,md} (markdown printed). --dry-run prints the commands only.
--limit-ids N: only the first N identities (sorted) of SRC and of the gallery, copied to
OUT/subset/ (SRC is never written). Exit status 0, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import math
import os
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # --working-dir .

TECHNIQUES: dict[str, list[str]] = {
    "plain": ["--momentum", "0"],
    "mi": ["--momentum", "1.0"],
    "mi-di-ti": ["--momentum", "1.0", "--input-diversity", "0.5", "--ti-sigma", "1.0"],
}
JPEG = "jpeg85"
COLUMNS = ["config", "surrogates", "eps", "technique", "faces", "whitebox_drop", "whitebox_protection",
           "dlib_clean_accuracy", "dlib_protection", f"dlib_protection_{JPEG}", "heldout_protection", "psnr_mean",
           "psnr_min", "ssim_mean", "ssim_min", "seconds_per_face", "run_id"]


def log(msg: str) -> None:
    print(f"[sweep {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- pure parts


def config_name(surrogates: str, eps: float, technique: str) -> str:
    s = "+".join(os.path.splitext(os.path.basename(x.strip()))[0] for x in surrogates.split(","))
    return f"{s}_eps{eps:g}_{technique}"


def grid(surrogate_sets: Sequence[str], eps: Sequence[float], techniques: Sequence[str]) -> list[dict[str, Any]]:
    for t in techniques:
        if t not in TECHNIQUES:
            raise ValueError(f"unknown technique {t!r}; choose from {', '.join(TECHNIQUES)}")
    return [{"name": config_name(s, e, t), "surrogates": s, "eps": float(e), "technique": t}
            for s in surrogate_sets for e in eps for t in techniques]


def cloak_argv(cfg: dict[str, Any], src: str, dst: str, extra: Sequence[str] = ()) -> list[str]:
    """The `facepriv cloak` arguments of one configuration."""
    return ["cloak", src, dst, "--attack", "embed-pgd", "--surrogate", cfg["surrogates"], "--eps", f"{cfg['eps']:g}",
            *TECHNIQUES[cfg["technique"]], *extra]


def _mean(vals: Sequence[float | None]) -> float | None:
    v = [x for x in vals if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return sum(v) / len(v) if v else None


def table_row(cfg: dict[str, Any], record: dict[str, Any], seconds_per_face: float | None,
              dlib: str = "dlib") -> dict[str, Any]:
    """One table row from a report run record (report.json's runs[i]): white-box judges are
    the ones whose role is white-box (the crafting surrogates), held-out the other embedders."""
    judges = record.get("judges") or {}
    wb = [j for j in judges.values() if j.get("role") == "white-box"]
    ho = [j for j in judges.values() if j.get("role") == "held-out"]
    d = judges.get(dlib, {})
    jp = ((record.get("robustness") or {}).get(JPEG) or {}).get("judges", {}).get(dlib, {})
    return {
        "config": cfg["name"], "surrogates": cfg["surrogates"], "eps": cfg["eps"], "technique": cfg["technique"],
        "faces": d.get("faces", record.get("faces")),
        "whitebox_drop": _mean([j.get("embedding_shift") for j in wb]),
        "whitebox_protection": _mean([j.get("protection_rate") for j in wb]),
        "dlib_clean_accuracy": d.get("clean_accuracy"), "dlib_protection": d.get("protection_rate"),
        f"dlib_protection_{JPEG}": jp.get("protection_rate"),
        "heldout_protection": _mean([j.get("protection_rate") for j in ho]),
        "psnr_mean": record.get("psnr_mean"), "psnr_min": record.get("psnr_min"),
        "ssim_mean": record.get("ssim_mean"), "ssim_min": record.get("ssim_min"),
        "seconds_per_face": seconds_per_face, "run_id": record.get("run_id"),
    }


def _cell(k: str, v: Any) -> str:
    if v is None:
        return "-"
    if k.startswith(("dlib_protection", "dlib_clean", "whitebox_protection", "heldout")):
        return f"{100 * v:.1f}%"
    if k.startswith("psnr"):
        return f"{v:.2f}"
    if k.startswith(("ssim", "whitebox_drop")):
        return f"{v:.4f}"
    if k == "seconds_per_face":
        return f"{v:.2f}"
    if k == "eps":
        return f"{v:g}"
    return str(v)


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    cols = [c for c in COLUMNS if c not in ("config", "run_id")]
    heads = {"whitebox_drop": "white-box drop (1-cos)", "whitebox_protection": "white-box protect",
             "dlib_clean_accuracy": "dlib clean acc", "dlib_protection": "dlib protect",
             f"dlib_protection_{JPEG}": f"dlib protect {JPEG}", "heldout_protection": "held-out protect",
             "seconds_per_face": "s/face"}
    out = ["| " + " | ".join(heads.get(c, c) for c in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(_cell(c, r.get(c)) for c in cols) + " |")
    return "\n".join(out)


def csv_text(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in COLUMNS})
    return buf.getvalue()


def assemble(results: Sequence[dict[str, Any]], order: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Result files' rows, in grid order (unknown names last, by name)."""
    rows = [r["row"] for r in results]
    pos = {n: i for i, n in enumerate(order or [])}
    return sorted(rows, key=lambda r: (pos.get(r["config"], len(pos)), r["config"]))


# ----------------------------------------------------------------------------- shell


def subset(folder: str, dest: str, n_ids: int) -> str:
    """Copy the first n_ids identity folders (sorted) of `folder` to `dest` (once)."""
    ids = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))[:n_ids]
    for i in ids:
        if not os.path.isdir(os.path.join(dest, i)):
            shutil.copytree(os.path.join(folder, i), os.path.join(dest, i))
    return dest


def finished_run(dst: str) -> str | None:
    """Run id of a finished cloak run (its summary.json exists) under dst."""
    runs = sorted(glob.glob(os.path.join(dst, "_facepriv", "runs", "*", "summary.json")))
    return os.path.basename(os.path.dirname(runs[-1])) if runs else None


def cloak(argv: list[str], runner: str) -> None:
    from facepriv.cli import build_parser
    from facepriv.cli.cloak import cmd_cloak
    from facepriv.cli.options import settings_from_args

    args = build_parser().parse_args(argv)
    if runner == "ray":
        rc = cmd_cloak(args)
        if rc:
            raise SystemExit(f"transfer_sweep: facepriv {shlex.join(argv)} exited {rc}")
        return
    from facepriv.distributed.runner import run_in_process

    s = run_in_process(args.src, args.dst, settings_from_args(args))
    log(f"  cloaked: {s['ok']} ok, {s['no_face']} no face, {s['errors']} errors, {s['faces']} faces, "
        f"{s['seconds']:.0f}s")


def make_evaluator(judge_specs: list[str], gallery: str):
    from facepriv.judges import Gallery, get_judge
    from facepriv.report.evaluate import Evaluator

    judges, galleries = [], {}
    for spec in judge_specs:
        j = get_judge(spec)
        log(f"enrolling {gallery} with {j.name} ...")
        galleries[j.name] = Gallery.from_folder(gallery, j)
        judges.append(j)
    return Evaluator(judges, galleries, "evasion", [JPEG], "folder", "cpu", progress=False)


def judge_specs_for(configs: Sequence[dict[str, Any]], held_out: bool) -> list[str]:
    specs = ["dlib"]
    names = []
    for c in configs:
        for s in c["surrogates"].split(","):
            s = s.strip()
            if s.endswith(".json"):
                continue  # an embedder judge needs a checkpoint: no white-box column for .json surrogates
            names.append(s)
    if held_out:
        from facepriv.models import store

        names += store.installed()
    return specs + [f"embedder:{n}" for n in dict.fromkeys(names)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="transfer_sweep.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", help="labelled photos, SRC/<identity>/<photos> (e.g. the lfw50 test split)")
    ap.add_argument("--gallery", required=True, help="clean enrolment photos, GALLERY/<identity>/<photos>")
    ap.add_argument("--out", required=True, help="output folder: runs/, reports/, results/, transfer_table.*")
    ap.add_argument("--surrogates", nargs="+", default=["mobilefacenet"], metavar="SET",
                    help="surrogate sets, each comma-separated (an ensemble), e.g. mobilefacenet "
                         "mobilefacenet,mobileface,faceres (default mobilefacenet)")
    ap.add_argument("--eps", nargs="+", type=float, default=[8.0], help="L-inf budgets, 0-255 (default 8)")
    ap.add_argument("--techniques", nargs="+", default=["mi"], choices=list(TECHNIQUES),
                    help="plain (--momentum 0), mi (--momentum 1.0), mi-di-ti (+ --input-diversity 0.5 "
                         "--ti-sigma 1.0) (default mi)")
    ap.add_argument("--cloak-args", default="", metavar="'FLAGS'",
                    help="extra `facepriv cloak` flags for every configuration, e.g. '--steps 20 --min-psnr 35'")
    ap.add_argument("--held-out", action="store_true",
                    help="judge every run with every installed surrogate too (leave-one-out column)")
    ap.add_argument("--limit-ids", type=int, default=None, metavar="N",
                    help="quick run: only the first N identities of SRC and of the gallery")
    ap.add_argument("--runner", default="process", choices=["process", "ray"],
                    help="process: cloak in this process (no Ray); ray: `facepriv cloak` on Ray (default process)")
    ap.add_argument("--dry-run", action="store_true", help="print the commands of every configuration and stop")
    args = ap.parse_args(argv)

    from facepriv.errors import FacePrivError

    try:
        configs = grid(args.surrogates, args.eps, args.techniques)
    except ValueError as e:
        print(f"transfer_sweep: error: {e}", file=sys.stderr)
        return 2
    extra = shlex.split(args.cloak_args)
    out = os.path.abspath(args.out)
    src, gallery = args.src, args.gallery
    if args.limit_ids:  # copied at run time; a dry run only names the folders
        src, gallery = os.path.join(out, "subset", "src"), os.path.join(out, "subset", "gallery")
        if not args.dry_run:
            subset(args.src, src, args.limit_ids)
            subset(args.gallery, gallery, args.limit_ids)
    specs = judge_specs_for(configs, args.held_out)
    results_dir = os.path.join(out, "results")
    if args.dry_run:
        for c in configs:
            done = os.path.exists(os.path.join(results_dir, c["name"] + ".json"))
            dst = os.path.join(out, "runs", c["name"])
            print(("# done: " if done else "") + "facepriv " + shlex.join(cloak_argv(c, src, dst, extra)))
            print(("# done: " if done else "") + "facepriv " + shlex.join(
                ["report", dst, *sum((["--judge", s] for s in specs), []), "--gallery", gallery, "--labels", "folder",
                 "--transforms", JPEG, "--out", os.path.join(out, "reports", c["name"])]))
        return 0
    os.makedirs(results_dir, exist_ok=True)
    todo = [c for c in configs if not os.path.exists(os.path.join(results_dir, c["name"] + ".json"))]
    log(f"{len(configs)} configuration(s), {len(configs) - len(todo)} already done; judges: {', '.join(specs)}")
    try:
        ev = make_evaluator(specs, gallery) if todo else None
        for k, c in enumerate(todo, 1):
            dst = os.path.join(out, "runs", c["name"])
            log(f"[{k}/{len(todo)}] {c['name']}")
            run_id = finished_run(dst)
            if run_id is None:
                if os.path.isdir(dst):
                    shutil.rmtree(dst)  # an interrupted run of ours: start it again
                argv_c = cloak_argv(c, src, dst, extra)
                log("  facepriv " + shlex.join(argv_c))
                cloak(argv_c, args.runner)
                run_id = finished_run(dst)
            else:
                log(f"  cloak run {run_id} already finished; reporting it")
            from facepriv.report.build import ReportSettings, build_report

            rep = build_report([dst], ReportSettings(judges=specs, gallery=gallery, transforms=[JPEG], sample=0,
                                                     run_ids=[run_id], out=os.path.join(out, "reports", c["name"]),
                                                     progress=False), log=lambda m: None, evaluator=ev)
            rec = rep["runs"][0]
            summary = json.load(open(os.path.join(dst, "_facepriv", "runs", run_id, "summary.json")))
            spf = (summary["seconds"] / summary["faces"]) if summary.get("faces") else None
            row = table_row(c, rec, spf)
            with open(os.path.join(results_dir, c["name"] + ".json"), "w") as f:
                json.dump({"config": c, "row": row, "record": rec, "summary": summary, "judges": specs,
                           "src": src, "gallery": gallery, "cloak_args": extra, "runner": args.runner}, f,
                          indent=2, default=str)
            log("  " + ", ".join(f"{k2} {_cell(k2, row[k2])}" for k2 in (
                "dlib_protection", f"dlib_protection_{JPEG}", "whitebox_drop", "psnr_mean", "ssim_mean",
                "seconds_per_face")))
    except FacePrivError as e:
        print(f"transfer_sweep: error: {e}", file=sys.stderr)
        return 2
    write_table(out, [c["name"] for c in configs])
    return 0


def write_table(out: str, order: Sequence[str]) -> list[dict[str, Any]]:
    """Assemble OUT/results/*.json of the current grid into OUT/transfer_table.{csv,parquet,md}; print it."""
    results = []
    for n in order:
        p = os.path.join(out, "results", n + ".json")
        if os.path.exists(p):
            results.append(json.load(open(p)))
    rows = assemble(results, order)
    md = markdown(rows)
    note = ("white-box drop = mean clean-vs-cloaked cosine distance (1 - cos) under the crafting surrogates "
            "(empty for .json surrogates); protection = among the faces dlib recognises when clean, the share "
            "it no longer recognises in the written (re-detected) file; s/face = cloak wall time / faces.")
    with open(os.path.join(out, "transfer_table.md"), "w") as f:
        f.write(md + "\n\n" + note + "\n")
    with open(os.path.join(out, "transfer_table.csv"), "w") as f:
        f.write(csv_text(rows))
    if rows:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist([{k: r.get(k) for k in COLUMNS} for r in rows]),
                       os.path.join(out, "transfer_table.parquet"))
    print(md)
    print(note)
    return rows


if __name__ == "__main__":
    sys.exit(main())
