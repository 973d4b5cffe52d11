"""index.html from the report dict: a pure function (string in, string out), no I/O.
The eps curve and the face panels arrive as base64 PNG strings and are embedded; the charts of
`report["plots"]` are PNG files `build` writes beside index.html, shown by file name."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1b1b1b;background:#fff}
h1{font-size:24px;margin:0 0 4px} h2{font-size:19px;margin-top:28px;border-bottom:2px solid #2b6cb0;padding-bottom:3px}
h3{font-size:15px;margin:16px 0 6px}
table{border-collapse:collapse;margin:6px 0 12px;font-size:13px}
th,td{border:1px solid #c8ced6;padding:4px 8px;text-align:right} th{background:#e8eef6}
td.l,th.l{text-align:left} .note{color:#6b4400;background:#fff4d6;padding:6px 10px;border-radius:4px;font-size:13px}
.panels{display:flex;flex-wrap:wrap;gap:14px} .panel{border:1px solid #c8ced6;border-radius:6px;padding:8px;background:#f7f9fc}
.panel img{display:block} .cap{font-size:12px;margin-top:4px;max-width:490px}
.fooled{color:#b00020;font-weight:600} .kept{color:#1a7f37;font-weight:600} .muted{color:#666;font-size:12px}
.bar{display:inline-block;height:10px;background:#2b6cb0;vertical-align:middle}
figure.plot{margin:10px 0 18px} figure.plot img{display:block;max-width:100%;height:auto}
figure.plot figcaption{font-size:12px;color:#444;max-width:900px;margin-top:4px}
"""


FACE_QUALITY = (("face_psnr", "PSNR"), ("face_ssim", "SSIM"), ("face_ssimulacra2", "SSIMULACRA2"))


def esc(v: Any) -> str:
    return html.escape("" if v is None else str(v))


def fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return esc(v)


def pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def table(rows: Sequence[dict[str, Any]], cols: Sequence[tuple[str, str]], left: Sequence[str] = ()) -> str:
    """rows -> <table>; cols = [(key, header)]; keys ending in 'rate' or 'accuracy' render as %."""
    if not rows:
        return '<p class="muted">(none)</p>'
    head = "".join(f'<th class="{"l" if k in left else ""}">{esc(h)}</th>' for k, h in cols)
    body = []
    for r in rows:
        cells = []
        for k, _ in cols:
            v = r.get(k)
            s = pct(v) if (k.endswith("rate") or k.endswith("accuracy")) and isinstance(v, (int, float)) else fmt(v)
            cells.append(f'<td class="{"l" if k in left else ""}">{s}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def render(report: dict[str, Any], curve_png_b64: str | None = None,
           panels: Sequence[dict[str, Any]] = ()) -> str:
    """The whole page. `panels`: [{run_id, key, image (b64 PNG of the 3 crops), caption fields}]."""
    runs = report.get("runs", [])
    judge_names = sorted({n for r in runs for n in r.get("judges", {})})
    transforms = list(dict.fromkeys(t for r in runs for t in r.get("robustness", {})))
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>facepriv report</title><style>{CSS}</style>"
           "</head><body>",
           "<h1>facepriv fooling report</h1>",
           f"<p class='muted'>generated {esc(report.get('generated_at'))} · {len(runs)} run(s) · "
           f"mode {esc(report.get('mode'))} · judges: {esc(', '.join(judge_names) or 'none')} · "
           f"every rate below is measured on the written files (re-read, re-detected, re-classified)</p>"]
    for n in report.get("notes", []):
        out.append(f"<p class='note'>{esc(n)}</p>")
    out += plot_figures(report.get("plots") or [])

    # ---- runs overview
    out.append("<h2>Runs</h2>")
    cols = [("run_id", "run"), ("attack", "attack"), ("eps", "eps"), ("model_name", "model"), ("photos", "photos"),
            ("errors", "errors"), ("faces", "faces"), ("faces_judged", "judged"), ("fooling_rate", "surrogate fooling rate"),
            ("psnr_mean", "PSNR mean"), ("ssim_mean", "SSIM mean")]
    cols += [(f"{m}.spread", f"face {name} mean / p10 / min") for m, name in FACE_QUALITY]
    flat = []
    for r in runs:
        d = dict(r, model_name=(str(r.get("model") or "–").rsplit("/", 1)[-1]))
        for m, _ in FACE_QUALITY:
            d[f"{m}.spread"] = " / ".join(fmt(r.get(f"{m}_{k}"), 4 if m == "face_ssim" else 2)
                                          for k in ("mean", "p10", "min"))
        for n in judge_names:
            j = r.get("judges", {}).get(n, {})
            d[f"{n}.clean_accuracy"] = j.get("clean_accuracy")
            d[f"{n}.protection_rate"] = j.get("protection_rate")
            d[f"{n}.faces"] = j.get("faces")
        flat.append(d)
    for n in judge_names:
        cols += [(f"{n}.clean_accuracy", f"{n} clean accuracy"), (f"{n}.protection_rate", f"{n} protection rate"),
                 (f"{n}.faces", f"{n} faces")]
    out.append(table(flat, cols, left=("run_id", "attack", "model_name")))

    # ---- robustness
    if transforms:
        out.append("<h2>Robustness: after re-encoding / resizing the cloaked files</h2>")
        rows = []
        for r in runs:
            base = {"run": f"{r.get('attack')} eps {fmt(r.get('eps'))}", "transform": "as written",
                    "fooling_rate": r.get("fooling_rate")}
            for n in judge_names:
                base[f"{n}_protection_rate"] = r.get("judges", {}).get(n, {}).get("protection_rate")
            rows.append(base)
            for t in transforms:
                v = r.get("robustness", {}).get(t)
                if v is None:
                    continue
                d = {"run": "", "transform": t, "fooling_rate": v.get("fooling_rate")}
                for n in judge_names:
                    d[f"{n}_protection_rate"] = v.get("judges", {}).get(n, {}).get("protection_rate")
                rows.append(d)
        cols = [("run", "run"), ("transform", "transform"), ("fooling_rate", "surrogate fooling rate")] + [
            (f"{n}_protection_rate", f"{n} protection rate") for n in judge_names]
        out.append(table(rows, cols, left=("run", "transform")))

    # ---- one panel per judge: identification and verification, as written and after each transform
    out += judge_panels(report)

    # ---- leave-one-out: which judges crafted the cloaks
    loo_rows = report.get("leave_one_out") or []
    if any(r.get("role") not in (None, "independent") for r in loo_rows):
        out.append("<h2>Judges by role: white-box, held-out (leave-one-out), independent</h2>")
        out.append("<p class='muted'>white-box: the run was crafted on this model (not independent evidence); "
                   "held-out: an installed embedder the run did not craft on; independent: never a crafting model "
                   "(dlib, the headline). Embedding shift: mean clean-vs-cloaked distance under the judge's metric "
                   "(cosine drop for embedders).</p>")
        ts = [k[: -len("_protection_rate")] for k in loo_rows[0] if k.endswith("_protection_rate")
              and k != "protection_rate"]
        cols = [("run_id", "run"), ("judge", "judge"), ("role", "role"), ("clean_accuracy", "clean accuracy"),
                ("protection_rate", "protection rate"), ("embedding_shift", "embedding shift")] + [
            (f"{t}_protection_rate", f"{t} protection rate") for t in ts]
        out.append(table(loo_rows, cols, left=("run_id", "judge", "role")))

    # ---- curve
    if curve_png_b64:
        out.append("<h2>Fooling rate versus eps</h2>")
        out.append(f"<img alt='fooling rate vs eps' src='data:image/png;base64,{curve_png_b64}'>")

    # ---- panels
    if panels:
        out.append("<h2>Sample faces: original, amplified perturbation, cloaked</h2>")
        out.append("<p class='muted'>perturbation shown as 127 + gain × (cloaked − original); predictions "
                   "are on the original and on the written cloaked file.</p><div class='panels'>")
        for p in panels:
            out.append("<div class='panel'>"
                       f"<img alt='{esc(p.get('key'))}' src='data:image/png;base64,{p['image']}'>"
                       f"<div class='cap'>{caption(p)}</div></div>")
        out.append("</div>")

    # ---- per-run details
    for r, det in zip(runs, report.get("details", [])):
        out.append(f"<h2>Run {esc(r['run_id'])}: {esc(r.get('attack'))} eps {fmt(r.get('eps'))}</h2>")
        out.append(f"<p class='muted'>DST {esc(r.get('dst'))} · SRC {esc(r.get('src'))} · model {esc(r.get('model'))}"
                   f" · statuses {esc(r.get('statuses'))}</p>")
        q = det.get("quality", {})
        out.append("<h3>Quality</h3>")
        out.append("<p class='muted'>photo: the whole written photo against the original (its untouched "
                   "background flatters it); face: each face's quality region (box + 10% each side) of the "
                   "written file, read back. SSIMULACRA 2: 90 visually lossless, 70 high, 50 medium.</p>")
        labels = [("psnr", "photo PSNR"), ("ssim", "photo SSIM")] + [(m, f"face {name}") for m, name in FACE_QUALITY]
        stats = ("n", "mean", "std", "min", "p05", "p10", "median", "p95", "max")
        out.append(table([dict(metric=label, **{s: q[k].get(s) for s in stats}) for k, label in labels if k in q],
                         [("metric", "metric")] + [(s, s) for s in stats], left=("metric",)))
        fo = det.get("fooling", {})
        out.append("<h3>Fooling rate by input format</h3>")
        out.append(table(fo.get("by_format", []), [("format", "format"), ("faces", "faces"), ("judged", "judged"),
                                                   ("fooled", "fooled"), ("fooling_rate", "fooling rate")],
                         left=("format",)))
        out.append("<h3>Fooling rate by identity</h3>")
        out.append(identity_table(fo.get("by_identity", [])))
        out.append("<h3>Faces per photo</h3>")
        fpp = det.get("faces_per_photo", {})
        out.append(table([{"faces": k, "photos": v} for k, v in fpp.items()], [("faces", "faces"), ("photos", "photos")]))
        out.append("<h3>Errors by reason</h3>")
        out.append(table(det.get("errors", []), [("reason", "reason"), ("count", "count"), ("examples", "examples")],
                         left=("reason", "examples")))
        out.append("<h3>Timings (seconds per photo)</h3>")
        tm = det.get("timings", {})
        out.append(table([dict(stage=k, **v) for k, v in tm.items()],
                         [("stage", "stage"), ("n", "n"), ("mean", "mean"), ("median", "median"), ("p95", "p95"),
                          ("sum", "sum")], left=("stage",)))
        for n in det.get("notes", []):
            out.append(f"<p class='note'>{esc(n)}</p>")
    out.append("</body></html>")
    return "\n".join(out)


