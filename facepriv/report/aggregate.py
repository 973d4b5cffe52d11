"""Pure aggregation over manifest rows (dicts in the schema of `facepriv.io.manifest`).

No I/O, no models: every function takes rows (and judge/robustness results) and returns
plain dicts/lists, so the arithmetic is testable on a hand-made manifest.

Conventions (the same as `facepriv.pipeline.cloaker.Tally`):
- rows with status "skipped" are not counted (their files belong to an earlier run);
- a face counts towards a fooling rate when `judged` is true; `fooled` is read from the
  re-read written file;
- quality (PSNR/SSIM) comes from "ok"/"no_face" rows with a finite value: per photo (`psnr`,
  `ssim`) and per face on its quality region (`face_psnr`, `face_ssim`, `face_ssimulacra2`,
  measured on the written file read back; the whole photo's untouched background flatters
  the photo figures).
"""

from __future__ import annotations

import json
import math
import posixpath
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

Row = dict[str, Any]

COUNTED = ("ok", "no_face", "error")
TIMINGS = ("t_read", "t_detect", "t_attack", "t_write", "t_judge", "t_total")
FACE_QUALITY = ("face_psnr", "face_ssim", "face_ssimulacra2")  # = pipeline.FACE_QUALITY


def rate(num: int, den: int) -> float | None:
    return num / den if den else None


def counted(rows: Iterable[Row]) -> list[Row]:
    """Rows that this run processed itself (not `skipped`)."""
    return [r for r in rows if r.get("status") != "skipped"]


def faces_of(row: Row) -> list[dict[str, Any]]:
    if row.get("status") not in ("ok", "no_face"):
        return []
    return list(row.get("faces") or [])


def identity_of(row: Row, face: dict[str, Any] | None = None) -> str | None:
    """A face's label, else the photo's parent folder (for --labels folder runs)."""
    if face is not None and face.get("label"):
        return face["label"]
    return None


def folder_identity(key: str) -> str | None:
    parent = posixpath.basename(posixpath.dirname(key or ""))
    return parent or None


# --------------------------------------------------------------------------- fooling


def fooling(faces: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """{faces, judged, fooled, fooling_rate, redetected} over face dicts."""
    n = judged = fooled = redet = 0
    for f in faces:
        n += 1
        redet += bool(f.get("redetected"))
        if f.get("judged"):
            judged += 1
            fooled += bool(f.get("fooled"))
    return {"faces": n, "judged": judged, "fooled": fooled, "fooling_rate": rate(fooled, judged),
            "redetected": redet}


def fooling_by(rows: Iterable[Row], key: Callable[[Row, dict[str, Any]], Any], name: str) -> list[dict[str, Any]]:
    """Fooling rate grouped by `key(row, face)` (None keys are grouped as None), sorted by key."""
    groups: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for r in counted(rows):
        for f in faces_of(r):
            groups[key(r, f)].append(f)
    out = []
    for k in sorted(groups, key=lambda v: (v is None, str(v) if not isinstance(v, tuple) else tuple(map(str, v)))):
        d = {name: k} if not isinstance(name, tuple) else dict(zip(name, k))
        d.update(fooling(groups[k]))
        out.append(d)
    return out


def fooling_tables(rows: Sequence[Row]) -> dict[str, list[dict[str, Any]]]:
    """Fooling rate per (attack, eps, model), identity and input format."""
    by_setting = fooling_by(rows, lambda r, f: (r.get("attack"), _num(r.get("eps")), r.get("model")),
                            ("attack", "eps", "model"))  # type: ignore[arg-type]
    return {
        "by_setting": by_setting,
        "by_identity": fooling_by(rows, lambda r, f: f.get("label"), "identity"),
        "by_format": fooling_by(rows, lambda r, f: r.get("format"), "format"),
    }


def _num(v: Any) -> Any:
    if v is None:
        return None
    v = float(v)
    return int(v) if v.is_integer() else v


# --------------------------------------------------------------------------- quality


def distribution(values: Iterable[float | None], bins: int = 10) -> dict[str, Any]:
    """n, mean, std, min, p05, p10, median, p95, max and a histogram of the finite values."""
    v = sorted(float(x) for x in values if x is not None and math.isfinite(float(x)))
    if not v:
        return {"n": 0, "mean": None, "std": None, "min": None, "p05": None, "p10": None, "median": None,
                "p95": None, "max": None, "hist": {"edges": [], "counts": []}}
    n = len(v)
    mean = sum(v) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / n)
    lo, hi = v[0], v[-1]
    width = (hi - lo) / bins if hi > lo else 1.0
    counts = [0] * bins
    for x in v:
        counts[min(bins - 1, int((x - lo) / width))] += 1
    edges = [lo + i * width for i in range(bins + 1)]
    return {"n": n, "mean": mean, "std": std, "min": lo, "p05": quantile(v, 0.05), "p10": quantile(v, 0.10),
            "median": quantile(v, 0.5), "p95": quantile(v, 0.95), "max": hi,
            "hist": {"edges": edges, "counts": counts}}


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile of an already sorted, non-empty sequence."""
    pos = (len(sorted_values) - 1) * q
    i = int(math.floor(pos))
    j = min(i + 1, len(sorted_values) - 1)
    return sorted_values[i] + (sorted_values[j] - sorted_values[i]) * (pos - i)


def quality_values(rows: Iterable[Row]) -> dict[str, list[float]]:
    """The finite photo figures (psnr, ssim) and face figures (FACE_QUALITY) of the ok/no_face rows."""
    rs = [r for r in counted(rows) if r.get("status") in ("ok", "no_face")]
    raw = {"psnr": [r.get("psnr") for r in rs], "ssim": [r.get("ssim") for r in rs],
           **{m: [f.get(m) for r in rs for f in faces_of(r)] for m in FACE_QUALITY}}
    return {k: [float(x) for x in v if x is not None and math.isfinite(float(x))] for k, v in raw.items()}


def quality(rows: Iterable[Row]) -> dict[str, Any]:
    """Distributions of the photo figures (psnr, ssim) and of the face figures (FACE_QUALITY)."""
    return {k: distribution(v) for k, v in quality_values(rows).items()}


FLOORS = {"face_psnr": "min_psnr", "face_ssim": "min_ssim", "face_ssimulacra2": "min_face_quality"}


def quality_floors(rows: Iterable[Row]) -> dict[str, float]:
    """{face metric: floor} from the run's settings_json (min_psnr, min_ssim, min_face_quality
    bind on each face's quality region); empty when the run set none (or older runs)."""
    sj = next((r.get("settings_json") for r in rows if r.get("settings_json")), None)
    try:
        s = json.loads(sj) if sj else {}
    except (TypeError, ValueError):
        s = {}
    if not isinstance(s, dict):
        return {}
    return {m: float(s[k]) for m, k in FLOORS.items() if isinstance(s.get(k), (int, float))}


