"""Rewrites of a read TF.js graph (`reader.plain_nodes` + weights) before it is interpreted.

`build_program` runs them in order: the converter-fault repairs around PReLU (`fix_prelu`),
the PReLU pattern fusion (`fuse_prelu`), pruning to the nodes the output needs, and the
conversion of the constants (float ones become parameters, convolution filters already in
torch's layout; integer ones stay in the program). The result is a JSON-able program
(`TfjsGraph`'s ``program``) and the float parameters by constant name.

Converter faults repaired (detected structurally, by graph pattern):

* PReLU appears as ``relu(x) + alpha * (x - |x|)`` (the 0.5 folded into alpha). Where the
  producer of ``x`` is a fused op whose ``fused_ops`` ends in Relu although ``x`` also
  feeds that pattern's Abs/Sub, the Relu belongs only to the Add branch: it is removed
  from the producer and re-inserted as a separate Relu node for the other consumers.
* The same converter stored the alpha constants of the PReLU Mul nodes negated: when the
  first fault is present, every PReLU pattern's alpha is negated back (negating only the
  faulty sites gives 17% rank-1 on lfw50, all of them 100%).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from facepriv.models.tfjs.ops import SUPPORTED_OPS
from facepriv.models.tfjs.reader import TfjsError, plain_nodes

PROGRAM_VERSION = 1

_CONV_OPS = ("Conv2D", "_FusedConv2D", "DepthwiseConv2dNative", "FusedDepthwiseConv2dNative")


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
    nodes = plain_nodes(model)
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
    consts, params, prog_nodes = _split_consts(order, weights)
    _check_filters(prog_nodes, consts)
    program = {"version": PROGRAM_VERSION, "input": placeholders[0], "output": output, "consts": consts,
               "nodes": prog_nodes}
    return program, params


def _split_consts(order: list[dict], weights: dict[str, np.ndarray]) -> tuple[dict, dict, list[dict]]:
    """(const specs for the program, float parameters by name, the non-Const nodes) of `order`.

    Float constants become parameters (a conv filter HWIO -> OIHW, a depthwise filter
    H W C M -> (C*M) 1 H W); integer ones keep their value in the program."""
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
    return consts, params, prog_nodes


def _check_filters(prog_nodes: list[dict], consts: dict[str, dict]) -> None:
    """Every convolution's filter is a float constant used by convolutions only, NHWC data."""
    for n in prog_nodes:
        if n["op"] in _CONV_OPS:
            fil = n["inputs"][1]
            if consts.get(fil, {}).get("layout") not in ("conv", "depthwise"):
                raise TfjsError(f"{n['name']}: filter {fil!r} must be a float constant")
            users = [m for m in prog_nodes if fil in m["inputs"]]
            if any(m["inputs"][1:2] != [fil] or m["op"] not in _CONV_OPS for m in users):
                raise TfjsError(f"filter {fil!r} is used outside a convolution; not supported")
            if n["attr"].get("data_format", "NHWC") != "NHWC":
                raise TfjsError(f"{n['name']}: data_format {n['attr']['data_format']!r} not supported")


def _default_output(model: dict, nodes: list[dict]) -> str:
    outs = (model.get("signature") or model.get("userDefinedMetadata", {}).get("signature") or {}).get("outputs") or {}
    names = {n["name"] for n in nodes}
    for key, v in outs.items():
        for cand in (v.get("name", key), key):
            cand = cand[:-2] if cand.endswith(":0") else cand
            if cand in names:
                return cand
    return nodes[-1]["name"]
