"""The report job (shell): find runs under one or more DSTs, read their Parquet manifests,
judge again (judges, robustness), aggregate with the pure functions of `aggregate`, and write
DST/_facepriv/report/{report.json, *.parquet, index.html, its chart PNGs}. Local folders and s3:// alike."""

from __future__ import annotations

import io
import json
import posixpath
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from facepriv.io import imageio
from facepriv.io import manifest
from facepriv.report import robustness
from facepriv.io.archive import META_DIR, Archive, storage_options
from facepriv.errors import UsageError
from facepriv.report import aggregate as agg
from facepriv.report import leave_one_out as loo
from facepriv.report import html as html_mod
from facepriv.report import panels as pan
from facepriv.report import plots

REPORT_DIR = f"{META_DIR}/report"


@dataclass
class ReportSettings:
    judges: list[str] = field(default_factory=list)  # judge specs: "dlib", "sface", "tfjs:model.pt" (or "dlib,sface")
    judge_installed: bool = False  # also judge with every installed surrogate (leave-one-out columns)
    gallery: str | None = None  # DIR/<identity>/<photos>: evasion enrolment / poisoning probes
    gallery_per_identity: int | None = None  # use the first N photos per identity (sorted)
    labels: str = "folder"
    mode: str = "evasion"
    robustness: bool = True
    transforms: list[str] = field(default_factory=lambda: list(robustness.TRANSFORMS))
    sample: int = 8  # photos per run shown as panels
    run_ids: list[str] | None = None  # only these runs (default: every run under each DST)
    src: str | None = None  # override the SRC recorded in summary.json
    out: str | None = None  # where report/ goes (default: the first DST)
    s3_endpoint: str | None = None
    retries: int = 5
    device: str = "cpu"
    progress: bool = True
    # verification reference: "gallery" (clean photos of the probe's identity), "original" (each face's
    # own clean face in SRC; no gallery or labels needed) or None (gallery when there is one)
    verify_against: str | None = None
    # measuring the probes: Ray workers (None: as many as CPUs when there are enough faces to
    # measure; 0 or 1: in this process), `batch_size` probes per call; the report cache (only
    # rows not measured before are measured: DST/_facepriv/report/cache/)
    workers: int | None = 0
    batch_size: int = 8
    address: str | None = None
    cache: bool = True


@dataclass
class Run:
    run_id: str
    dst: Archive
    dst_url: str
    rows: list[dict[str, Any]]
    summary: dict[str, Any]

    @property
    def src_url(self) -> str | None:
        return self.summary.get("src")


def open_archive(url: str, s: ReportSettings) -> Archive:
    return Archive(url, storage_options(url, s.s3_endpoint, s.retries), s.retries)


def find_runs(dst: Archive, dst_url: str, run_ids: Sequence[str] | None = None) -> list[Run]:
    base = f"{dst.root}/{META_DIR}/runs"
    if not dst.fs.exists(base):
        return []
    runs = []
    for entry in sorted(dst.fs.ls(base, detail=False)):
        rid = posixpath.basename(entry.rstrip("/"))
        if run_ids and rid not in run_ids:
            continue
        rows = manifest.rows_from_table(manifest.read_manifest(dst.fs, f"{entry}/manifest"))
        if not rows:
            continue
        try:
            summary = json.loads(dst.read_bytes(f"{META_DIR}/runs/{rid}/summary.json"))
        except Exception:  # noqa: BLE001 - an interrupted run has rows but no summary
            summary = {}
        runs.append(Run(rid, dst, dst_url, rows, summary))
    return runs


def make_judges(specs: Sequence[str]):
    from facepriv.judges import get_judge

    return [get_judge(s) for s in specs]


def split_specs(values: Sequence[str]) -> list[str]:
    """["dlib,sface", "tfjs:m.pt"] -> ["dlib", "sface", "tfjs:m.pt"] (repeats dropped, order kept)."""
    return list(dict.fromkeys(p.strip() for v in values for p in str(v).split(",") if p.strip()))