# --------------------------------------------------------------------------- photos, errors, timings


def faces_per_photo(rows: Iterable[Row]) -> dict[str, int]:
    """Histogram {n_faces: photos} over ok/no_face rows (keys are strings for JSON)."""
    hist: dict[int, int] = defaultdict(int)
    for r in counted(rows):
        if r.get("status") in ("ok", "no_face"):
            hist[int(r.get("n_faces") or 0)] += 1
    return {str(k): hist[k] for k in sorted(hist)}


def statuses(rows: Iterable[Row]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for r in rows:
        out[str(r.get("status"))] += 1
    return dict(sorted(out.items()))


def reason_class(reason: str | None) -> str:
    """The stable part of an error reason (before the first ':'), as summary.json groups them."""
    return (reason or "unknown").split(":")[0].strip()[:80] or "unknown"


def errors_by_reason(rows: Iterable[Row]) -> list[dict[str, Any]]:
    groups: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        if r.get("status") == "error":
            groups[reason_class(r.get("reason"))].append(r.get("source_key") or "")
    return [{"reason": k, "count": len(v), "examples": sorted(v)[:3]}
            for k, v in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))]


def timings(rows: Iterable[Row]) -> dict[str, dict[str, Any]]:
    """Per stage: n, mean, median, p95, sum of seconds per photo (rows this run processed)."""
    rs = counted(rows)
    out = {}
    for k in TIMINGS:
        v = sorted(float(r[k]) for r in rs if r.get(k) is not None and math.isfinite(float(r[k])))
        out[k] = ({"n": len(v), "mean": sum(v) / len(v), "median": quantile(v, 0.5), "p95": quantile(v, 0.95),
                   "sum": sum(v)} if v else {"n": 0, "mean": None, "median": None, "p95": None, "sum": 0.0})
    return out


# --------------------------------------------------------------------------- runs


def run_setting(rows: Sequence[Row]) -> dict[str, Any]:
    """attack, eps, model of a run: the most common values over its rows."""
    def common(k: str) -> Any:
        vals: dict[Any, int] = defaultdict(int)
        for r in rows:
            if r.get(k) is not None:
                vals[r[k]] += 1
        return max(vals, key=lambda v: vals[v]) if vals else None

    return {"attack": common("attack"), "eps": _num(common("eps")), "model": common("model")}


def run_record(run_id: str, rows: Sequence[Row], judges: dict[str, dict[str, Any]] | None = None,
               robustness: dict[str, dict[str, Any]] | None = None, dst: str | None = None,
               src: str | None = None) -> dict[str, Any]:
    """One entry of report.json's `runs` list."""
    fo = fooling(f for r in counted(rows) for f in faces_of(r))
    q = quality(rows)
    st = statuses(rows)
    rec = {
        "run_id": run_id, "dst": dst, "src": src, **run_setting(rows),
        "photos": len(rows), "statuses": st, "errors": st.get("error", 0),
        "faces": fo["faces"], "faces_judged": fo["judged"], "fooled": fo["fooled"],
        "fooling_rate": fo["fooling_rate"], "faces_redetected": fo["redetected"],
        "psnr_mean": q["psnr"]["mean"], "ssim_mean": q["ssim"]["mean"],
        "psnr_min": q["psnr"]["min"], "ssim_min": q["ssim"]["min"],
        "psnr_p10": q["psnr"]["p10"], "ssim_p10": q["ssim"]["p10"],
        **{f"{m}_{k}": q[m][k] for m in FACE_QUALITY for k in ("mean", "p10", "min")},
        "judges": {name: judge_summary(res) for name, res in (judges or {}).items()},
        "robustness": {t: {"fooling_rate": v.get("fooling_rate"), "judged": v.get("judged"),
                           "fooled": v.get("fooled"),
                           "judges": {n: judge_summary(j) for n, j in (v.get("judges") or {}).items()}}
                       for t, v in (robustness or {}).items()},
    }
    return rec