def plot_figures(plots: Sequence[dict[str, Any]]) -> list[str]:
    """The charts ({file, alt, caption}: PNGs beside index.html) as <figure>s under one heading."""
    if not plots:
        return []
    return ["<h2>At a glance: protection and quality</h2>"] + [
        f"<figure class='plot'><img class='chart' data-kind='{esc(p.get('kind'))}' src='{esc(p['file'])}' "
        f"alt='{esc(p.get('alt'))}'>"
        f"<figcaption>{esc(p.get('caption'))}</figcaption></figure>" for p in plots]


def judge_panels(report: dict[str, Any]) -> list[str]:
    """Per judge: its metric and threshold, and a table over runs x (as written, each transform) of
    identification (clean accuracy, protection rate) and verification (judged, protected, rate)."""
    runs = report.get("runs", [])
    settings = report.get("judge_settings") or {}
    names = list(dict.fromkeys([*settings, *sorted({n for r in runs for n in r.get("judges", {})})]))
    out = []
    for n in names:
        js = settings.get(n, {})
        against = js.get("verify_against")
        ref = ("the clean gallery photos of the face's own identity" if against == "gallery" else
               "the same face in the clean original" if against == "original" else "–")
        out.append(f"<h2>Judge {esc(n)}: identification and verification</h2>")
        out.append(f"<p class='muted'>{esc(js.get('metric', '–'))} distance, threshold {fmt(js.get('threshold'))} "
                   "(a distance at or below it is a match). <b>Identification</b>: rank-1 in the clean gallery; "
                   "protected = recognised when clean, not when cloaked. <b>Verification</b>: the cloaked face (the "
                   f"written file, re-detected) against {esc(ref)}; judged = the clean face matches, protected = "
                   "the cloaked face matches nothing.</p>")
        rows = []
        for r in runs:
            label = f"{r.get('run_id')}: {r.get('attack')} eps {fmt(r.get('eps'))}"
            stages = [("as written", r.get("judges", {}).get(n))] + [
                (t, (v.get("judges") or {}).get(n)) for t, v in r.get("robustness", {}).items()]
            for k, (stage, j) in enumerate(stages):
                if j is None:
                    continue
                v = j.get("verification") or {}
                rows.append({"run": label if k == 0 else "", "transform": stage, "faces": j.get("faces"),
                             "clean_accuracy": j.get("clean_accuracy"), "protection_rate": j.get("protection_rate"),
                             "v_faces": v.get("faces"), "v_judged": v.get("judged"), "v_protected": v.get("protected"),
                             "v_protection_rate": v.get("protection_rate")})
        cols = [("run", "run"), ("transform", "transform"), ("faces", "identification faces"),
                ("clean_accuracy", "clean accuracy"), ("protection_rate", "identification protection rate"),
                ("v_faces", "verification faces"), ("v_judged", "judged"), ("v_protected", "protected"),
                ("v_protection_rate", "verification protection rate")]
        out.append(table(rows, cols, left=("run", "transform")))
    return out


