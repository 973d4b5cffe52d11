"""facepriv.models.tfjs: synthetic TF.js graphs built here (no download), each op checked
against an independent numpy reference; PReLU converter fix-ups; checkpoint round-trip;
gradients; and (with ../shared present) rank-1 of the real mobilefacenet on lfw50."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from facepriv.models.tfjs import PRESETS, TfjsError, TfjsGraph, find_prelu, import_tfjs, save_imported

RNG = np.random.default_rng(0)


# ---------------------------------------------------------------------------------------
# A tiny TF.js graph writer
# ---------------------------------------------------------------------------------------


def _s(v: str) -> dict:
    return {"s": base64.b64encode(v.encode()).decode()}


def _ilist(v) -> dict:
    return {"list": {"i": [str(int(i)) for i in v]}}


def _slist(v) -> dict:
    return {"list": {"s": [base64.b64encode(x.encode()).decode() for x in v]}}


class Graph:
    def __init__(self, h: int = 8, w: int = 8, c: int = 3):
        self.nodes: list[dict] = []
        self.weights: list[tuple[str, np.ndarray, str, str | None]] = []
        self.nodes.append({"name": "input", "op": "Placeholder", "attr": {
            "dtype": {"type": "DT_FLOAT"},
            "shape": {"shape": {"dim": [{"size": "-1"}, {"size": str(h)}, {"size": str(w)}, {"size": str(c)}]}}}})

    def const(self, name: str, arr, quant: str | None = None) -> str:
        arr = np.asarray(arr)
        dtype = "int32" if arr.dtype.kind in "iu" else "float32"
        self.nodes.append({"name": name, "op": "Const", "attr": {"dtype": {"type": "DT_INT32" if dtype == "int32" else "DT_FLOAT"}}})
        self.weights.append((name, arr, dtype, quant))
        return name

    def op(self, name: str, op: str, inputs: list[str], **attr) -> str:
        self.nodes.append({"name": name, "op": op, "input": inputs, "attr": attr})
        return name

    def write(self, folder: Path, name: str = "g", shards: int = 2) -> tuple[str, dict[str, np.ndarray]]:
        """Write NAME.json + weight shards; return (json path, dequantised weights)."""
        specs, blobs, deq = [], [], {}
        for wname, arr, dtype, quant in self.weights:
            spec = {"name": wname, "shape": list(arr.shape), "dtype": dtype}
            if quant == "float16":
                q = arr.astype(np.float16)
                spec["quantization"] = {"dtype": "float16", "original_dtype": "float32"}
                deq[wname] = q.astype(np.float32)
            elif quant == "uint8":
                lo, hi = float(arr.min()), float(arr.max())
                scale = (hi - lo) / 255 or 1.0
                q = np.round((arr - lo) / scale).astype(np.uint8)
                spec["quantization"] = {"dtype": "uint8", "scale": scale, "min": lo, "original_dtype": "float32"}
                deq[wname] = q.astype(np.float32) * np.float32(scale) + np.float32(lo)
            else:
                q = arr.astype(np.int32 if dtype == "int32" else np.float32)
                deq[wname] = q
            specs.append(spec)
            blobs.append(q.astype(q.dtype.newbyteorder("<")).tobytes())
        data = b"".join(blobs)
        cut = len(data) // 2 if shards == 2 else len(data)
        paths = [f"{name}.bin"] if shards == 1 else [f"{name}-shard1of2.bin", f"{name}-shard2of2.bin"]
        parts = [data] if shards == 1 else [data[:cut], data[cut:]]
        for p, part in zip(paths, parts):
            (folder / p).write_bytes(part)
        model = {"format": "graph-model", "generatedBy": "test", "convertedBy": "test",
                 "modelTopology": {"node": self.nodes, "library": {}, "versions": {}},
                 "weightsManifest": [{"paths": paths, "weights": specs}]}
        jp = folder / f"{name}.json"
        jp.write_text(json.dumps(model))
        return str(jp), deq


def _conv_attr(stride=1, padding="SAME", fused=None):
    a = {"strides": _ilist([1, stride, stride, 1]), "padding": _s(padding), "data_format": _s("NHWC"),
         "dilations": _ilist([1, 1, 1, 1]), "explicit_paddings": {"list": {}}}
    if fused is not None:
        a["fused_ops"] = _slist(fused)
        a["num_args"] = {"i": "1"}
    return a


def _run(jp: str, x_nhwc: np.ndarray, output: str, **kw) -> np.ndarray:
    """Run the imported graph on NHWC raw values (normalisation mean 0, std 1 -> x*255)."""
    net = import_tfjs(jp, output=output, mean=0.0, std=1.0, input_size=x_nhwc.shape[1], **kw)
    x = torch.from_numpy(x_nhwc / 255.0).float().permute(0, 3, 1, 2)
    with torch.no_grad():
        return net(x).numpy()


# ---------------------------------------------------------------------------------------
# numpy references (written from TF's definitions, independent of the interpreter)
# ---------------------------------------------------------------------------------------


def np_same_pad(n: int, k: int, s: int) -> tuple[int, int]:
    out = (n + s - 1) // s
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2  # TF puts the extra pixel at the bottom/right


def np_conv(x, w, stride, padding, depthwise=False):
    """x NHWC, w HWIO (or H W C M for depthwise)."""
    kh, kw = w.shape[:2]
    if padding == "SAME":
        pt, pb = np_same_pad(x.shape[1], kh, stride)
        pl, pr = np_same_pad(x.shape[2], kw, stride)
        x = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    oh = (x.shape[1] - kh) // stride + 1
    ow = (x.shape[2] - kw) // stride + 1
    cout = w.shape[2] * w.shape[3] if depthwise else w.shape[3]
    out = np.zeros((x.shape[0], oh, ow, cout), np.float64)
    for i in range(oh):
        for j in range(ow):
            patch = x[:, i * stride : i * stride + kh, j * stride : j * stride + kw, :]
            if depthwise:
                out[:, i, j] = np.einsum("nhwc,hwcm->ncm", patch, w).reshape(x.shape[0], -1)
            else:
                out[:, i, j] = np.einsum("nhwc,hwco->no", patch, w)
    return out


def close(a, b, tol=1e-4):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    err = np.abs(a - b).max() / max(1.0, np.abs(b).max())
    assert err < tol, err


# ---------------------------------------------------------------------------------------
# op tests
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("size,stride,padding", [(8, 2, "SAME"), (7, 2, "SAME"), (8, 1, "SAME"), (9, 2, "VALID"), (6, 1, "VALID")])
def test_conv2d_padding(tmp_path, size, stride, padding):
    g = Graph(size, size, 3)
    w = g.const("w", RNG.normal(size=(3, 3, 3, 4)).astype(np.float32))
    g.op("conv", "Conv2D", ["input", w], **_conv_attr(stride, padding))
    jp, W = g.write(tmp_path)
    x = RNG.uniform(0, 255, (2, size, size, 3))
    ref = np_conv(x, W["w"], stride, padding)
    close(_run(jp, x, "conv"), ref.reshape(2, -1))


def test_same_stride2_is_asymmetric(tmp_path):
    # 8 px, k3, s2: TF pads 0 on top and 1 at the bottom; symmetric padding would differ
    assert np_same_pad(8, 3, 2) == (0, 1)
    g = Graph(8, 8, 1)
    w = g.const("w", np.ones((3, 3, 1, 1), np.float32))
    g.op("conv", "Conv2D", ["input", w], **_conv_attr(2, "SAME"))
    jp, _ = g.write(tmp_path)
    x = np.zeros((1, 8, 8, 1))
    x[0, 0, 0, 0] = 255.0  # the top-left pixel only counts when nothing is padded above / left
    out = _run(jp, x, "conv").reshape(4, 4)
    assert out[0, 0] == pytest.approx(255.0)


@pytest.mark.parametrize("stride,mult", [(1, 1), (2, 2)])
def test_fused_depthwise_and_conv(tmp_path, stride, mult):
    g = Graph(8, 8, 3)
    dw = g.const("dw", RNG.normal(size=(3, 3, 3, mult)).astype(np.float32))
    db = g.const("db", RNG.normal(size=(3 * mult,)).astype(np.float32))
    g.op("dwc", "FusedDepthwiseConv2dNative", ["input", dw, db], **_conv_attr(stride, "SAME", ["BiasAdd", "Relu"]))
    pw = g.const("pw", RNG.normal(size=(1, 1, 3 * mult, 5)).astype(np.float32))
    pb = g.const("pb", RNG.normal(size=(5,)).astype(np.float32))
    g.op("pwc", "_FusedConv2D", ["dwc", pw, pb], **_conv_attr(1, "SAME", ["BiasAdd"]))
    g.op("plain_dw", "DepthwiseConv2dNative", ["pwc", g.const("dw2", RNG.normal(size=(3, 3, 5, 1)).astype(np.float32))],
         **_conv_attr(1, "VALID"))
    jp, W = g.write(tmp_path)
    x = RNG.uniform(0, 1, (2, 8, 8, 3))
    a = np.maximum(np_conv(x * 255, W["dw"], stride, "SAME", depthwise=True) + W["db"], 0)
    b = np_conv(a, W["pw"], 1, "SAME") + W["pb"]
    c = np_conv(b, W["dw2"], 1, "VALID", depthwise=True)
    close(_run(jp, x * 255, "dwc"), a.reshape(2, -1))
    close(_run(jp, x * 255, "pwc"), b.reshape(2, -1))
    close(_run(jp, x * 255, "plain_dw"), c.reshape(2, -1))


def test_elementwise_ops_broadcast_channels(tmp_path):
    g = Graph(4, 5, 3)
    c = g.const("c", RNG.normal(size=(3,)).astype(np.float32))
    s = g.const("s", np.array(0.5, np.float32))
    g.op("add", "Add", ["input", c])
    g.op("addv2", "AddV2", ["add", s])
    g.op("sub", "Sub", [c, "addv2"])  # const on the left
    g.op("mul", "Mul", ["sub", c])
    g.op("abs", "Abs", ["mul"])
    g.op("relu", "Relu", ["mul"])
    g.op("max", "Maximum", ["relu", "abs"])
    g.op("min", "Minimum", [s, "max"])
    g.op("ident", "Identity", ["min"])
    g.op("sq", "Square", ["mul"])
    g.op("rs", "Rsqrt", ["abs"])
    g.op("sig", "Sigmoid", ["mul"])
    jp, W = g.write(tmp_path)
    x = RNG.normal(size=(2, 4, 5, 3))
    cc, ss = W["c"], W["s"]
    add = x + cc
    sub = cc - (add + ss)
    mul = sub * cc
    ref = {"mul": mul, "abs": np.abs(mul), "max": np.maximum(np.maximum(mul, 0), np.abs(mul)),
           "ident": np.minimum(ss, np.maximum(np.maximum(mul, 0), np.abs(mul))), "sq": mul**2,
           "rs": 1 / np.sqrt(np.abs(mul)), "sig": 1 / (1 + np.exp(-mul))}
    for k, v in ref.items():
        close(_run(jp, x, k), v.reshape(2, -1), tol=1e-3 if k == "rs" else 1e-4)


def test_pad_reshape_matmul_mean_squeeze_sum_softmax(tmp_path):
    g = Graph(4, 4, 2)
    pads = g.const("pads", np.array([[0, 0], [1, 2], [0, 1], [0, 0]], np.int32))
    g.op("pad", "Pad", ["input", pads])  # NHWC paddings: H (1,2), W (0,1)
    g.op("flat", "Reshape", ["pad", g.const("shape", np.array([-1, 7 * 5 * 2], np.int32))])
    k = g.const("k", RNG.normal(size=(70, 6)).astype(np.float32), quant="float16")
    g.op("mm", "MatMul", ["flat", k], transpose_a={"b": False}, transpose_b={"b": False})
    b = g.const("b", RNG.normal(size=(6,)).astype(np.float32), quant="uint8")
    g.op("fmm", "_FusedMatMul", ["flat", k, b], fused_ops=_slist(["BiasAdd", "Relu"]), num_args={"i": "1"},
         transpose_a={"b": False}, transpose_b={"b": False})
    g.op("mean", "Mean", ["input", g.const("ax12", np.array([1, 2], np.int32))], keep_dims={"b": False})
    g.op("meank", "Mean", ["input", g.const("ax2", np.array([2], np.int32))], keep_dims={"b": True})
    g.op("sum", "Sum", ["input", g.const("ax3", np.array([-1], np.int32))], keep_dims={"b": True})
    g.op("sumh", "Sum", ["input", g.const("ax1", np.array([1], np.int32))], keep_dims={"b": False})
    g.op("pool", "Mean", ["input", "ax12"], keep_dims={"b": True})
    g.op("sqz", "Squeeze", ["pool"], squeeze_dims=_ilist([1, 2]))
    g.op("sm", "Softmax", ["mm"])
    g.op("sm4", "Softmax", ["input"])
    jp, W = g.write(tmp_path)
    x = RNG.normal(size=(3, 4, 4, 2))
    pad = np.pad(x, ((0, 0), (1, 2), (0, 1), (0, 0)))
    flat = pad.reshape(3, -1)
    mm = flat @ W["k"]
    e = np.exp(mm - mm.max(1, keepdims=True))
    e4 = np.exp(x - x.max(-1, keepdims=True))
    ref = {"pad": pad, "flat": flat, "mm": mm, "fmm": np.maximum(mm + W["b"], 0), "mean": x.mean((1, 2)),
           "meank": x.mean(2, keepdims=True), "sum": x.sum(-1, keepdims=True), "sumh": x.sum(1),
           "sqz": x.mean((1, 2)), "sm": e / e.sum(1, keepdims=True), "sm4": e4 / e4.sum(-1, keepdims=True)}
    for name, v in ref.items():
        close(_run(jp, x, name), v.reshape(3, -1))


def test_quantised_weights_are_dequantised(tmp_path):
    g = Graph(4, 4, 1)
    w = RNG.normal(size=(1, 1, 1, 3)).astype(np.float32)
    g.op("conv", "Conv2D", ["input", g.const("w", w, quant="uint8")], **_conv_attr(1, "SAME"))
    g.op("conv16", "Conv2D", ["input", g.const("w16", w, quant="float16")], **_conv_attr(1, "SAME"))
    jp, W = g.write(tmp_path, shards=1)
    x = RNG.normal(size=(1, 4, 4, 1))
    close(_run(jp, x, "conv"), np_conv(x, W["w"], 1, "SAME").reshape(1, -1))
    close(_run(jp, x, "conv"), np_conv(x, w, 1, "SAME").reshape(1, -1), tol=2e-2)  # close to the original
    close(_run(jp, x, "conv16"), np_conv(x, W["w16"], 1, "SAME").reshape(1, -1))


def test_manifest_mismatch_and_unsupported_op_are_clear(tmp_path):
    g = Graph(4, 4, 1)
    g.op("conv", "Conv2D", ["input", g.const("w", np.ones((1, 1, 1, 1), np.float32))], **_conv_attr())
    g.op("weird", "FancyOp", ["conv"])
    jp, _ = g.write(tmp_path, shards=1)
    with pytest.raises(TfjsError, match="FancyOp"):
        import_tfjs(jp, output="weird", input_size=4)
    (tmp_path / "g.bin").write_bytes(b"\0\0")
    with pytest.raises(TfjsError, match="too short"):
        import_tfjs(jp, output="conv", input_size=4)


# ---------------------------------------------------------------------------------------
# PReLU converter faults
# ---------------------------------------------------------------------------------------


def _prelu_graph(faulty: bool, alpha: np.ndarray, c: int = 2) -> Graph:
    """conv -> PReLU(alpha) -> conv, as the converter wrote it (faulty) or as TF means it."""
    g = Graph(6, 6, c)
    w = g.const("w", RNG.normal(size=(3, 3, c, 4)).astype(np.float32))
    b = g.const("b", RNG.normal(size=(4,)).astype(np.float32))
    fused = ["BiasAdd", "Relu"] if faulty else ["BiasAdd"]
    g.op("conv", "_FusedConv2D", ["input", w, b], **_conv_attr(2, "SAME", fused))
    if not faulty:
        g.op("relu", "Relu", ["conv"])
    g.op("abs", "Abs", ["conv"])
    g.op("sub", "Sub", ["conv", "abs"])
    # the Mul constant is alpha * 0.5; the faulty converter stored it negated
    g.op("mul", "Mul", ["sub", g.const("alpha", (-1 if faulty else 1) * 0.5 * alpha)])
    g.op("add", "Add", ["conv" if faulty else "relu", "mul"])
    w2 = g.const("w2", RNG.normal(size=(1, 1, 4, 3)).astype(np.float32))
    g.op("out", "Conv2D", ["add", w2], **_conv_attr(1, "SAME"))
    return g


def _prelu_ref(x, W, alpha):
    y = np_conv(x, W["w"], 2, "SAME") + W["b"]
    p = np.where(y > 0, y, alpha * y)
    return np_conv(p, W["w2"], 1, "SAME")


@pytest.mark.parametrize("faulty", [True, False])
def test_prelu_fixups(tmp_path, faulty):
    alpha = np.array([0.25, 0.1, -0.3, 1.5], np.float32)
    g = _prelu_graph(faulty, alpha)
    jp, W = g.write(tmp_path)
    x = RNG.normal(size=(2, 6, 6, 2))
    ref = _prelu_ref(x, W, alpha)
    close(_run(jp, x, "out"), ref.reshape(2, -1))
    if faulty:  # without the fix-ups the result is wrong
        with pytest.raises(AssertionError):
            close(_run(jp, x, "out", fix=False), ref.reshape(2, -1))


def test_find_prelu_is_structural():
    g = _prelu_graph(True, np.ones(4, np.float32))
    # rename every node: detection must not depend on names
    ren = {n["name"]: f"n{i}" for i, n in enumerate(g.nodes) if n["op"] != "Placeholder"}
    nodes = [{"name": ren.get(n["name"], n["name"]), "op": n["op"], "inputs": [ren.get(i, i) for i in n.get("input", [])],
              "attr": {"fused_ops": ["BiasAdd", "Relu"]} if n["op"] == "_FusedConv2D" else {}} for n in g.nodes]
    hits = find_prelu(nodes)
    assert len(hits) == 1 and hits[0]["relu"] is None and hits[0]["x"] == ren["conv"]


# ---------------------------------------------------------------------------------------
# module contract, checkpoint, gradients
# ---------------------------------------------------------------------------------------


def _small_model(tmp_path) -> tuple[TfjsGraph, str]:
    g = _prelu_graph(True, np.array([0.25, 0.1, 0.2, 0.3], np.float32), c=3)
    g.op("gap", "Mean", ["out", g.const("axes", np.array([1, 2], np.int32))], keep_dims={"b": False})
    jp, _ = g.write(tmp_path, "tiny")
    return import_tfjs(jp, output="gap", input_size=6, mean=127.5, std=128.0), jp


def test_contract_normalisation_and_flatten_order(tmp_path):
    g = Graph(3, 3, 3)
    g.op("ident", "Identity", ["input"])
    jp, _ = g.write(tmp_path)
    net = import_tfjs(jp, output="ident", input_size=3, mean=127.5, std=128.0)
    assert net.kind == "embedder" and net.input_size == 3
    x = torch.rand(2, 3, 3, 3)
    out = net(x)
    ref = ((x * 255 - 127.5) / 128).permute(0, 2, 3, 1).reshape(2, -1)  # TF (NHWC) flatten order
    assert torch.allclose(out, ref, atol=1e-5)


def test_presets_cover_the_three_models():
    assert PRESETS["mobilefacenet"]["mean"] == 127.5 and PRESETS["mobilefacenet"]["std"] == 128.0
    assert PRESETS["mobileface"]["output"] == "batchnorm0/add_1" and PRESETS["faceres"]["output"] == "global_pooling/Mean"
    assert PRESETS["faceres"]["input_size"] == 224 and PRESETS["faceres"]["crop"] == "loose224"


def test_checkpoint_round_trip(tmp_path):
    from facepriv.models.checkpoint import load_checkpoint

    net, _ = _small_model(tmp_path)
    path = str(tmp_path / "tiny.pt")
    sha = save_imported(net, path)
    loaded = load_checkpoint(path)  # torch.load(weights_only=True)
    assert loaded.sha256 == sha and loaded.meta["arch"] == "tfjs" and loaded.meta["kind"] == "embedder"
    m = loaded.model
    assert isinstance(m, TfjsGraph) and m.input_size == 6 and m.mean == 127.5 and m.crop == net.crop
    x = torch.rand(3, 3, 6, 6)
    with torch.no_grad():
        assert torch.allclose(m(x), net(x), atol=1e-6)
    json.loads(net.build_kwargs()["program"])  # plain JSON


def test_gradients_reach_the_input(tmp_path):
    net, _ = _small_model(tmp_path)
    x = torch.rand(2, 3, 6, 6, requires_grad=True)
    net(x).pow(2).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in net.parameters())


def test_a_value_is_freed_after_its_last_reader(tmp_path):
    """An inference pass holds a few activations at a time: each node's value leaves the
    environment once no later node reads it (with fan-out: `mul` is read four times), and the
    outputs are the same as when every value is kept."""
    g = Graph(4, 5, 3)
    c = g.const("c", RNG.normal(size=(3,)).astype(np.float32))
    g.op("add", "Add", ["input", c])
    g.op("mul", "Mul", ["add", c])
    g.op("abs", "Abs", ["mul"])
    g.op("relu", "Relu", ["mul"])
    g.op("sq", "Square", ["mul"])
    g.op("m1", "Maximum", ["relu", "abs"])
    g.op("out", "Add", ["m1", "sq"])
    g.op("late", "Sub", ["out", "mul"])  # mul's last reader
    jp, _ = g.write(tmp_path)
    net = import_tfjs(jp, output="late", mean=0.0, std=1.0, input_size=4)
    x = torch.rand(2, 3, 4, 5)
    sizes: list[int] = []
    real = net._run

    def spy(op, inputs, attr, env, nchw, ref):
        sizes.append(len(env))
        return real(op, inputs, attr, env, nchw, ref)

    net._run = spy
    with torch.no_grad():
        freed = net(x)
    net._dead = [[] for _ in net._nodes]  # keep everything, as before
    with torch.no_grad():
        kept = net(x)
    assert torch.equal(freed, kept)
    n = len(sizes) // 2
    assert max(sizes[:n]) < max(sizes[n:]) and max(sizes[n:]) >= 7
    net._dead = None
    names = [n for n, _, _, _ in net._nodes]
    after = {d: names[k] for k, ds in enumerate(net._dead_after()) for d in ds}
    assert after["mul"] == "late" and after["add"] == "mul" and "late" not in after


# ---------------------------------------------------------------------------------------
# the real models (needs ../shared)
# ---------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FACEPRIV_SHARED", REPO.parent / "shared"))
MODELS = SHARED / "models" / "human-models-3.0.4"
LFW = SHARED / "data" / "lfw50"


@pytest.mark.realdata
@pytest.mark.skipif(not (MODELS / "mobilefacenet.json").exists() or not LFW.is_dir(),
                    reason="needs ../shared/models/human-models-3.0.4 and ../shared/data/lfw50 (set FACEPRIV_SHARED)")
def test_mobilefacenet_rank1_on_lfw50(tmp_path):
    from facenet_pytorch import MTCNN
    from PIL import Image

    from facepriv.core.align import align_faces
    from facepriv.models.checkpoint import load_checkpoint

    torch.manual_seed(0)
    net = import_tfjs(str(MODELS / "mobilefacenet.json"))
    save_imported(net, str(tmp_path / "mfn.pt"))
    net = load_checkpoint(str(tmp_path / "mfn.pt")).model  # through the checkpoint, as users get it
    mtcnn = MTCNN(keep_all=True, device="cpu")
    ids = sorted(p.name for p in LFW.iterdir() if p.is_dir())[:8]
    embs, labels, probe = [], [], []
    for k, name in enumerate(ids):
        for j, f in enumerate(sorted((LFW / name).iterdir())[:15]):
            img = Image.open(f).convert("RGB")
            boxes, _, lms = mtcnn.detect(img, landmarks=True)
            assert boxes is not None, f
            c = (boxes[:, :2] + boxes[:, 2:]) / 2
            i = int(np.argmin(((c - [img.width / 2, img.height / 2]) ** 2).sum(1)))
            t = torch.from_numpy(np.asarray(img, np.float32) / 255).permute(2, 0, 1)
            with torch.no_grad():
                embs.append(net(align_faces(t, lms[i : i + 1], 112, net.crop))[0])
            labels.append(k)
            probe.append(j >= 10)
    e = torch.nn.functional.normalize(torch.stack(embs), dim=1).numpy()
    labels_a, probe_a = np.array(labels), np.array(probe)
    sim = e[probe_a] @ e[~probe_a].T
    rank1 = (labels_a[~probe_a][sim.argmax(1)] == labels_a[probe_a]).mean()
    assert rank1 >= 0.95, rank1
