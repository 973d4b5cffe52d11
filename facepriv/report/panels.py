"""Images for the report, as pure functions over arrays: face panels (original, amplified
perturbation, cloaked, like the paper's Tables II/III) and the fooling-rate-versus-eps curve.
They return PNG bytes; the HTML embeds them as base64."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from facepriv.core import geometry

PANEL_SIZE = 160


def face_crop(rgb: np.ndarray, box: Sequence[float], margin: float = 0.25) -> tuple[int, int, int, int]:
    """The cloak's region around a face (the pipeline's `face_region`), as integer pixels."""
    h, w = rgb.shape[:2]
    return geometry.face_region(np.asarray(box, np.float32)[:4], w, h, margin)


def amplify(clean: np.ndarray, cloaked: np.ndarray) -> tuple[np.ndarray, float]:
    """Perturbation (cloaked - clean) shown around mid-grey, scaled so its largest |value| fills
    the range: returns (uint8 image, gain). A zero perturbation is flat grey with gain 0."""
    d = cloaked.astype(np.float32) - clean.astype(np.float32)
    m = float(np.abs(d).max(initial=0.0))
    gain = 127.0 / m if m > 0 else 0.0
    return np.clip(127.5 + d * gain, 0, 255).round().astype(np.uint8), gain


def panel(clean_rgb: np.ndarray, cloaked_rgb: np.ndarray, box: Sequence[float], size: int = PANEL_SIZE
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(original crop, amplified perturbation, cloaked crop, gain), each size x size uint8 RGB."""
    if clean_rgb.shape != cloaked_rgb.shape:
        raise ValueError(f"original {clean_rgb.shape} and cloaked {cloaked_rgb.shape} differ in size")
    x0, y0, x1, y1 = face_crop(clean_rgb, box)
    a, b = clean_rgb[y0:y1, x0:x1], cloaked_rgb[y0:y1, x0:x1]
    amp, gain = amplify(a, b)

    def fit(x: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(np.ascontiguousarray(x)).resize((size, size), Image.Resampling.LANCZOS))

    return fit(a), fit(amp), fit(b), gain


def png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def eps_curve_png(curves: dict[str, list[tuple[float, float]]], title: str = "Fooling rate vs eps") -> bytes:
    """Line plot of {label: [(eps, fooling_rate), ...]} as PNG bytes (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    try:
        for label, pts in curves.items():
            xs, ys = zip(*pts) if pts else ((), ())
            ax.plot(xs, ys, marker="o", label=label)
        ax.set_xlabel("eps (L-inf, 0-255)")
        ax.set_ylabel("fooling rate (surrogate)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.set_title(title)
        if curves:
            ax.legend(loc="lower right", fontsize=8)
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)
