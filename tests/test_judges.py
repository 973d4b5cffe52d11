import importlib.util
import os

import numpy as np
import pytest

from facepriv.errors import UsageError
from facepriv.judges import (
    JUDGES,
    Gallery,
    Judge,
    central_face,
    evasion,
    faces_from_detection,
    get_judge,
    identify,
    identify_many,
    pairwise_distances,
    poisoning,
    recognised,
    register_judge,
)

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "lfw")


def unit(*v):
    a = np.asarray(v, np.float32)
    return a


def toy_gallery(metric="euclidean", threshold=0.6):
    # two identities on the x and y axes
    return Gallery(metric=metric, threshold=threshold, embeddings={
        "alice": np.array([[1.0, 0.0], [0.9, 0.1]], np.float32),
        "bob": np.array([[0.0, 1.0]], np.float32),
    }, judge="toy")


# --------------------------------------------------------------------------- arithmetic


def test_pairwise_distances_euclidean_and_cosine():
    a = np.array([[0.0, 0.0], [3.0, 4.0]])
    b = np.array([[0.0, 0.0], [6.0, 8.0], [0.0, 1.0]])
    np.testing.assert_allclose(pairwise_distances(a, b, "euclidean"),
                               [[0, 10, 1], [5, 5, np.sqrt(9 + 9)]], atol=1e-6)
    np.testing.assert_allclose(pairwise_distances(a[1:], b[1:], "cosine"), [[0.0, 1 - 0.8]], atol=1e-6)
    with pytest.raises(ValueError):
        pairwise_distances(a, b, "manhattan")


def test_identify_rank1_and_distance():
    g = toy_gallery()
    assert identify(g, unit(0.95, 0.0)) == ("alice", pytest.approx(0.05, abs=1e-6))
    ident, d = identify(g, unit(0.1, 0.9))
    assert ident == "bob" and d == pytest.approx(np.sqrt(0.02), abs=1e-6)
    ids, ds = identify_many(g, np.array([[1, 0], [0, 2]], np.float32))
    assert ids == ["alice", "bob"] and np.allclose(ds, [0, 1])
    assert identify(Gallery(), unit(1, 0)) == (None, float("inf"))
    assert recognised(g, "alice", unit(1, 0))
    assert not recognised(g, "alice", unit(5, 0))  # rank-1 right but beyond the threshold
    assert not recognised(g, "alice", None)


def test_gallery_add_replace_and_matrix():
    g = toy_gallery()
    assert g.identities == ["alice", "bob"] and len(g) == 3 and "bob" in g
    g.add("carol", unit(-1, 0), "carol/1.jpg")
    mat, lab = g.matrix()
    assert mat.shape == (4, 2) and list(lab) == ["alice", "alice", "bob", "carol"]
    assert g.sources["carol"] == ["carol/1.jpg"]
    g2 = g.with_identity("alice", np.array([[0.0, -5.0]]))
    assert len(g2.embeddings["alice"]) == 1 and len(g.embeddings["alice"]) == 2  # original untouched
    assert identify(g2, unit(1, 0))[0] != "alice"
    with pytest.raises(ValueError):
        Gallery(metric="l1")


def test_evasion_arithmetic():
    g = toy_gallery()
    probes = [
        ("alice", unit(1, 0), unit(0, 1)),        # clean ok, cloaked -> bob: protected
        ("alice", unit(1, 0), unit(1, 0.05)),     # clean ok, cloaked still alice: not protected
        ("alice", unit(1, 0), unit(3, 0)),        # clean ok, cloaked alice but distance 2 > 0.6: protected
        ("bob", unit(0, 1), None),                # clean ok, face lost after cloaking: protected
        ("bob", unit(1, 0), unit(0, 1)),          # clean wrong (cloaked right): excluded from protection rate
        ("dave", unit(0, 1), unit(0, 1)),         # identity not enrolled
    ]
    r = evasion(g, probes, details=True)
    assert r["faces"] == 6
    assert r["clean_correct"] == 4 and r["clean_accuracy"] == pytest.approx(4 / 6)
    assert r["protected"] == 3 and r["protection_rate"] == pytest.approx(3 / 4)
    assert r["cloaked_accuracy"] == pytest.approx(2 / 6)
    assert r["cloaked_missing"] == 1 and r["not_in_gallery"] == 1
    assert [row["cloaked_ok"] for row in r["per_face"]] == [False, True, False, False, True, False]
    empty = evasion(g, [])
    assert empty["faces"] == 0 and empty["clean_accuracy"] is None and empty["protection_rate"] is None


