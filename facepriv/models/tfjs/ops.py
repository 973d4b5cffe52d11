"""The op table: TF op name -> a torch function running one node of a TF.js graph.

Each entry is ``fn(a: Inputs, attr) -> (tensor, is_nchw)``: `a` gives the node's input
tensors (``a[i]``), whether each is kept NCHW (``a.nchw(i)``) and integer constants
(``a.ints(i)``); `attr` is the node's decoded attributes. Activations are kept NCHW
internally (4-D ones; the flag says which); ops whose attributes speak of NHWC axes (Pad,
Reshape, Mean, Squeeze, ConcatV2, ...) translate them.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

from facepriv.models.tfjs.reader import TfjsError

_NHWC_TO_NCHW_AXIS = [0, 2, 3, 1]


class Inputs:
    """One node's inputs as its op function sees them."""

    __slots__ = ("names", "_get", "_ints", "_nchw")

    def __init__(self, names: list[str], get: Callable[[str], torch.Tensor], ints: Callable[[str], list | int],
                 nchw: set[str]):
        self.names, self._get, self._ints, self._nchw = names, get, ints, nchw

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self._get(self.names[i])

    def nchw(self, i: int) -> bool:
        return self.names[i] in self._nchw

    def ints(self, i: int) -> list | int:
        """Input i's value; it must be an integer constant."""
        return self._ints(self.names[i])


Result = tuple[torch.Tensor, bool]


# ---------------------------------------------------------------------------------------
# layout and activation helpers
# ---------------------------------------------------------------------------------------


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


def _fused(y: torch.Tensor, attr: dict, args: list[torch.Tensor], channel_dim: int) -> torch.Tensor:
    """The `fused_ops` of a fused conv / matmul applied to its result `y` (extra inputs `args`)."""
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
# the ops
# ---------------------------------------------------------------------------------------


def _identity(a: Inputs, attr: dict) -> Result:
    return a[0], a.nchw(0)


def _conv(a: Inputs, attr: dict, depthwise: bool) -> Result:
    t = a[0]
    if not a.nchw(0):
        t = _to_nchw(t)
    w = a[1]
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
    return _fused(y, attr, [a[i] for i in range(2, len(a))], channel_dim=1), True


def _matmul(a: Inputs, attr: dict) -> Result:
    x, b = a[0], a[1]
    if a.nchw(0):
        x = _to_nhwc(x)
    if attr.get("transpose_a"):
        x = x.transpose(-1, -2)
    if attr.get("transpose_b"):
        b = b.transpose(-1, -2)
    y = x @ b
    return _fused(y, attr, [a[i] for i in range(2, len(a))], channel_dim=-1), False


def _bias_add(a: Inputs, attr: dict) -> Result:
    t, b = a[0], a[1]
    return (t + b.view(1, -1, 1, 1) if a.nchw(0) else t + b), a.nchw(0)


def _batch_norm(a: Inputs, attr: dict) -> Result:
    t, sc, off, mu, var = (a[i] for i in range(5))
    eps = float(attr.get("epsilon", 1e-3))
    if a.nchw(0):
        sc, off, mu, var = (v.view(1, -1, 1, 1) for v in (sc, off, mu, var))
    return (t - mu) * torch.rsqrt(var + eps) * sc + off, a.nchw(0)


_BINARY: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "Add": operator.add, "AddV2": operator.add, "Sub": operator.sub, "Mul": operator.mul,
    "RealDiv": operator.truediv, "Div": operator.truediv, "Maximum": torch.maximum, "Minimum": torch.minimum,
    "SquaredDifference": lambda x, y: (x - y) ** 2, "Pow": torch.pow,
}


def _binary(a: Inputs, attr: dict, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Result:
    x, y = a[0], a[1]
    xn, yn = a.nchw(0), a.nchw(1)
    if xn and not yn:
        y = _to_nchw(y)
    elif yn and not xn:
        x = _to_nchw(x)
    return fn(x, y), xn or yn


_UNARY: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "Abs": torch.abs, "Neg": torch.neg, "Exp": torch.exp, "Log": torch.log, "Sqrt": torch.sqrt,
    "Rsqrt": torch.rsqrt, "Square": torch.square, "Reciprocal": torch.reciprocal,
}


def _unary(a: Inputs, attr: dict, fn: Callable[[torch.Tensor], torch.Tensor]) -> Result:
    return fn(a[0]), a.nchw(0)


def _act(a: Inputs, attr: dict, op: str) -> Result:
    return _activation(a[0], op, attr), a.nchw(0)


def _prelu_pattern(a: Inputs, attr: dict) -> Result:
    """relu(x) + c * (x - |x|) (fixups.fuse_prelu)."""
    t, c = a[0], a[1]
    if a.nchw(0) and c.dim() <= 1 and c.numel() in (1, t.shape[1]):
        return F.prelu(t, (2 * c).reshape(-1)), True
    if a.nchw(0):
        c = _to_nchw(c)
    return torch.where(t > 0, t, 2 * c * t), a.nchw(0)


def _prelu(a: Inputs, attr: dict) -> Result:
    return _activation(a[0], "Prelu", attr, a[1], channel_dim=1 if a.nchw(0) else -1), a.nchw(0)