def judge_settings(judges: Sequence[Any], against: Callable[[Any], str]) -> dict[str, dict[str, Any]]:
    """{name: {metric, threshold, verify_against}} for report.json and the page."""
    return {j.name: {"metric": j.metric, "threshold": float(j.threshold), "verify_against": against(j)}
            for j in judges}


def build_report(dsts: Sequence[str], s: ReportSettings, log: Callable[[str], None] = print,
                 evaluator: Any = None, remote: Any = None) -> dict[str, Any]:
    """Build and write the report; returns report.json's content.

    `evaluator` (an `evaluate.Evaluator`) may be passed to reuse enrolled galleries and cached
    clean embeddings across several reports; its judges and transforms are then used as they are.
    `remote`: the Ray layer that enrols the gallery and measures in workers (the module
    `facepriv.distributed.judging`, given by the CLI and the jobs); without it everything is
    measured in this process.
    """
    if s.mode not in ("evasion", "poisoning"):
        raise UsageError(f"--mode must be evasion or poisoning, got {s.mode!r}")
    from facepriv.judges import AGAINST

    if s.verify_against is not None and s.verify_against not in AGAINST:
        raise UsageError(f"--verify-against must be one of {', '.join(AGAINST)}, got {s.verify_against!r}")
    own = split_specs(s.judges)
    specs = own + (loo.installed_judge_specs(own) if s.judge_installed else [])
    if specs and not s.gallery and (s.mode == "poisoning" or s.verify_against == "gallery"):
        what = "poisoning mode" if s.mode == "poisoning" else "--verify-against gallery"
        raise UsageError(f"{what} needs --gallery DIR (one sub-folder of clean photos per identity)")
    archives = [open_archive(d, s) for d in dsts]
    runs = [r for a, d in zip(archives, dsts) for r in find_runs(a, d, s.run_ids)]
    if not runs:
        raise UsageError(f"no runs with a manifest under {', '.join(d + '/_facepriv/runs/' for d in dsts)}")
    log(f"report over {len(runs)} run(s): {', '.join(r.run_id for r in runs)}")
    notes: list[str] = []
    if s.judge_installed and len(specs) == len(own):
        notes.append("--judge-installed: no other surrogate installed (see `facepriv models list`)")
    judges = evaluator.judges if evaluator is not None else make_judges(specs)
    galleries = {}
    if judges and not s.gallery:
        notes.append("no --gallery: identification is not measured; verification compares each cloaked face "
                     "(every face of every photo, re-detected in the written file) with the same face in SRC")
    out = open_archive(s.out, s) if s.out else archives[0]
    prefix = "" if s.out else f"{REPORT_DIR}/"
    if judges and evaluator is None and s.gallery:
        from facepriv.report.gallery import enrol

        galleries = enrol(s, judges, out if s.cache else None, prefix, log, notes, specs, remote)
    from facepriv.report.evaluate import Evaluator

    ev = evaluator or Evaluator(judges, galleries, s.mode, s.transforms if s.robustness else [], s.labels, s.device,
                                s.progress, verify_against=s.verify_against, specs=specs, workers=s.workers,
                                batch_size=s.batch_size, cache_at=(out, prefix) if s.cache else None,
                                address=s.address, s3_endpoint=s.s3_endpoint, retries=s.retries, remote=remote)
    records, details, face_tables, panel_list = [], [], [], []
    measured: dict[str, dict[str, int]] = {}
    images: dict[str, bytes] = {}
    plot_list: list[dict[str, Any]] = []
    for run in runs:
        src_url = s.src or run.src_url
        src = open_archive(src_url, s) if src_url else None
        st = agg.run_setting(run.rows)
        log(f"run {run.run_id}: {len(run.rows)} rows, {st['attack']} eps {st['eps']}, SRC {src_url}")
        sample = agg.sample_rows(run.rows, s.sample)
        res = ev.evaluate(run.rows, src, run.dst) if (judges or ev.transforms) else None
        if res is not None and ev.last_counts:
            c = ev.last_counts
            log(f"  {c['probes']} faces: {c['measured']} measured, {c['cached']} from the report cache")
            measured[run.run_id] = dict(c)
        rec = agg.run_record(run.run_id, run.rows, res.judges if res else None, res.robustness if res else None,
                             dst=run.dst_url, src=src_url)
        rec["crafted_on"] = loo.crafting_specs(run.rows)
        records.append(rec)
        plot_list += make_plots(len(records), run, rec, images)
        det = {"quality": agg.quality(run.rows), "fooling": agg.fooling_tables(run.rows),
               "faces_per_photo": agg.faces_per_photo(run.rows), "errors": agg.errors_by_reason(run.rows),
               "timings": agg.timings(run.rows), "notes": list(res.notes[:20]) if res else []}
        if res and len(res.notes) > 20:
            det["notes"].append(f"... and {len(res.notes) - 20} more notes")
        details.append(det)
        if res:
            face_tables.append([{**{k: v for k, v in f.items() if k != "_probe"}, "run_id": run.run_id}
                                for f in res.faces])
        by_key = {f["source_key"]: f for f in (res.faces if res else [])}
        panel_list += make_panels(run, src, sample, by_key, [j.name for j in judges], notes)
    curves = agg.eps_curves(records)
    curve_b64 = pan.b64(pan.eps_curve_png(curves)) if curves else None
    report = {
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dsts": list(dsts), "mode": s.mode, "judges": [j.name for j in judges], "gallery": s.gallery,
        "judge_settings": judge_settings(judges, ev.against),
        "labels": s.labels, "transforms": list(dict.fromkeys(t for r in records for t in r["robustness"])),
        "runs": records, "details": details, "eps_curves": {k: [list(p) for p in v] for k, v in curves.items()},
        "robustness_table": agg.robustness_table(records), "leave_one_out": loo.table(records), "notes": notes,
        "plots": plot_list,
    }
    report["measured"] = measured
    write_outputs(out, prefix, report, runs, face_tables, html_mod.render(report, curve_b64, panel_list), images)
    report["written_to"] = out.url.rstrip("/") + ("/" + prefix.rstrip("/") if prefix else "")
    return report