def test_poisoning_arithmetic():
    clean = toy_gallery()
    cloaked = clean.with_identity("alice", np.array([[-1.0, 0.0]]))  # alice enrolled with cloaked photos
    probes = [("alice", unit(1, 0)), ("alice", unit(0.95, 0)), ("bob", unit(0, 1)), ("bob", unit(1, 0))]
    r = poisoning(cloaked, probes, clean_gallery=clean)
    assert r["faces"] == 4
    assert r["clean_correct"] == 3 and r["clean_accuracy"] == pytest.approx(0.75)
    # both alice probes now miss; bob's good probe is still recognised
    assert r["protected"] == 2 and r["protection_rate"] == pytest.approx(2 / 3)
    assert r["protection_rate_all"] == pytest.approx(3 / 4)
    r2 = poisoning(cloaked, probes)
    assert r2["clean_accuracy"] is None and r2["protection_rate"] == pytest.approx(3 / 4)


def test_cosine_gallery_threshold():
    g = toy_gallery(metric="cosine", threshold=0.2)
    assert recognised(g, "alice", unit(10, 0.5))  # scale does not matter under cosine
    assert identify(g, unit(1, 1))[0] == "alice"
    assert not recognised(g, "alice", unit(1, 1))  # nearest alice but cos distance 0.22 > 0.2


def test_central_face_and_detection_conversion():
    class Det:
        boxes = np.array([[0, 0, 10, 10], [40, 40, 60, 60], [80, 0, 100, 20]], np.float32)
        probs = np.array([0.99, 0.98, 0.97], np.float32)
        landmarks = np.zeros((3, 5, 2), np.float32)

    faces = faces_from_detection(Det())
    assert len(faces) == 3 and faces[1]["prob"] == pytest.approx(0.98) and faces[0]["landmarks"].shape == (5, 2)
    assert central_face(faces, (100, 100, 3)) == 1
    assert central_face([], (100, 100, 3)) is None


# --------------------------------------------------------------------------- interface and registry


class FakeJudge:
    """Embeds a face as the mean colour of its box: enough to test plumbing."""

    name = "fake"
    metric = "euclidean"
    threshold = 30.0

    def embed(self, image, faces):
        out = []
        for f in faces:
            x0, y0, x1, y1 = (int(v) for v in f["box"])
            out.append(image[y0:y1, x0:x1].reshape(-1, 3).mean(0))
        return np.array(out, np.float32).reshape(len(faces), 3)


class CentreDetector:
    """One face: the middle half of the image."""

    def detect(self, images):
        class D:
            pass

        out = []
        for im in images:
            h, w = im.shape[:2]
            d = D()
            d.boxes = np.array([[w / 4, h / 4, 3 * w / 4, 3 * h / 4]], np.float32)
            d.probs = np.array([1.0], np.float32)
            d.landmarks = np.zeros((1, 5, 2), np.float32)
            out.append(d)
        return out


def test_fake_judge_satisfies_protocol_and_registry_is_pluggable():
    assert isinstance(FakeJudge(), Judge)
    register_judge("fake-test", lambda arg, **kw: FakeJudge())
    try:
        j = get_judge("fake-test")
        assert j.name == "fake" and isinstance(j, Judge)
    finally:
        JUDGES.pop("fake-test")
    with pytest.raises(UsageError, match="unknown judge"):
        get_judge("nope")
    with pytest.raises(UsageError, match="checkpoint"):
        get_judge("tfjs")  # no path