def _pad(a: Inputs, attr: dict, op: str) -> Result:
    t = a[0]
    p = a.ints(1)
    if a.nchw(0):
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
        return F.pad(t, flat, mode=mode), a.nchw(0)
    value = float(a[2].reshape(-1)[0]) if op == "PadV2" else 0.0
    return F.pad(t, flat, value=value), a.nchw(0)


def _reshape(a: Inputs, attr: dict) -> Result:
    t = a[0]
    if a.nchw(0):
        t = _to_nhwc(t)
    shape = [int(v) for v in np.array(a.ints(1)).reshape(-1)]
    if -1 not in shape and shape and shape[0] != t.shape[0] and int(np.prod(shape)) != t.numel():
        shape[0] = -1
    return t.reshape(shape), False


def _expand_dims(a: Inputs, attr: dict) -> Result:
    t = a[0]
    if a.nchw(0):
        t = _to_nhwc(t)
    ax = int(np.array(a.ints(1)).reshape(-1)[0])
    if ax < 0:
        ax += t.dim() + 1
    return t.unsqueeze(ax), False


def _squeeze(a: Inputs, attr: dict) -> Result:
    t = a[0]
    if a.nchw(0):
        t = _to_nhwc(t)
    dims = attr.get("squeeze_dims") or [i for i, s in enumerate(t.shape) if s == 1]
    dims = sorted((d + t.dim()) % t.dim() for d in dims)
    for dd in reversed(dims):
        t = t.squeeze(dd)
    return t, False


def _prod(t: torch.Tensor, axes: list[int], keep: bool) -> torch.Tensor:
    for ax in reversed(axes):
        t = t.prod(dim=ax, keepdim=keep)
    return t


_REDUCE: dict[str, Callable[[torch.Tensor, list[int], bool], torch.Tensor]] = {
    "Mean": lambda t, axes, keep: t.mean(dim=axes, keepdim=keep),
    "Sum": lambda t, axes, keep: t.sum(dim=axes, keepdim=keep),
    "Max": lambda t, axes, keep: t.amax(dim=axes, keepdim=keep),
    "Min": lambda t, axes, keep: t.amin(dim=axes, keepdim=keep),
    "Prod": _prod,
}


def _reduce(a: Inputs, attr: dict, fn: Callable[[torch.Tensor, list[int], bool], torch.Tensor]) -> Result:
    t = a[0]
    axes = [int(v) for v in np.array(a.ints(1)).reshape(-1)]
    keep = bool(attr.get("keep_dims", False))
    rank = t.dim()
    axes = sorted((ax + rank) % rank for ax in axes)
    out_nchw = False
    if a.nchw(0):
        if keep:
            axes = sorted(_NHWC_TO_NCHW_AXIS[ax] for ax in axes)
            out_nchw = True
        else:
            t = _to_nhwc(t)
    if not axes:
        return t, out_nchw
    return fn(t, axes, keep), out_nchw


def _softmax(a: Inputs, attr: dict) -> Result:
    return torch.softmax(a[0], dim=1 if a.nchw(0) else -1), a.nchw(0)


def _concat(a: Inputs, attr: dict) -> Result:
    ts = [a[i] for i in range(len(a) - 1)]
    ax = int(np.array(a.ints(-1)).reshape(-1)[0])
    any4 = any(a.nchw(i) for i in range(len(ts)))
    if any4:
        ts = [t if a.nchw(i) else _to_nchw(t) for i, t in enumerate(ts)]
        ax = _NHWC_TO_NCHW_AXIS[ax % 4]
    return torch.cat(ts, dim=ax), any4


def _pool(a: Inputs, attr: dict, op: str) -> Result:
    t = a[0]
    if not a.nchw(0):
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


OPS: dict[str, Callable[[Inputs, dict], Result]] = {
    **dict.fromkeys(("Identity", "Snapshot", "StopGradient"), _identity),
    **dict.fromkeys(("Conv2D", "_FusedConv2D"), partial(_conv, depthwise=False)),
    **dict.fromkeys(("DepthwiseConv2dNative", "FusedDepthwiseConv2dNative"), partial(_conv, depthwise=True)),
    **dict.fromkeys(("MatMul", "_FusedMatMul"), _matmul),
    "BiasAdd": _bias_add,
    **dict.fromkeys(("FusedBatchNorm", "FusedBatchNormV3"), _batch_norm),
    **{op: partial(_binary, fn=fn) for op, fn in _BINARY.items()},
    **{op: partial(_unary, fn=fn) for op, fn in _UNARY.items()},
    **{op: partial(_act, op=op) for op in ("Relu", "Relu6", "Elu", "Selu", "Sigmoid", "Tanh", "LeakyRelu")},
    "_PReluPattern": _prelu_pattern,
    "Prelu": _prelu,
    **{op: partial(_pad, op=op) for op in ("Pad", "PadV2", "MirrorPad")},
    "Reshape": _reshape,
    "ExpandDims": _expand_dims,
    "Squeeze": _squeeze,
    **{op: partial(_reduce, fn=fn) for op, fn in _REDUCE.items()},
    "Softmax": _softmax,
    "ConcatV2": _concat,
    **{op: partial(_pool, op=op) for op in ("AvgPool", "MaxPool")},
}

# what an imported graph may contain: the table's ops, the input and the constants
# (`fixups.build_program` turns Const nodes into parameters / integer values)
SUPPORTED_OPS = frozenset(OPS) | {"Placeholder", "Const"}