def make_plots(index: int, run: Run, rec: dict[str, Any], images: dict[str, bytes]) -> list[dict[str, Any]]:
    """The run's charts: the protection bar chart (when a judge measured anything) and the quality
    histograms (when there are figures), put into `images` {file name: PNG}; returns their
    entries for report["plots"] {run_id, kind, file, alt, caption}."""
    name = f"{index:02d}-{re.sub(r'[^A-Za-z0-9._-]', '_', run.run_id)}.png"
    what = f"run {run.run_id} ({rec.get('attack')} eps {agg._num(rec.get('eps'))})"
    out = []
    stages, series = agg.protection_by_stage(rec)
    if series:
        labels = ["as written"] + [plots.stage_label(t) for t in stages[1:]]
        images[f"protection-{name}"] = plots.protection_bars_png(labels, series, f"Protection, {what}")
        out.append({"run_id": run.run_id, "kind": "protection", "file": f"protection-{name}",
                    "alt": f"bar chart, share of faces protected, {what}: {plots.describe_protection(labels, series)}",
                    "caption": f"Protection per judge, {what}: the share of faces protected in the written files and "
                               "after each re-encoding / resizing. Identification: the clean gallery's rank-1 is no "
                               "longer the face's identity; verification: the cloaked face matches no reference at "
                               "the judge's threshold."})
    values, floors = agg.quality_values(run.rows), agg.quality_floors(run.rows)
    if any(values.values()):
        marked = ", ".join(f"{plots.QUALITY_LABELS[m]} {v:g}" for m, v in floors.items())
        images[f"quality-{name}"] = plots.quality_hist_png(values, floors, f"Quality, {what}")
        out.append({"run_id": run.run_id, "kind": "quality", "file": f"quality-{name}",
                    "alt": f"histograms of photo and face PSNR / SSIM, {what}",
                    "caption": f"Quality, {what}: each written photo, and each face's quality region (box + 10% each "
                               "side), against the original; unchanged photos (infinite PSNR) left out."
                               + (f" Dashed: the run's floors ({marked})." if floors else "")})
    return out


