"""The few lines a person reads first: per run, how many faces each judge no longer
identifies (written file, and after the harshest JPEG re-save judged), and the face quality."""

from __future__ import annotations

from typing import Any

from facepriv.report.aggregate import verification_rate


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def _jpeg_transforms(transforms) -> list[str]:
    return sorted((t for t in transforms if t.startswith("jpeg")), key=lambda t: int(t[4:] or 0))


def headline(report: dict[str, Any]) -> list[str]:
    lines = []
    jpeg = _jpeg_transforms(report.get("transforms") or [])
    harsh = jpeg[0] if jpeg else None
    for r in report.get("runs", []):
        parts = []
        for name in report.get("judges", []):
            j = r.get("judges", {}).get(name) or {}
            ident, verif = j.get("protection_rate"), verification_rate(j)
            after = (r.get("robustness", {}).get(harsh, {}).get("judges", {}).get(name) or {}) if harsh else {}
            s = f"{name} {_pct(ident if ident is not None else verif)}"
            if ident is not None and verif is not None:
                s += f" (verification {_pct(verif)})"
            if harsh and after:
                a = after.get("protection_rate")
                s += f", after JPEG q{harsh[4:]} {_pct(a if a is not None else verification_rate(after))}"
            parts.append(s)
        q = r.get("face_ssimulacra2_min")
        quality = (f"face PSNR {r['face_psnr_mean']:.1f} dB mean; face SSIMULACRA 2 {r['face_ssimulacra2_mean']:.0f} "
                   f"mean, {q:.0f} worst" if r.get("face_psnr_mean") is not None and q is not None else "")
        faces = r.get("faces")
        lines.append(f"run {r['run_id']} ({r.get('attack')}, {faces} faces): protected from "
                     + ("; ".join(parts) if parts else "no judge (pass --judge dlib,sface)")
                     + (f". Quality: {quality}" if quality else ""))
    return lines