def test_gallery_from_folder_with_fake_judge(tmp_path):
    from PIL import Image

    for ident, colour in (("red", (200, 10, 10)), ("blue", (10, 10, 200))):
        (tmp_path / ident).mkdir()
        for k in range(3):
            Image.new("RGB", (40, 40), tuple(c + 5 * k for c in colour)).save(tmp_path / ident / f"{k}.png")
    (tmp_path / "red" / "notes.txt").write_text("not a photo")
    (tmp_path / "blue" / "1.jpg").write_bytes(b"garbage")  # sorts between 0.png and 1.png
    g = Gallery.from_folder(str(tmp_path), FakeJudge(), detector=CentreDetector(), select=lambda fs: fs[:2])
    assert g.identities == ["blue", "red"] and g.judge == "fake" and g.threshold == 30.0
    assert len(g.embeddings["red"]) == 2 and len(g.embeddings["blue"]) == 1  # select took 0.png, 1.jpg
    assert g.skipped == [("blue/1.jpg", g.skipped[0][1])] and "decode" in g.skipped[0][1]
    assert g.sources["red"] == ["red/0.png", "red/1.png"]
    assert identify(g, unit(205, 15, 15))[0] == "red"
    with pytest.raises(FileNotFoundError):
        Gallery.from_folder(str(tmp_path / "missing"), FakeJudge(), detector=CentreDetector())


# --------------------------------------------------------------------------- dlib on real faces


def _have_dlib():
    return importlib.util.find_spec("dlib") is not None and importlib.util.find_spec("face_recognition_models") is not None


class MtcnnDetector:
    """facenet-pytorch's MTCNN with the `detect(list of RGB) -> [Detection-like]` shape."""

    def __init__(self):
        from facenet_pytorch import MTCNN

        self.mtcnn = MTCNN(keep_all=True, device="cpu")

    def detect(self, images):
        from types import SimpleNamespace

        from PIL import Image

        out = []
        for im in images:
            boxes, probs, lms = self.mtcnn.detect(Image.fromarray(im), landmarks=True)
            if boxes is None:
                boxes, probs, lms = np.zeros((0, 4)), np.zeros((0,)), np.zeros((0, 5, 2))
            out.append(SimpleNamespace(boxes=boxes, probs=probs, landmarks=lms))
        return out


@pytest.fixture(scope="module")
def lfw_faces():
    """{identity: [(rgb, central face dict), ...]} for the fixture photos, MTCNN-detected."""
    from PIL import Image

    mtcnn = MtcnnDetector()
    out = {}
    for ident in sorted(os.listdir(FIXTURES)):
        for name in sorted(os.listdir(os.path.join(FIXTURES, ident))):
            rgb = np.asarray(Image.open(os.path.join(FIXTURES, ident, name)).convert("RGB"))
            faces = faces_from_detection(mtcnn.detect([rgb])[0])
            out.setdefault(ident, []).append((rgb, faces[central_face(faces, rgb.shape)]))
    return out


@pytest.mark.skipif(not _have_dlib(), reason="dlib / face-recognition-models not installed")
def test_dlib_judge_matches_same_person_only(lfw_faces):
    judge = get_judge("dlib")
    assert isinstance(judge, Judge) and judge.metric == "euclidean" and judge.threshold == 0.6
    embs = {}
    for ident, items in lfw_faces.items():
        embs[ident] = np.concatenate([judge.embed(rgb, [face]) for rgb, face in items])
        assert embs[ident].shape == (2, 128) and embs[ident].dtype == np.float32
    (a, b) = sorted(embs)
    same = [np.linalg.norm(embs[i][0] - embs[i][1]) for i in (a, b)]
    diff = [np.linalg.norm(x - y) for x in embs[a] for y in embs[b]]
    assert max(same) < 0.6 < min(diff), (same, diff)
    # deterministic, several faces at once, no faces
    rgb, face = lfw_faces[a][0]
    two = judge.embed(rgb, [face, face])
    np.testing.assert_allclose(two[0], embs[a][0], atol=1e-5)
    np.testing.assert_allclose(two[1], embs[a][0], atol=1e-5)
    assert judge.embed(rgb, []).shape == (0, 128)
    chip = judge.chips(rgb, [face])[0]
    assert chip.shape == (150, 150, 3) and chip.dtype == np.uint8
    # evasion with itself as the "cloak" (nothing changes): all recognised, none protected
    g = Gallery.for_judge(judge, {i: embs[i][:1] for i in embs})
    r = evasion(g, [(i, embs[i][1], embs[i][1]) for i in embs])
    assert r["clean_accuracy"] == 1.0 and r["protection_rate"] == 0.0
    with pytest.raises(ValueError, match="uint8"):
        judge.embed(rgb.astype(np.float32), [face])


