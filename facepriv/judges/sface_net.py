"""SFace's ONNX graph run by torch: the same weights (dequantised once by
`sface_judge.fold_weights`), the same operators in the same order, ~2x faster than onnxruntime
on one CPU thread (channels-last depthwise convolutions).

`OnnxNet` interprets the operators this graph uses (Sub, Mul, Conv, BatchNormalization, PRelu,
Dropout, Flatten, Gemm, Constant; a BatchNormalization right after the Conv it alone reads is
folded into that Conv) and refuses any other with a ValueError, so a different model file fails
at load rather than computing something else. `tests/test_judges.py` checks the embeddings
against onnxruntime's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

OPS = ("Sub", "Mul", "Conv", "BatchNormalization", "PRelu", "Dropout", "Flatten", "Gemm", "Constant")


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


class OnnxNet(torch.nn.Module):
    """`forward(x)` on the graph's single input -> its single output (float32, no gradients)."""

    def __init__(self, model: Any):
        super().__init__()
        from onnx import numpy_helper

        g = model.graph
        if len(g.input) != 1 or len(g.output) != 1:
            raise ValueError(f"expected one graph input and output, got {len(g.input)} and {len(g.output)}")
        bad = sorted({n.op_type for n in g.node} - set(OPS))
        if bad:
            raise ValueError(f"operators {bad} are not supported by the torch runner (it knows {', '.join(OPS)})")
        w = {t.name: torch.from_numpy(numpy_helper.to_array(t).astype(np.float32)) for t in g.initializer}
        readers: dict[str, int] = {}
        for n in g.node:
            for i in n.input:
                readers[i] = readers.get(i, 0) + 1
        self.input, self.output = g.input[0].name, g.output[0].name
        self.steps: list[tuple[str, list[str], str, dict[str, Any]]] = []
        by_out = {}
        for n in g.node:
            a, ins = _attrs(n), list(n.input)
            if n.op_type == "Constant":
                w[n.output[0]] = torch.from_numpy(numpy_helper.to_array(a["value"]).astype(np.float32))
                continue
            prev = by_out.get(ins[0])
            if (n.op_type == "BatchNormalization" and prev is not None and prev[0] == "Conv"
                    and readers.get(ins[0]) == 1):
                # fold: conv(x) * s + (b - mean * s), s = gamma / sqrt(var + eps)
                gamma, beta, mean, var = (w[i] for i in ins[1:5])
                s = gamma / torch.sqrt(var + float(a.get("epsilon", 1e-5)))
                cw = w[prev[1][1]]
                cb = w[prev[1][2]] if len(prev[1]) > 2 and prev[1][2] else torch.zeros(cw.shape[0])
                name = n.output[0]
                w[name + ":w"], w[name + ":b"] = cw * s[:, None, None, None], (cb - mean) * s + beta
                prev[1][1:] = [name + ":w", name + ":b"]
                prev[2] = name
                by_out[name] = prev
                continue
            step = [n.op_type, ins, n.output[0], a]
            self.steps.append(step)  # type: ignore[arg-type]
            by_out[n.output[0]] = step
        for k, v in w.items():
            if v.ndim == 4:  # convolution weights in the layout the channels-last kernels read
                w[k] = v.contiguous(memory_format=torch.channels_last)
        self.tensors = w  # CPU tensors by ONNX name (folded convolutions as "<bn output>:w" / ":b")
        self.eval()

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.tensors
        env = {self.input: x.float().contiguous(memory_format=torch.channels_last)}

        def get(name: str) -> torch.Tensor:
            return env[name] if name in env else w[name]

        for op, ins, out, a in self.steps:
            v = get(ins[0])
            if op == "Sub":
                r = v - get(ins[1])
            elif op == "Mul":
                r = v * get(ins[1])
            elif op == "Conv":
                pads = a.get("pads", [0, 0, 0, 0])
                if pads[0] != pads[2] or pads[1] != pads[3]:
                    raise ValueError(f"asymmetric Conv padding {pads}")
                r = F.conv2d(v, get(ins[1]), get(ins[2]) if len(ins) > 2 and ins[2] else None,
                             tuple(a.get("strides", [1, 1])), (pads[0], pads[1]), tuple(a.get("dilations", [1, 1])),
                             int(a.get("group", 1)))
            elif op == "BatchNormalization":
                r = F.batch_norm(v, get(ins[3]), get(ins[4]), get(ins[1]), get(ins[2]), False, 0.0,
                                 float(a.get("epsilon", 1e-5)))
            elif op == "PRelu":
                slope = get(ins[1])
                r = F.prelu(v, slope.reshape(-1)) if v.ndim == 4 and slope.numel() == v.shape[1] else \
                    torch.where(v >= 0, v, v * slope)
            elif op == "Dropout":
                r = v
            elif op == "Flatten":
                r = v.contiguous().flatten(int(a.get("axis", 1)))
            else:  # Gemm
                b = get(ins[1])
                b = b.T if a.get("transB", 0) else b
                a_ = v.T if a.get("transA", 0) else v
                r = float(a.get("alpha", 1.0)) * (a_ @ b)
                if len(ins) > 2 and ins[2]:
                    r = r + float(a.get("beta", 1.0)) * get(ins[2])
            env[out] = r
        return env[self.output]
