"""One checkpoint file = weights + metadata (arch, class names, input size, data summary,
accuracy). Loaded only with `torch.load(weights_only=True)`; failures raise CheckpointError
with a message that says what to do.
"""

from __future__ import annotations

import hashlib
import io
import pickle
from dataclasses import dataclass
from typing import Any

import fsspec
import torch
from torch import nn

from facepriv.errors import CheckpointError
from facepriv.models.registry import build_model

FORMAT = "facepriv-checkpoint/1"
# Convolutional arches whose weights are kept channels-last once loaded: the same outputs,
# and on CPU forward+backward ~2.2x faster for paper-cnn (8-32 channels) and ~1.4x for
# inception-resnet-v1 (oneDNN's blocked kernels); also the layout CUDA prefers for convs.
CHANNELS_LAST_ARCHES = frozenset({"paper-cnn", "inception-resnet-v1", "facenet-embedder"})


@dataclass
class Loaded:
    model: nn.Module
    meta: dict[str, Any]
    sha256: str

    @property
    def classes(self) -> list[str]:
        return list(self.meta.get("classes", []))


def save_checkpoint(
    path: str, model: nn.Module, arch: str, classes: list[str], build: dict | None = None, **meta: Any
) -> str:
    """Save and return the file's sha256. `build` holds extra constructor kwargs for `arch`."""
    payload = {
        "build": dict(build or {}),
        "format": FORMAT,
        "arch": arch,
        "classes": list(classes),
        "input_size": int(getattr(model, "input_size", 160)),
        "meta": meta,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    with fsspec.open(path, "wb") as f:
        f.write(data)
    return hashlib.sha256(data).hexdigest()


def load_checkpoint(path: str, device: str | torch.device = "cpu") -> Loaded:
    try:
        with fsspec.open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise CheckpointError(f"model checkpoint {path!r} not found; train one with `facepriv train`") from None
    except IsADirectoryError:
        raise CheckpointError(f"model checkpoint {path!r} is a directory, not a file") from None
    return checkpoint_from_bytes(data, path, device)


def checkpoint_from_bytes(data: bytes, path: str, device: str | torch.device = "cpu") -> Loaded:
    """A checkpoint from its bytes (`path` names it in errors)."""
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError, AttributeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path!r} is corrupt or not a facepriv checkpoint (torch.load with weights_only=True "
            f"refused it: {first[:200]}). Re-create it with `facepriv train`."
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path!r} is not a facepriv checkpoint (no '{FORMAT}' header); "
            "create one with `facepriv train` or `facepriv models import-tfjs`"
        )
    arch = payload["arch"]
    classes = payload.get("classes", [])
    try:
        model = build_model(arch, num_classes=max(len(classes), 1), **payload.get("build", {}))
        model.load_state_dict(payload["state_dict"])
    except (ValueError, RuntimeError, KeyError) as e:
        raise CheckpointError(f"{path!r}: weights do not fit architecture {arch!r}: {str(e)[:200]}") from None
    model.eval().to(device)
    if arch in CHANNELS_LAST_ARCHES:
        model.to(memory_format=torch.channels_last)
    for p in model.parameters():
        p.requires_grad_(False)
    meta = {"arch": arch, "classes": classes, "input_size": payload.get("input_size", 160), **payload.get("meta", {})}
    return Loaded(model=model, meta=meta, sha256=hashlib.sha256(data).hexdigest())
