"""Verification: does a cloaked face still match a clean photo of the same person at the
judge's threshold? (What photo apps and face-compare APIs do, as opposed to rank-1
identification in a gallery, `base.evasion`.) Pure arithmetic over embeddings.

Two references:

- `verification(gallery, probes)`: against the clean gallery photos of the probe's own
  identity. A probe is *judged* when its clean face matches at least one of them (min distance
  <= threshold); *protected* when its cloaked face matches none (min distance > threshold). A
  cloaked face the detector no longer finds (None) is protected, as in `evasion`.
- `self_verification(pairs, metric, threshold)`: no gallery, no labels; each cloaked face
  against its own clean face (the same face in the original photo). *Judged* = faces the judge
  embeds in both; *protected* = distance > threshold. A cloaked face that is not found again
  is not judged here (counted in `cloaked_missing`).

protection_rate = protected / judged (None when nothing is judged).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from facepriv.judges.base import Gallery, pairwise_distances

AGAINST = ("gallery", "original")


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


def min_distance(gallery: Gallery, identity: str | None, emb: np.ndarray | None) -> float:
    """Smallest distance from `emb` to the enrolled photos of `identity` (inf when either is missing)."""
    if emb is None or identity is None or identity not in gallery:
        return float("inf")
    return float(pairwise_distances(np.atleast_2d(emb), gallery.embeddings[identity], gallery.metric).min())


def verification(
    gallery: Gallery,
    probes: Iterable[tuple[str | None, np.ndarray | None, np.ndarray | None]],
    details: bool = False,
) -> dict[str, Any]:
    """Probes (true identity, clean emb, cloaked emb) verified against the clean gallery photos
    of their own identity. Returns faces, judged, protected, protection_rate, counts and, with
    `details`, per-face rows (clean_distance, cloaked_distance, judged, protected)."""
    t = gallery.threshold
    rows = []
    for ident, clean, cloaked in probes:
        cd, kd = min_distance(gallery, ident, clean), min_distance(gallery, ident, cloaked)
        judged = cd <= t
        rows.append({"identity": ident, "clean_distance": cd, "cloaked_distance": kd, "judged": judged,
                     "protected": (kd > t) if judged else None,
                     "clean_missing": clean is None, "cloaked_missing": cloaked is None})
    judged = [r for r in rows if r["judged"]]
    protected = sum(r["protected"] for r in judged)
    out: dict[str, Any] = {
        "mode": "verification", "against": "gallery", "judge": gallery.judge, "faces": len(rows),
        "judged": len(judged), "protected": protected, "protection_rate": _rate(protected, len(judged)),
        "clean_missing": sum(r["clean_missing"] for r in rows),
        "cloaked_missing": sum(r["cloaked_missing"] for r in rows),
        "not_in_gallery": sum(r["identity"] not in gallery for r in rows),
        "threshold": t, "metric": gallery.metric,
    }
    if details:
        out["per_face"] = rows
    return out


def self_verification(
    pairs: Iterable[tuple[np.ndarray | None, np.ndarray | None]],
    metric: str,
    threshold: float,
    judge: str = "",
    details: bool = False,
) -> dict[str, Any]:
    """Pairs (clean emb, cloaked emb) of the same face: each cloaked face against its own clean face."""
    rows = []
    for clean, cloaked in pairs:
        both = clean is not None and cloaked is not None
        d = float(pairwise_distances(np.atleast_2d(clean), np.atleast_2d(cloaked), metric)[0, 0]) if both else None
        rows.append({"distance": d, "judged": both, "protected": (d > threshold) if both else None,
                     "clean_missing": clean is None, "cloaked_missing": cloaked is None})
    judged = [r for r in rows if r["judged"]]
    protected = sum(r["protected"] for r in judged)
    out: dict[str, Any] = {
        "mode": "verification", "against": "original", "judge": judge, "faces": len(rows),
        "judged": len(judged), "protected": protected, "protection_rate": _rate(protected, len(judged)),
        "clean_missing": sum(r["clean_missing"] for r in rows),
        "cloaked_missing": sum(r["cloaked_missing"] for r in rows),
        "threshold": float(threshold), "metric": metric,
    }
    if details:
        out["per_face"] = rows
    return out