@pytest.mark.skipif(not _have_dlib(), reason="dlib / face-recognition-models not installed")
def test_torch_dlib_network_gives_dlibs_own_descriptors(lfw_faces):
    """The judge's descriptors (dlib's ResNet read from its .dat and run by torch) are dlib's:
    the same chips through `dlib.face_recognition_model_v1` agree to 1e-4."""
    import dlib

    from facepriv.judges.dlib_judge import RECOGNITION_MODEL, models_dir
    from facepriv.judges.dlib_net import DlibResNet, read_weights

    judge = get_judge("dlib")
    chips = [judge.chips(rgb, [face])[0] for items in lfw_faces.values() for rgb, face in items]
    chips.append(np.zeros_like(chips[0]))  # a black chip too
    ref = dlib.face_recognition_model_v1(os.path.join(models_dir(), RECOGNITION_MODEL))
    want = np.array([np.asarray(v) for v in ref.compute_face_descriptor(chips, 0)], np.float32)
    got = DlibResNet(os.path.join(models_dir(), RECOGNITION_MODEL))(np.stack(chips)).numpy()
    assert got.shape == (len(chips), 128) and np.abs(want).max() > 0.05
    np.testing.assert_allclose(got, want, atol=1e-4)
    rgb, face = next(iter(lfw_faces.values()))[0]
    np.testing.assert_allclose(judge.embed(rgb, [face])[0], want[0], atol=1e-4)
    with pytest.raises(ValueError, match="not dlib's face recognition ResNet"):
        read_weights(os.path.join(models_dir(), "shape_predictor_5_face_landmarks.dat"))


@pytest.mark.skipif(not _have_dlib(), reason="dlib / face-recognition-models not installed")
def test_gallery_from_folder_with_dlib():
    judge = get_judge("dlib")
    g = Gallery.from_folder(FIXTURES, judge, detector=MtcnnDetector(), select=lambda fs: fs[:1])
    assert g.identities == sorted(os.listdir(FIXTURES)) and len(g) == 2 and not g.skipped


# --------------------------------------------------------------------------- embedder checkpoints as judges


def _mean_colour_module(**build):
    """Stand-in for an imported embedding network: (N,3,S,S) -> per-channel mean and std."""
    import torch
    from torch import nn

    class M(nn.Module):
        kind = "embedder"
        input_size = 112
        crop = "arcface112"

        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(1), requires_grad=False)

        def forward(self, x):
            return torch.cat([x.mean((2, 3)), x.std((2, 3))], 1) * self.scale

    return M()


