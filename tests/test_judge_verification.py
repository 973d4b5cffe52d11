"""Verification arithmetic (`facepriv.judges.verification`) on hand-made embeddings: against the
clean gallery photos of the probe's own identity, and each cloaked face against its own clean face."""

import numpy as np
import pytest

from facepriv.judges import Gallery, self_verification, verification
from facepriv.judges.verification import min_distance


def gallery(metric="euclidean", threshold=0.6):
    return Gallery(metric=metric, threshold=threshold, embeddings={
        "alice": np.array([[1.0, 0.0], [0.8, 0.0]], np.float32),
        "bob": np.array([[0.0, 1.0]], np.float32),
    }, judge="toy")


def test_min_distance_over_the_identity_photos():
    g = gallery()
    assert min_distance(g, "alice", np.array([0.5, 0.0])) == pytest.approx(0.3)  # the nearer of alice's two
    assert min_distance(g, "bob", np.array([0.5, 0.0])) == pytest.approx(np.hypot(0.5, 1.0))
    assert min_distance(g, "carol", np.array([0.5, 0.0])) == np.inf
    assert min_distance(g, "alice", None) == np.inf and min_distance(g, None, np.array([1.0, 0.0])) == np.inf


def test_verification_against_the_gallery():
    g = gallery()
    a = np.array([0.9, 0.0])
    probes = [
        ("alice", a, np.array([0.9, 0.5])),       # cloaked 0.5 from alice's nearest: still matches -> not protected
        ("alice", a, np.array([0.0, 0.9])),       # cloaked moved to bob's corner: 0.9+ from alice -> protected
        ("alice", a, None),                       # cloaked face not found again -> protected
        ("alice", np.array([0.0, -1.0]), a),      # clean matches no alice photo -> not judged
        ("bob", np.array([0.0, 0.9]), np.array([0.0, 0.9])),  # unchanged -> not protected
        ("carol", a, a),                          # not enrolled -> not judged
        ("bob", None, None),                      # no clean face -> not judged
    ]
    r = verification(g, probes, details=True)
    assert (r["faces"], r["judged"], r["protected"]) == (7, 4, 2)
    assert r["protection_rate"] == 0.5
    assert (r["clean_missing"], r["cloaked_missing"], r["not_in_gallery"]) == (1, 2, 1)
    assert (r["against"], r["metric"], r["threshold"], r["judge"]) == ("gallery", "euclidean", 0.6, "toy")
    assert [f["protected"] for f in r["per_face"]] == [False, True, True, None, False, None, None]
    assert r["per_face"][0]["cloaked_distance"] == pytest.approx(np.hypot(0.1, 0.5))
    # at the threshold is a match (<=), just above is not
    edge = verification(Gallery(threshold=0.5, embeddings={"x": np.zeros((1, 2), np.float32)}),
                        [("x", np.zeros(2), np.array([0.5, 0.0])), ("x", np.zeros(2), np.array([0.5001, 0.0]))])
    assert (edge["judged"], edge["protected"]) == (2, 1)
    assert verification(g, [])["protection_rate"] is None


def test_verification_cosine():
    g = Gallery(metric="cosine", threshold=0.3, embeddings={"a": np.array([[1.0, 0.0]], np.float32)})
    # 45 degrees: cosine distance 1 - 0.707 = 0.29 (match); 60 degrees: 0.5 (no match)
    r = verification(g, [("a", np.array([2.0, 0.0]), np.array([1.0, 1.0])),
                         ("a", np.array([3.0, 0.1]), np.array([1.0, np.sqrt(3.0)]))])
    assert (r["judged"], r["protected"], r["metric"]) == (2, 1, "cosine")


def test_self_verification_each_face_against_its_own_clean_face():
    c1, c2, c3 = np.array([1.0, 0.0]), np.array([0.0, 1.0]), np.array([1.0, 1.0])
    pairs = [
        (c1, c1 + [0.1, 0.0]),   # barely moved: still the same face
        (c2, c2 + [0.7, 0.0]),   # moved 0.7 > 0.6: protected
        (c3, None),              # cloaked face not found again: not judged
        (None, c1),              # no clean embedding: not judged
        (c3, c3 + [0.0, -0.5]),  # moved 0.5 <= 0.6: a match
    ]
    r = self_verification(pairs, "euclidean", 0.6, judge="toy", details=True)
    assert (r["faces"], r["judged"], r["protected"]) == (5, 3, 1)
    assert r["protection_rate"] == pytest.approx(1 / 3)
    assert (r["clean_missing"], r["cloaked_missing"], r["against"], r["judge"]) == (1, 1, "original", "toy")
    assert [f["protected"] for f in r["per_face"]] == [False, True, None, None, False]
    assert r["per_face"][1]["distance"] == pytest.approx(0.7)
    # no gallery, no labels: only the pairs and the judge's metric and threshold
    cos = self_verification([(c1, c2), (c1, 2 * c1)], "cosine", 0.5)
    assert (cos["judged"], cos["protected"], cos["protection_rate"]) == (2, 1, 0.5)
    assert self_verification([], "cosine", 0.5)["protection_rate"] is None
