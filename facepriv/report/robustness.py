"""What platforms do to photos, as pure functions: JPEG re-encoding and downscaling.

Every entry of `TRANSFORMS` maps an RGB uint8 (H, W, 3) array to an RGB uint8 array. The
JPEG ones keep the size; ``down0.5`` halves it, so faces found on the original must be
re-detected or moved with `scale_faces` / `scale_boxes` (`apply` does that for you).

JPEG is written the way sharing sites write it: 4:2:0 chroma subsampling, no metadata,
Pillow's standard quantisation tables. Downscaling uses Pillow's antialiased Lanczos filter.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

Transform = Callable[[np.ndarray], np.ndarray]

SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}


def _as_rgb(data_or_rgb: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    if isinstance(data_or_rgb, (bytes, bytearray, memoryview)):
        from facepriv.io.imageio import decode

        return decode(bytes(data_or_rgb)).rgb
    a = np.asarray(data_or_rgb)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB array or encoded image bytes, got {a.dtype} {a.shape}")
    return a


def jpeg_bytes(data_or_rgb: bytes | np.ndarray, quality: int, subsampling: str = "4:2:0") -> bytes:
    """Encode (decoded first when given bytes) as a baseline JPEG at `quality` (1-95+)."""
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"JPEG quality must be 1..100, got {quality}")
    if subsampling not in SUBSAMPLING:
        raise ValueError(f"subsampling must be one of {sorted(SUBSAMPLING)}, got {subsampling!r}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(_as_rgb(data_or_rgb))).save(
        buf, format="JPEG", quality=int(quality), subsampling=SUBSAMPLING[subsampling], optimize=False
    )
    return buf.getvalue()


def jpeg(data_or_rgb: bytes | np.ndarray, quality: int, subsampling: str = "4:2:0") -> np.ndarray:
    """Re-encode as JPEG at `quality` and decode again: RGB uint8 array of the same size."""
    with Image.open(io.BytesIO(jpeg_bytes(data_or_rgb, quality, subsampling))) as im:
        return np.asarray(im.convert("RGB")).copy()


def downscale(data_or_rgb: bytes | np.ndarray, factor: float = 0.5) -> np.ndarray:
    """Resize by `factor` (0 < factor <= 1) with Pillow's antialiased Lanczos filter.

    The new size is round(W * factor) x round(H * factor), at least 1x1; use
    `scale_of(before, after)` for the exact per-axis factors.
    """
    if not 0 < factor <= 1:
        raise ValueError(f"downscale factor must be in (0, 1], got {factor}")
    rgb = _as_rgb(data_or_rgb)
    h, w = rgb.shape[:2]
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    if size == (w, h):
        return rgb.copy()
    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize(size, Image.Resampling.LANCZOS)).copy()


# --------------------------------------------------------------------------- geometry


def scale_of(before: Sequence[int], after: Sequence[int]) -> tuple[float, float]:
    """(sx, sy) from two image shapes (H, W, ...): new pixel coordinate = old * s."""
    return after[1] / before[1], after[0] / before[0]


def scale_boxes(boxes: np.ndarray, sx: float, sy: float | None = None) -> np.ndarray:
    """Boxes (n, 4) x0, y0, x1, y1 (edge coordinates, as MTCNN returns) scaled to the resized image."""
    sy = sx if sy is None else sy
    b = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
    b[:, [0, 2]] *= sx
    b[:, [1, 3]] *= sy
    return b


def scale_points(points: np.ndarray, sx: float, sy: float | None = None) -> np.ndarray:
    """Landmarks (..., 2) x, y scaled to the resized image."""
    sy = sx if sy is None else sy
    p = np.asarray(points, np.float32).copy()
    p[..., 0] *= sx
    p[..., 1] *= sy
    return p


def scale_faces(faces: Sequence[dict[str, Any]], sx: float, sy: float | None = None) -> list[dict[str, Any]]:
    """Face dicts ('box', 'landmarks', other keys kept) moved into the resized image."""
    out = []
    for f in faces:
        g = dict(f)
        g["box"] = scale_boxes(f["box"], sx, sy)[0]
        if f.get("landmarks") is not None:
            g["landmarks"] = scale_points(f["landmarks"], sx, sy)
        out.append(g)
    return out


# --------------------------------------------------------------------------- table


def _jpeg_at(q: int) -> Transform:
    def t(rgb: np.ndarray) -> np.ndarray:
        return jpeg(rgb, q)

    t.__name__ = f"jpeg{q}"
    t.__doc__ = f"JPEG re-encoding at quality {q} (4:2:0)."
    return t


def _down(factor: float) -> Transform:
    def t(rgb: np.ndarray) -> np.ndarray:
        return downscale(rgb, factor)

    t.__name__ = f"down{factor:g}"
    t.__doc__ = f"Downscale by {factor:g} (Lanczos, antialiased)."
    return t


TRANSFORMS: dict[str, Transform] = {
    "jpeg95": _jpeg_at(95),
    "jpeg85": _jpeg_at(85),
    "jpeg75": _jpeg_at(75),
    "down0.5": _down(0.5),
}
# Transforms that change the image size (faces must be re-detected or scaled afterwards).
RESIZING = frozenset({"down0.5"})


def get_transform(name: str) -> Transform:
    """A TRANSFORMS entry, or "jpegQ" / "downF" for any quality Q or factor F."""
    if name in TRANSFORMS:
        return TRANSFORMS[name]
    try:
        if name.startswith("jpeg"):
            return _jpeg_at(int(name[4:]))
        if name.startswith("down"):
            return _down(float(name[4:]))
    except ValueError:
        pass
    raise ValueError(f"unknown transform {name!r}; choose one of {sorted(TRANSFORMS)} (or jpegQ / downF)")


def apply(name: str, rgb: np.ndarray, faces: Sequence[dict[str, Any]] | None = None
          ) -> tuple[np.ndarray, list[dict[str, Any]] | None]:
    """Run transform `name` on `rgb`; faces (if given) are scaled to the output's size."""
    out = get_transform(name)(rgb)
    if faces is None:
        return out, None
    sx, sy = scale_of(rgb.shape, out.shape)
    return out, (list(faces) if (sx, sy) == (1.0, 1.0) else scale_faces(faces, sx, sy))
