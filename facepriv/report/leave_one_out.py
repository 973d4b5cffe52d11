"""Leave-one-out judging: which judges crafted a run's cloaks (white-box) and which did not.

A run crafted with `--attack embed-pgd --surrogate a,b` records ``surrogate`` in its
manifest's ``settings_json`` (older runs may lack it; the ``model`` column is read too).
A judge built from one of those surrogates measures a white-box effect; an installed
embedder that was *not* used to craft is a held-out judge (the leave-one-out column), and
dlib, never a crafting model, is the independent headline judge.

Pure functions (`crafting_specs`, `roles`, `table`) plus two small shell helpers
(`spec_identity` hashes the spec's file, `installed_judge_specs` lists the store).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from facepriv.models import store

ROLE_INDEPENDENT = "independent"  # never a crafting model (dlib)
ROLE_WHITE_BOX = "white-box"  # one of the run's crafting surrogates
ROLE_HELD_OUT = "held-out"  # an embedder the run did not craft on (leave-one-out)


def crafting_specs(rows: Iterable[dict[str, Any]]) -> list[str]:
    """The surrogate specs a run was crafted on: settings_json's ``surrogate`` (comma-separated
    or a list; absent in older runs) plus the ``model`` column, in order, without repeats."""
    specs: list[str] = []
    for r in rows:
        sj = r.get("settings_json")
        if sj:
            try:
                s = json.loads(sj)
            except (TypeError, ValueError):
                s = {}
            if isinstance(s, dict):
                specs += store.parse_specs(s.get("surrogate"))
        specs += store.parse_specs(r.get("model"))
        if specs:
            break
    return list(dict.fromkeys(specs))


def stem(spec: str) -> str:
    """'mobilefacenet', '/x/mobilefacenet.pt', 'tfjs:mobilefacenet.json' -> 'mobilefacenet'."""
    base = spec.rsplit(":", 1)[-1] if ":" in spec and "://" not in spec else spec
    base = base.rstrip("/").rsplit("/", 1)[-1]
    for ext in (".pt", ".json"):
        if base.endswith(ext):
            base = base[: -len(ext)]
    return base


def roles(judges: Sequence[dict[str, Any]], specs: Sequence[dict[str, Any]]) -> dict[str, str]:
    """{judge name: role}. `judges`: [{"name", "model_name", "sha256", "embedder"}]; `specs`:
    [{"spec", "stem", "sha256" (None when the file is not found)}]. An embedder judge is
    white-box when its checkpoint hash equals a spec's file hash, or (conservatively) its model
    name equals a spec's stem; other embedders are held-out; non-embedders independent."""
    shas = {s.get("sha256") for s in specs} - {None}
    stems = {s.get("stem") for s in specs} - {None}
    out = {}
    for j in judges:
        if not j.get("embedder"):
            out[j["name"]] = ROLE_INDEPENDENT
        elif j.get("sha256") in shas or j.get("model_name") in stems:
            out[j["name"]] = ROLE_WHITE_BOX
        else:
            out[j["name"]] = ROLE_HELD_OUT
    return out


def judge_identity(judge: Any) -> dict[str, Any]:
    """What `roles` needs to know about a judge object."""
    name = getattr(judge, "name", str(judge))
    return {"name": name, "embedder": getattr(judge, "metric", None) == "cosine" and hasattr(judge, "sha256"),
            "sha256": getattr(judge, "sha256", None), "model_name": stem(name)}


def spec_identity(spec: str) -> dict[str, Any]:
    """{"spec", "stem", "sha256"}: the spec resolved like `facepriv.models.store.resolve`
    (installed name or path); sha256 None when it cannot be found here."""
    from facepriv.errors import FacePrivError
    from facepriv.models.install import sha256_file

    sha = None
    try:
        path = store.resolve(spec)
        if path.endswith(".pt"):
            sha = sha256_file(path)
    except (FacePrivError, OSError):
        pass
    return {"spec": spec, "stem": stem(spec), "sha256": sha}


def installed_judge_specs(existing: Sequence[str] = ()) -> list[str]:
    """``embedder:NAME`` for every installed surrogate not already among `existing` specs."""
    have = {stem(s) for s in existing if s.split(":", 1)[0] in ("tfjs", "embedder")}
    return [f"embedder:{n}" for n in store.installed() if n not in have]


def table(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flat rows, one per (run, judge): role, protection, clean accuracy, clean-vs-cloaked
    embedding distance, and protection after each robustness transform."""
    out = []
    for r in records:
        for name, j in (r.get("judges") or {}).items():
            row = {"run_id": r.get("run_id"), "attack": r.get("attack"), "eps": r.get("eps"),
                   "crafted_on": ",".join(r.get("crafted_on") or []) or None, "judge": name,
                   "role": j.get("role") or (ROLE_WHITE_BOX if j.get("crafting") else None),
                   "clean_accuracy": j.get("clean_accuracy"), "protection_rate": j.get("protection_rate"),
                   "faces": j.get("faces"), "embedding_shift": j.get("embedding_shift")}
            for t, v in (r.get("robustness") or {}).items():
                row[f"{t}_protection_rate"] = (v.get("judges") or {}).get(name, {}).get("protection_rate")
            out.append(row)
    return out


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The leave-one-out rows as text lines (for the CLI)."""
    if not rows:
        return ""
    ts = [k[: -len("_protection_rate")] for k in rows[0] if k.endswith("_protection_rate") and k != "protection_rate"]
    head = ["run", "judge", "role", "clean acc", "protect", "emb shift"] + [f"{t} protect" for t in ts]
    lines = [" | ".join(head)]

    def p(v):
        return "-" if v is None else f"{100 * v:.1f}%"

    for r in rows:
        lines.append(" | ".join([str(r["run_id"]), r["judge"], str(r["role"] or "-"), p(r["clean_accuracy"]),
                                 p(r["protection_rate"]),
                                 "-" if r.get("embedding_shift") is None else f"{r['embedding_shift']:.3f}"]
                                + [p(r.get(f"{t}_protection_rate")) for t in ts]))
    return "\n".join(lines)
