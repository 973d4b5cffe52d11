"""Reading a TF.js graph model: ``NAME.json`` (the graph, as JSON) and its weight shards.

``modelTopology.node`` is a TF GraphDef as JSON (name, op, input, attr); ``weightsManifest``
holds groups of weight specs (name, shape, dtype and an optional ``quantization``) whose
``paths`` are concatenated, the weights packed in manifest order. `load_graph` returns the
parsed JSON and the weights as numpy arrays; `plain_nodes` turns the JSON nodes into plain
dicts (decoded attributes, data inputs only) for the fix-ups (`fixups`).
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import numpy as np


class TfjsError(ValueError):
    """The TF.js model cannot be read or uses something this interpreter does not support."""


_DTYPES = {"float32": np.float32, "int32": np.int32, "bool": np.bool_, "float16": np.float16, "uint8": np.uint8,
           "uint16": np.uint16, "int8": np.int8, "int16": np.int16}

_KEEP_ATTRS = ("padding", "strides", "dilations", "explicit_paddings", "fused_ops", "epsilon", "data_format",
               "transpose_a", "transpose_b", "keep_dims", "squeeze_dims", "leakyrelu_alpha", "alpha", "ksize",
               "num_args", "mode")


def _b64(s: str) -> str:
    return base64.b64decode(s).decode("utf-8")


def _decode_attr(a: dict) -> Any:
    """One AttrValue (JSON form) -> plain python value."""
    if "list" in a:
        lst = a["list"]
        if "i" in lst:
            return [int(v) for v in lst["i"]]
        if "s" in lst:
            return [_b64(v) for v in lst["s"]]
        if "f" in lst:
            return [float(v) for v in lst["f"]]
        if "b" in lst:
            return [bool(v) for v in lst["b"]]
        return []
    if "s" in a:
        return _b64(a["s"])
    if "i" in a:
        return int(a["i"])
    if "f" in a:
        return float(a["f"])
    if "b" in a:
        return bool(a["b"])
    if "type" in a:
        return a["type"]
    return None


def read_weights(model: dict, base_dir: str) -> dict[str, np.ndarray]:
    """Weights of a TF.js model as numpy arrays (float32 after dequantisation, or int32)."""
    out: dict[str, np.ndarray] = {}
    for group in model.get("weightsManifest", []):
        buf = b"".join(_read_file(os.path.join(base_dir, p)) for p in group["paths"])
        off = 0
        for spec in group["weights"]:
            shape = [int(s) for s in spec["shape"]]
            n = int(np.prod(shape)) if shape else 1
            q = spec.get("quantization")
            dtype = spec["dtype"]
            if dtype == "string":
                raise TfjsError(f"weight {spec['name']!r}: string tensors are not supported")
            stored = q["dtype"] if q else dtype
            if stored not in _DTYPES:
                raise TfjsError(f"weight {spec['name']!r}: unsupported dtype {stored!r}")
            np_dt = np.dtype(_DTYPES[stored]).newbyteorder("<")
            nbytes = n * np_dt.itemsize
            if off + nbytes > len(buf):
                raise TfjsError(f"weights file too short at {spec['name']!r} (need {off + nbytes}, have {len(buf)})")
            arr = np.frombuffer(buf, np_dt, n, off).reshape(shape)
            off += nbytes
            if q:
                arr = _dequantise(arr, stored, q, dtype)
            out[spec["name"]] = np.ascontiguousarray(arr.astype(np.int32 if dtype == "int32" else np.float32)
                                                     if dtype in ("float32", "int32") else arr)
        if off != len(buf):
            raise TfjsError(f"weights group {group['paths']}: {len(buf) - off} unused bytes; manifest and .bin disagree")
    return out


def _dequantise(arr: np.ndarray, stored: str, q: dict, dtype: str) -> np.ndarray:
    """A quantised weight (stored as `stored`, meant as `dtype`) back to float32 (or int32)."""
    if stored == "float16":
        arr = arr.astype(np.float32)
    elif stored in ("uint8", "uint16"):
        scale = float(q["scale"])
        lo = float(q.get("min", q.get("offset", 0.0)))
        arr = arr.astype(np.float32) * scale + lo
    if dtype == "int32":
        arr = np.round(arr).astype(np.int32)
    return arr


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise TfjsError(f"weights file {path!r} named in the manifest is missing") from None


def load_graph(json_path: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(parsed model JSON, weights by name) for a TF.js graph model."""
    try:
        with open(json_path) as f:
            model = json.load(f)
    except FileNotFoundError:
        raise TfjsError(f"model {json_path!r} not found") from None
    except json.JSONDecodeError as e:
        raise TfjsError(f"{json_path!r} is not JSON: {e}") from None
    if "modelTopology" not in model or "node" not in model.get("modelTopology", {}):
        raise TfjsError(f"{json_path!r} is not a TF.js graph model (no modelTopology.node)")
    return model, read_weights(model, os.path.dirname(os.path.abspath(json_path)))


def plain_nodes(model: dict) -> list[dict]:
    """The graph's nodes as {"name", "op", "inputs" (data inputs, ":0" dropped), "attr" (decoded)}."""
    nodes = []
    for n in model["modelTopology"]["node"]:
        attr = {k: _decode_attr(v) for k, v in n.get("attr", {}).items() if k in _KEEP_ATTRS}
        inputs = [i for i in n.get("input", []) if not i.startswith("^")]
        inputs = [i[:-2] if i.endswith(":0") else i for i in inputs]
        for i in inputs:
            if ":" in i:
                raise TfjsError(f"node {n['name']!r}: multi-output input {i!r} is not supported")
        nodes.append({"name": n["name"], "op": n["op"], "inputs": inputs, "attr": attr})
    return nodes
