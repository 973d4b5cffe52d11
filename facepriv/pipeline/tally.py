"""Running totals of a cloak run's manifest rows: what summary.json says."""

from __future__ import annotations

from array import array
from typing import Any

import numpy as np

FACE_QUALITY = ("face_psnr", "face_ssim", "face_ssimulacra2")  # per-face manifest fields summarised per run


def spread(values) -> dict[str, float | None]:
    """mean, p10 (linear interpolation, as report.aggregate.quantile) and min of some values."""
    if not len(values):
        return {"mean": None, "p10": None, "min": None}
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "p10": float(np.quantile(v, 0.10)), "min": float(v.min())}


class Tally:
    """Running totals for summary.json, so the driver never holds all rows (per face it keeps
    only the three quality figures, 12 bytes)."""

    def __init__(self) -> None:
        self.inputs = self.ok = self.no_face = self.errors = self.skipped = 0
        self.faces = self.judged = self.fooled = self.redetected = 0
        self.psnr_sum = self.ssim_sum = 0.0
        self.quality_n = 0
        # every face's finite quality figures (float32, as the manifest holds them): for p10/min
        self.face_quality: dict[str, array] = {m: array("f") for m in FACE_QUALITY}
        self.reasons: dict[str, int] = {}

    def add_all(self, rows) -> "Tally":
        for r in rows:
            self.add(r)
        return self

    def add(self, r: dict[str, Any]) -> None:
        self.inputs += 1
        st = r["status"]
        if st == "ok":
            self.ok += 1
        elif st == "no_face":
            self.no_face += 1
        elif st == "skipped":
            self.skipped += 1
        else:
            self.errors += 1
            reason = (r.get("reason") or "unknown").split(":")[0][:80]
            self.reasons[reason] = self.reasons.get(reason, 0) + 1
        if st in ("ok", "no_face"):
            for f in r.get("faces") or []:
                self.faces += 1
                self.redetected += bool(f.get("redetected"))
                if f.get("judged"):
                    self.judged += 1
                    self.fooled += bool(f.get("fooled"))
                for m, values in self.face_quality.items():
                    v = f.get(m)
                    if v is not None and np.isfinite(v):
                        values.append(v)
            if r.get("psnr") is not None and np.isfinite(r["psnr"]):
                self.psnr_sum += r["psnr"]
                self.ssim_sum += r["ssim"]
                self.quality_n += 1

    def summary(self, run_id: str, seconds: float) -> dict[str, Any]:
        processed = self.inputs - self.skipped
        return {
            "run_id": run_id,
            "inputs": self.inputs,
            "ok": self.ok,
            "no_face": self.no_face,
            "errors": self.errors,
            "skipped": self.skipped,
            "faces": self.faces,
            "faces_redetected": self.redetected,
            "faces_judged": self.judged,
            "fooled": self.fooled,
            "fooling_rate": (self.fooled / self.judged) if self.judged else None,
            "psnr_mean": (self.psnr_sum / self.quality_n) if self.quality_n else None,
            "ssim_mean": (self.ssim_sum / self.quality_n) if self.quality_n else None,
            **{f"{m}_{k}": v for m, values in self.face_quality.items() for k, v in spread(values).items()},
            "seconds": seconds,
            "images_per_second": processed / seconds if seconds > 0 else None,
            "error_reasons": self.reasons,
        }