def make_panels(run: Run, src: Archive | None, sample: Sequence[dict], by_key: dict[str, dict],
                judge_names: Sequence[str], notes: list[str]) -> list[dict[str, Any]]:
    if src is None:
        if sample:
            notes.append(f"run {run.run_id}: no SRC recorded, no face panels")
        return []
    out = []
    for r in sample:
        faces = agg.faces_of(r)
        f = next((x for x in faces if x.get("label")), None) or next((x for x in faces if x.get("judged")), faces[0])
        try:
            clean = imageio.decode(src.read_bytes(r["source_key"]), max_pixels=2**62).rgb
            cloaked = imageio.decode(run.dst.read_bytes(r.get("output_key") or r["source_key"]), max_pixels=2**62).rgb
            a, amp, b, gain = pan.panel(clean, cloaked, f["box"])
        except Exception as e:  # noqa: BLE001 - a panel is illustration; note and go on
            notes.append(f"panel for {r['source_key']}: {type(e).__name__}: {e}")
            continue
        import numpy as np

        strip = np.concatenate([a, np.full((a.shape[0], 6, 3), 255, np.uint8), amp,
                                np.full((a.shape[0], 6, 3), 255, np.uint8), b], axis=1)
        preds: dict[str, tuple] = {}
        if f.get("clean_pred") is not None:
            preds["surrogate"] = (f.get("clean_pred"), f.get("cloaked_pred"), f.get("fooled") if f.get("judged") else None)
        jf = by_key.get(r["source_key"], {})
        for n in judge_names:
            if f"{n}_clean_pred" in jf:
                d = jf.get(f"{n}_cloaked_distance")
                vd, vp = jf.get(f"{n}_verify_distance"), jf.get(f"{n}_verify_protected")
                verify = ("" if vp is None and vd is None else
                          f"; verification: {'protected' if vp else 'matched' if vp is not None else 'not judged'}"
                          + ("" if vd is None else f" (distance {max(vd, 0.0):.2f})"))
                if jf.get(f"{n}_clean_pred") is None and jf.get(f"{n}_protected") is None and vp is not None:
                    # no identification (no gallery): the verification verdict alone
                    preds[n] = ("clean", "cloaked", vp, "" if vd is None else f" (distance {max(vd, 0.0):.2f})",
                                " (verification against the clean original)")
                    continue
                preds[n] = (jf.get(f"{n}_clean_pred"), jf.get(f"{n}_cloaked_pred") or "no face",
                            jf.get(f"{n}_protected"), "" if d is None else f" (distance {d:.2f})", verify)
        out.append({"run": f"{r.get('attack')} eps {agg._num(r.get('eps'))}", "run_id": run.run_id,
                    "key": r["source_key"], "label": f.get("label"), "gain": gain, "preds": preds,
                    "image": pan.b64(pan.png(strip))})
    return out


def _parquet(rows: list[dict[str, Any]]) -> bytes:
    buf = io.BytesIO()
    clean = [{k: (json.dumps(v, default=str) if isinstance(v, (dict, list, tuple)) else v) for k, v in r.items()}
             for r in rows]
    pq.write_table(pa.Table.from_pylist(clean), buf, compression="zstd")
    return buf.getvalue()


