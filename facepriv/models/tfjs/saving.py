"""An imported TF.js graph saved as a facepriv checkpoint (kept apart from graph.py: the
checkpoint module builds models through the registry, which imports the graph)."""

from __future__ import annotations

from typing import Any

from facepriv.models.tfjs.graph import TfjsGraph


def save_imported(module: TfjsGraph, out_path: str, **meta: Any) -> str:
    """Save an imported model as a facepriv checkpoint (arch "tfjs"); returns its sha256."""
    from facepriv.models.checkpoint import save_checkpoint

    return save_checkpoint(out_path, module, arch="tfjs", classes=[], build=module.build_kwargs(),
                           kind=module.kind, crop=module.crop, name=module.name, **meta)