VERIFICATION_KEEP = ("against", "faces", "judged", "protected", "protection_rate", "clean_missing",
                     "cloaked_missing", "not_in_gallery", "threshold", "metric")


def judge_summary(res: dict[str, Any]) -> dict[str, Any]:
    """The machine-readable part of a judges.evasion / judges.poisoning result (identification,
    flat as before) plus its `verification` (`judges.verification`) under that key."""
    keep = ("mode", "clean_accuracy", "protection_rate", "faces", "clean_correct", "protected",
            "cloaked_accuracy", "protection_rate_all", "cloaked_missing", "clean_missing", "not_in_gallery",
            "threshold", "metric", "crafting", "role", "embedding_shift")
    out = {k: res[k] for k in keep if k in res}
    if isinstance(res.get("verification"), dict):
        out["verification"] = {k: res["verification"][k] for k in VERIFICATION_KEEP if k in res["verification"]}
    return out


def verification_rate(judge: dict[str, Any] | None) -> float | None:
    """A judge summary's verification protection rate (None when absent)."""
    return ((judge or {}).get("verification") or {}).get("protection_rate")


def protection_by_stage(run: dict[str, Any]) -> tuple[list[str], dict[str, list[float | None]]]:
    """A report.json run record's protection rates for the bar chart: the stages ("as written",
    then each robustness transform) and {"JUDGE identification" / "JUDGE verification": rate per
    stage (None where not measured)}; a series measured at no stage is left out."""
    stages = [("as written", run.get("judges") or {})] + [
        (t, v.get("judges") or {}) for t, v in (run.get("robustness") or {}).items()]
    series: dict[str, list[float | None]] = {}
    for n in dict.fromkeys(n for _, js in stages for n in js):
        for kind, get in (("identification", lambda j: j.get("protection_rate")), ("verification", verification_rate)):
            vals = [get(js[n]) if n in js else None for _, js in stages]
            if any(v is not None for v in vals):
                series[f"{n} {kind}"] = vals
    return [t for t, _ in stages], series


def eps_curves(runs: Sequence[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """{"attack / model": [(eps, fooling_rate), ...]} for settings with two or more eps values."""
    pts: dict[str, dict[float, tuple[int, int]]] = defaultdict(dict)
    for r in runs:
        if r.get("eps") is None or r.get("fooling_rate") is None:
            continue
        label = f"{r.get('attack')} / {posixpath.basename(str(r.get('model') or '-'))}"
        fooled, judged = pts[label].get(float(r["eps"]), (0, 0))
        pts[label][float(r["eps"])] = (fooled + int(r["fooled"]), judged + int(r["faces_judged"]))
    out = {}
    for label, d in sorted(pts.items()):
        if len(d) >= 2:
            out[label] = [(e, d[e][0] / d[e][1]) for e in sorted(d) if d[e][1]]
    return out


def robustness_table(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flat rows: run, transform, surrogate fooling rate, each judge's identification and
    verification protection rates."""
    out = []
    for r in runs:
        base = {"run_id": r["run_id"], "attack": r.get("attack"), "eps": r.get("eps")}
        out.append({**base, "transform": "none", "fooling_rate": r.get("fooling_rate"),
                    **{f"{n}_protection_rate": j.get("protection_rate") for n, j in r.get("judges", {}).items()},
                    **{f"{n}_verification_protection_rate": verification_rate(j)
                       for n, j in r.get("judges", {}).items()}})
        for t, v in r.get("robustness", {}).items():
            out.append({**base, "transform": t, "fooling_rate": v.get("fooling_rate"),
                        **{f"{n}_protection_rate": j.get("protection_rate") for n, j in v.get("judges", {}).items()},
                        **{f"{n}_verification_protection_rate": verification_rate(j)
                           for n, j in v.get("judges", {}).items()}})
    return out


def sample_rows(rows: Sequence[Row], n: int, seed: int = 0) -> list[Row]:
    """A deterministic spread of up to n ok rows with a judged face first (then any face)."""
    import random

    ok = [r for r in counted(rows) if r.get("status") == "ok" and faces_of(r)]
    ok.sort(key=lambda r: r.get("source_key") or "")
    judged = [r for r in ok if any(f.get("judged") for f in faces_of(r))]
    pool = judged if len(judged) >= n else judged + [r for r in ok if r not in judged]
    rng = random.Random(seed)
    picked = pool if len(pool) <= n else rng.sample(pool, n)
    return sorted(picked, key=lambda r: r.get("source_key") or "")