def write_outputs(out: Archive, prefix: str, report: dict[str, Any], runs: Sequence[Run],
                  face_tables: list[list[dict]], page: str, images: dict[str, bytes] | None = None) -> None:
    tables = {
        "runs": [{k: v for k, v in r.items()} for r in report["runs"]],
        "fooling_by_setting": [dict(row, run_id=r["run_id"]) for r, d in zip(report["runs"], report["details"])
                               for row in d["fooling"]["by_setting"]],
        "fooling_by_identity": [dict(row, run_id=r["run_id"]) for r, d in zip(report["runs"], report["details"])
                                for row in d["fooling"]["by_identity"]],
        "fooling_by_format": [dict(row, run_id=r["run_id"]) for r, d in zip(report["runs"], report["details"])
                              for row in d["fooling"]["by_format"]],
        "errors": [dict(row, run_id=r["run_id"]) for r, d in zip(report["runs"], report["details"])
                   for row in d["errors"]],
        "robustness": report["robustness_table"],
        "leave_one_out": report.get("leave_one_out") or [],
        "judged_faces": [f for t in face_tables for f in t],
        "photos": [{"run_id": run.run_id, "source_key": row.get("source_key"), "status": row.get("status"),
                    "reason": row.get("reason"), "format": row.get("format"), "n_faces": row.get("n_faces"),
                    "psnr": row.get("psnr"), "ssim": row.get("ssim"), "attack": row.get("attack"),
                    "eps": row.get("eps"), "t_total": row.get("t_total")} for run in runs for row in run.rows],
    }
    for name, rows in tables.items():
        if rows:
            out.write_bytes(f"{prefix}{name}.parquet", _parquet(rows))
    for name, data in (images or {}).items():  # the charts index.html shows, beside it
        out.write_bytes(f"{prefix}{name}", data)
    out.write_text(f"{prefix}report.json", json.dumps(report, indent=2, default=str))
    out.write_text(f"{prefix}index.html", page)


def print_runs(report: dict[str, Any], file=None) -> None:
    """A compact text table of the runs (for the CLI)."""
    file = file or sys.stdout
    judge_names = report.get("judges", [])
    transforms = report.get("transforms", [])
    ident = "identification = rank-1 in the gallery" if report.get("gallery") else "no identification (no gallery)"
    for n, js in (report.get("judge_settings") or {}).items():
        print(f"judge {n}: {js['metric']} distance, threshold {js['threshold']:g}; {ident}; "
              f"verification against the {js['verify_against']}", file=file)
    head = ["run", "attack", "eps", "faces", "judged", "fooling", "PSNR", "SSIM"]
    head = ["run", "attack", "eps", "faces", "judged", "fooling", "PSNR", "SSIM",
            "face PSNR mean/p10/min", "face SSIM mean/p10/min", "face SSIMULACRA2 mean/p10/min"]
    for n in judge_names:
        head += [f"{n} clean acc", f"{n} protect", f"{n} verify protect"]
    for t in transforms:
        head += [f"{t} fool"] + [c for n in judge_names for c in (f"{t} {n} protect", f"{t} {n} verify protect")]
    lines = [" | ".join(head)]
    for r in report["runs"]:
        cells = [r["run_id"], str(r["attack"]), str(r["eps"]), str(r["faces"]), str(r["faces_judged"]),
                 _p(r["fooling_rate"]), _f(r["psnr_mean"], 2), _f(r["ssim_mean"], 4),
                 *(_spread(r, m, d) for m, d in (("face_psnr", 2), ("face_ssim", 4), ("face_ssimulacra2", 1)))]
        for n in judge_names:
            j = r["judges"].get(n, {})
            cells += [_p(j.get("clean_accuracy")), _p(j.get("protection_rate")), _p(agg.verification_rate(j))]
        for t in transforms:
            v = r["robustness"].get(t, {})
            cells += [_p(v.get("fooling_rate"))] + [
                c for n in judge_names for c in (_p(v.get("judges", {}).get(n, {}).get("protection_rate")),
                                                  _p(agg.verification_rate(v.get("judges", {}).get(n))))]
        lines.append(" | ".join(cells))
    print("\n".join(lines), file=file)
    rows = report.get("leave_one_out") or []
    if any(r.get("role") != loo.ROLE_INDEPENDENT for r in rows):  # an embedder judged: show the roles
        print("\njudges by role (white-box = crafted on; held-out = leave-one-out; independent = never crafts):",
              file=file)
        print(loo.format_table(rows), file=file)


def _p(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _f(v: float | None, d: int) -> str:
    return "-" if v is None else f"{v:.{d}f}"


def _spread(rec: dict[str, Any], metric: str, d: int) -> str:
    """A run's mean/p10/min of a per-face quality figure, in one cell."""
    return "/".join(_f(rec.get(f"{metric}_{k}"), d) for k in ("mean", "p10", "min"))
