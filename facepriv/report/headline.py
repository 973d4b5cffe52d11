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


def expect_table(report: dict[str, Any]) -> str:
    """A markdown table per run: each judge's identification and verification protection on the
    written file and under every transform judged, and the face quality (`facepriv report
    --markdown`; the README's "what protection to expect" table is this output)."""
    stages = ["written"] + list(report.get("transforms") or [])
    names = {"written": "written file", "down0.5": "half size"}
    head = ["run", "judge", "protocol"] + [names.get(s, f"JPEG q{s[4:]}" if s.startswith("jpeg") else s) for s in stages]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report.get("runs", []):
        for name in report.get("judges", []):
            for proto in ("identification", "verification"):
                cells = []
                for s in stages:
                    j = (r.get("judges", {}).get(name) if s == "written"
                         else r.get("robustness", {}).get(s, {}).get("judges", {}).get(name)) or {}
                    v = j.get("protection_rate") if proto == "identification" else verification_rate(j)
                    cells.append(_pct(v))
                if set(cells) != {"-"}:
                    lines.append(f"| {r['run_id']} | {name} | {proto} | " + " | ".join(cells) + " |")
        q = r.get("face_ssimulacra2_min")
        if q is not None and r.get("face_psnr_mean") is not None:
            lines.append(f"| {r['run_id']} | face quality | | face PSNR {r['face_psnr_mean']:.1f} dB, SSIMULACRA 2 "
                         f"mean {r['face_ssimulacra2_mean']:.0f} / min {q:.0f} |" + " |" * (len(stages) - 1))
    return "\n".join(lines)