def identity_table(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return '<p class="muted">(none)</p>'
    body = []
    for r in rows:
        fr = r.get("fooling_rate")
        bar = f"<span class='bar' style='width:{int(round(100 * fr))}px'></span> " if fr is not None else ""
        body.append(f"<tr><td class='l'>{esc(r.get('identity'))}</td><td>{r.get('judged')}</td>"
                    f"<td>{r.get('fooled')}</td><td class='l'>{bar}{pct(fr)}</td></tr>")
    return ("<table><tr><th class='l'>identity</th><th>judged</th><th>fooled</th><th class='l'>fooling rate</th></tr>"
            + "".join(body) + "</table>")


def caption(p: dict[str, Any]) -> str:
    parts = [f"<b>{esc(p.get('key'))}</b> <span class='muted'>({esc(p.get('run'))}, gain ×{p.get('gain', 0):.0f})</span>"]
    if p.get("label"):
        parts.append(f"true: {esc(p['label'])}")
    for name, pr in p.get("preds", {}).items():
        c, k, ok = pr[:3]
        extra = pr[3] if len(pr) > 3 else ""
        after = pr[4] if len(pr) > 4 else ""  # e.g. the judge's verification verdict
        yes, no = ("fooled", "not fooled") if name == "surrogate" else ("protected", "recognised")
        cls = "fooled" if ok else "kept"
        word = yes if ok else (no if ok is not None else "(not judged)")
        parts.append(f"{esc(name)}: {esc(c)} → <span class='{cls}'>{esc(k)}</span>{esc(extra)} {word}{esc(after)}")
    return "<br>".join(parts)
