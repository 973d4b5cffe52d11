"""Universal-perturbation files: v (.npy), its amplified PNG and its JSON sidecar.

`describe(path)` is what applying a v needs to know about it (its sha256, L-inf size, xi, norm,
and the frame it lives in: "crop" = the face's square crop box, the paper's fit and any file
without a sidecar frame; "aligned" = the 5-point template named by "template"; with the
surrogates and fit data it was fitted on), read from the file and the sidecar that
`facepriv uap fit` writes next to it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from typing import Any

import fsspec
import numpy as np

from facepriv.errors import FacePrivError, UsageError


def paths(out: str) -> dict[str, str]:
    stem = out[:-4] if out.endswith(".npy") else out
    return {"npy": out if out.endswith(".npy") else out + ".npy", "png": stem + ".png",
            "history": stem + ".history.parquet", "json": stem + ".json", "crops": stem + ".crops.parquet"}


def amplified_png(v: np.ndarray) -> bytes:
    """v (3,S,S) stretched to 0-255 (0 -> 128) as PNG bytes."""
    from PIL import Image

    m = float(np.abs(v).max()) or 1.0
    img = ((v / m) * 127.5 + 127.5).round().clip(0, 255).astype(np.uint8).transpose(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def write_atomic(path: str, data: bytes) -> None:
    fs, p = fsspec.core.url_to_fs(path)
    parent = os.path.dirname(p)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = f"{p}.tmp-{os.getpid()}"
    with fs.open(tmp, "wb") as f:
        f.write(data)
    fs.mv(tmp, p)


def load_perturbation(path: str) -> np.ndarray:
    """v from a .npy file: float32 (3, S, S), finite."""
    try:
        with fsspec.open(path, "rb") as f:
            v = np.load(io.BytesIO(f.read()), allow_pickle=False)
    except FileNotFoundError:
        raise FacePrivError(f"universal perturbation {path!r} not found; fit one with `facepriv uap fit`") from None
    except ValueError as e:
        raise FacePrivError(f"{path!r} is not a .npy array: {e}") from None
    if v.ndim != 3 or v.shape[0] != 3 or not np.issubdtype(v.dtype, np.floating) or not np.isfinite(v).all():
        raise FacePrivError(f"{path!r}: expected a finite float (3, S, S) perturbation, got {v.dtype} {v.shape}")
    return v.astype(np.float32)


def load_sidecar(out: str) -> dict[str, Any] | None:
    p = paths(out)["json"]
    try:
        with fsspec.open(p, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        return None


def describe(path: str) -> dict[str, Any]:
    """{"path", "sha256", "linf" (0-255 units), "xi", "norm"} of the perturbation at `path`
    (UsageError when it is missing or not a perturbation: caught before any work starts)."""
    try:
        with fsspec.open(path, "rb") as f:
            sha = hashlib.sha256(f.read()).hexdigest()
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        raise UsageError(f"universal perturbation {path!r} cannot be read ({type(e).__name__}); "
                         "fit one with `facepriv uap fit`") from None
    try:
        v = load_perturbation(path)
    except FacePrivError as e:
        raise UsageError(str(e)) from None
    side = load_sidecar(path) or {}
    settings = side.get("settings") or {}
    return {"path": path, "sha256": sha, "linf": float(abs(v).max()) * 255.0, "xi": settings.get("xi"),
            "norm": settings.get("norm"), "frame": side.get("frame", "crop"), "template": side.get("template"),
            "size": int(v.shape[-1]), "surrogates": side.get("surrogates"), "fit_data": side.get("fit_data")}