def test_embedder_checkpoint_judge(tmp_path, monkeypatch):
    import torch

    from facepriv.core import align  # noqa: F401 - facepriv's own module: an import error must fail, not skip

    from facepriv.errors import CheckpointError
    from facepriv.models import registry
    from facepriv.models.checkpoint import save_checkpoint

    monkeypatch.setitem(registry.ARCHES, "test-mean-colour", lambda num_classes, **b: _mean_colour_module(**b))
    path = str(tmp_path / "mean.pt")
    save_checkpoint(path, _mean_colour_module(), arch="test-mean-colour", classes=[], kind="embedder", name="meancol")
    judge = get_judge(f"tfjs:{path}", threshold=0.01)
    assert isinstance(judge, Judge) and judge.name == "tfjs:meancol" and judge.metric == "cosine"
    assert judge.threshold == 0.01 and judge.input_size == 112
    rgb = np.zeros((120, 100, 3), np.uint8)
    rgb[:, :50] = (200, 30, 30)  # left half red, right half blue
    rgb[:, 50:] = (30, 30, 200)
    lm = np.array([[38.3, 51.7], [73.5, 51.5], [56.0, 71.7], [41.5, 92.4], [70.7, 92.2]], np.float32)
    left = {"box": np.array([0, 0, 45, 120]), "landmarks": lm * 0.3 + [5, 40]}
    right = {"box": np.array([55, 0, 100, 120]), "landmarks": lm * 0.3 + [60, 40]}
    e = judge.embed(rgb, [left, right])
    assert e.shape == (2, 6) and e.dtype == np.float32
    assert e[0, 0] > e[0, 2] and e[1, 2] > e[1, 0]  # each face sees its own colour
    chips = judge.chips(rgb, [left])
    assert chips.shape == (1, 112, 112, 3) and chips[0, 56, 56, 0] == 200
    assert judge.embed(rgb, []).shape[0] == 0
    # classifiers cannot judge through this door
    monkeypatch.setitem(registry.ARCHES, "test-classifier", lambda num_classes, **b: torch.nn.Linear(2, num_classes))
    cpath = str(tmp_path / "cls.pt")
    save_checkpoint(cpath, torch.nn.Linear(2, 3), arch="test-classifier", classes=["a", "b", "c"])
    with pytest.raises(CheckpointError, match="embedder"):
        get_judge(f"tfjs:{cpath}")


SHARED_MODELS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "models", "human-models-3.0.4")


@pytest.mark.realdata
@pytest.mark.skipif(not os.path.isfile(os.path.join(SHARED_MODELS, "mobileface.json")), reason="../shared/models absent")
def test_imported_tfjs_model_judges_fixture_faces(tmp_path, lfw_faces):
    from facepriv.core import align  # noqa: F401 - facepriv's own module: an import error must fail, not skip
    from facepriv.models import tfjs

    path = str(tmp_path / "mobileface.pt")
    tfjs.save_imported(tfjs.import_tfjs(os.path.join(SHARED_MODELS, "mobileface.json")), path)
    judge = get_judge(f"tfjs:{path}")
    embs = {i: np.concatenate([judge.embed(rgb, [f]) for rgb, f in items]) for i, items in lfw_faces.items()}
    (a, b) = sorted(embs)
    same = [pairwise_distances(embs[i][:1], embs[i][1:], "cosine")[0, 0] for i in (a, b)]
    diff = pairwise_distances(embs[a], embs[b], "cosine").ravel()
    assert max(same) < min(diff), (same, diff)
    g = Gallery.for_judge(judge, {i: embs[i][:1] for i in embs})
    assert evasion(g, [(i, embs[i][1], embs[i][1]) for i in embs])["clean_accuracy"] == 1.0


def test_gallery_from_folder_follows_symlinks(tmp_path):
    """A gallery of symlinked folders and photos enrols them (local fsspec lists links as "other")."""
    from PIL import Image

    real = tmp_path / "real"
    (real / "red").mkdir(parents=True)
    Image.new("RGB", (40, 40), (200, 10, 10)).save(real / "red" / "0.png")
    g_root = tmp_path / "gallery"
    (g_root / "blue").mkdir(parents=True)
    Image.new("RGB", (40, 40), (10, 10, 200)).save(real / "b.png")
    (g_root / "blue" / "0.png").symlink_to(real / "b.png")  # a file link
    (g_root / "red").symlink_to(real / "red", target_is_directory=True)  # a folder link
    g = Gallery.from_folder(str(g_root), FakeJudge(), detector=CentreDetector())
    assert g.identities == ["blue", "red"]
    assert len(g.embeddings["blue"]) == 1 and len(g.embeddings["red"]) == 1
