"""facepriv.models.tfjs checkpoints stay readable: tests/fixtures/tfjs/pre_split.pt was written by
the single-module importer (facepriv/models/tfjs.py, commit 109cb81, before it became the
package facepriv/models/tfjs/) from `fixture_graph` with `write_fixture`; it must load, give the
output recorded then, and a fresh import of the same graph must write the same program and
parameters (the saved graph structure is the checkpoint format)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from test_tfjs import Graph, _conv_attr, _ilist, _s, _slist

from facepriv.models.checkpoint import load_checkpoint
from facepriv.models.tfjs import TfjsGraph, import_tfjs, save_imported

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "tfjs"
CKPT = FIXTURE / "pre_split.pt"
EXPECTED = FIXTURE / "pre_split_output.json"
IMPORT_KW = {"name": "pre_split", "output": "emb", "input_size": 8, "mean": 127.5, "std": 128.0}


def _w(shape, scale=1.0, phase=0.0) -> np.ndarray:
    """Deterministic weights (no RNG: the same on every numpy)."""
    n = int(np.prod(shape))
    return (np.sin(np.arange(n) * 0.37 + phase) * scale).reshape(shape).astype(np.float32)


def fixture_graph(folder: Path) -> str:
    """8x8x3 -> a faulty-converter PReLU after a fused conv, fused depthwise conv, batch norm,
    Pad, MaxPool, AvgPool SAME, ConcatV2, 1x1 conv, Reshape, fused MatMul, Tanh: (N, 5)."""
    g = Graph(8, 8, 3)
    g.op("c1", "_FusedConv2D", ["input", g.const("w1", _w((3, 3, 3, 4), 1.0)), g.const("b1", _w((4,), 0.1, 1.0))],
         **_conv_attr(1, "SAME", ["BiasAdd", "Relu"]))
    g.op("abs", "Abs", ["c1"])
    g.op("sub", "Sub", ["c1", "abs"])
    g.op("mul", "Mul", ["sub", g.const("alpha", -0.5 * np.array([0.25, 0.1, -0.3, 1.5], np.float32))])
    g.op("prelu", "Add", ["c1", "mul"])
    g.op("dw", "FusedDepthwiseConv2dNative", ["prelu", g.const("dww", _w((3, 3, 4, 1), 1.0, 2.0)),
                                               g.const("dwb", _w((4,), 0.1, 3.0))],
         **_conv_attr(2, "SAME", ["BiasAdd"]))
    g.op("bn", "FusedBatchNormV3", ["dw", g.const("sc", 1 + _w((4,), 0.2, 4.0)), g.const("off", _w((4,), 0.1, 5.0)),
                                    g.const("mu", _w((4,), 0.1, 6.0)), g.const("var", 0.5 + _w((4,), 0.3, 7.0) ** 2)],
         epsilon={"f": 0.001})
    g.op("pad", "Pad", ["bn", g.const("pads", np.array([[0, 0], [1, 1], [1, 1], [0, 0]], np.int32))])
    pool = {"ksize": _ilist([1, 2, 2, 1]), "strides": _ilist([1, 2, 2, 1]), "padding": _s("VALID")}
    g.op("mp", "MaxPool", ["pad"], **pool)
    g.op("ap", "AvgPool", ["pad"], **{**pool, "ksize": _ilist([1, 3, 3, 1]), "padding": _s("SAME")})
    g.op("cat", "ConcatV2", ["mp", "ap", g.const("axis", np.array(3, np.int32))])
    g.op("c2", "Conv2D", ["cat", g.const("w2", _w((1, 1, 8, 6), 1.0, 8.0))], **_conv_attr(1, "VALID"))
    g.op("flat", "Reshape", ["c2", g.const("shape", np.array([-1, 3 * 3 * 6], np.int32))])
    g.op("fc", "_FusedMatMul", ["flat", g.const("k", _w((54, 5), 0.2, 9.0)), g.const("kb", _w((5,), 0.1, 10.0))],
         fused_ops=_slist(["BiasAdd"]), num_args={"i": "1"}, transpose_a={"b": False}, transpose_b={"b": False})
    g.op("emb", "Tanh", ["fc"])
    jp, _ = g.write(folder, "pre_split", shards=1)
    return jp


def probe_input() -> torch.Tensor:
    return ((torch.arange(2 * 3 * 8 * 8, dtype=torch.float32) * 0.173).sin() + 1).reshape(2, 3, 8, 8) / 2


def write_fixture(folder: Path = FIXTURE) -> None:
    """(Re)write the fixture; this one was run once with the pre-split code:
    ``cd tests && PYTHONPATH=<checkout of 109cb81> python -c "import test_tfjs_compat as t; t.write_fixture()"``."""
    import tempfile

    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        net = import_tfjs(fixture_graph(Path(tmp)), **IMPORT_KW)
    save_imported(net, str(folder / CKPT.name))
    with torch.no_grad():
        out = net(probe_input())
    (folder / EXPECTED.name).write_text(json.dumps({"output": out.tolist()}) + "\n")


def test_checkpoint_from_before_the_split_loads_and_gives_its_recorded_output():
    m = load_checkpoint(str(CKPT)).model
    assert isinstance(m, TfjsGraph) and m.input_size == 8 and m.mean == 127.5 and m.output_name == "emb"
    expected = torch.tensor(json.loads(EXPECTED.read_text())["output"])
    with torch.no_grad():
        out = m(probe_input())
    assert out.shape == expected.shape == (2, 5)
    assert torch.allclose(out, expected, rtol=0, atol=1e-6), (out - expected).abs().max()


def test_import_today_writes_the_pre_split_program_and_parameters(tmp_path):
    old = load_checkpoint(str(CKPT)).model
    new = import_tfjs(fixture_graph(tmp_path), **IMPORT_KW)
    assert new.build_kwargs() == old.build_kwargs()  # program JSON, input size, normalisation, crop, name
    old_sd, new_sd = old.state_dict(), new.state_dict()
    assert list(new_sd) == list(old_sd)
    assert all(torch.equal(new_sd[k], old_sd[k]) for k in old_sd)
