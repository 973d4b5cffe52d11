"""Crowds: faces whose regions overlap are attacked separately and their changes composed
(facepriv.core.compose via the pipeline's `_run_strategy`): one face's paste never erases a
neighbour's cloak, each face's own crop box holds its own change, and the written photo stays
within eps of the original everywhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from facepriv.core import geometry
from facepriv.io import imageio
from facepriv.pipeline.faces import Detection
from facepriv.core.settings import CloakSettings
from facepriv.pipeline.cloaker import Cloaker
from facepriv.strategies import REGISTRY

# two faces side by side: their boxes overlap a little, their regions (box + margin) a lot
BOXES = np.array([[20, 20, 70, 70], [60, 24, 110, 74]], np.float32)
SHIFT = (5.0, 4.0)  # the pattern strategy adds this many 0-255 units to face 0's / face 1's region
EPS = 6.0


class PatternStrategy:
    """Adds SHIFT[face index] to every pixel of the face's region (a stand-in for an attack
    whose change covers its whole region, margins included)."""

    per_face = True

    def __init__(self, settings, loaded, device):
        self.calls = 0

    def __call__(self, chunk):
        self.calls += 1
        x = geometry.pack([it.pixels for it in chunk])
        d = torch.tensor([SHIFT[it.index] for it in chunk]).view(-1, 1, 1, 1) / 255
        return (x + d).clamp(0, 1), [1] * len(chunk)


def _photo(h=96, w=160) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(90, 160, (h, w, 3), dtype=np.uint8)


def _landmarks(box):
    x0, y0, x1, y1 = box
    s = x1 - x0
    return np.array([[x0 + .3 * s, y0 + .4 * s], [x0 + .7 * s, y0 + .4 * s], [x0 + .5 * s, y0 + .6 * s],
                     [x0 + .35 * s, y0 + .8 * s], [x0 + .65 * s, y0 + .8 * s]], np.float32)


def _cloak(tmp_path, monkeypatch, face_batch: int) -> tuple[np.ndarray, np.ndarray]:
    monkeypatch.setitem(REGISTRY, "pattern", PatternStrategy)
    orig = _photo()
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    Image.fromarray(orig).save(src / "crowd.png")
    s = CloakSettings(attack="pattern", eps=EPS, judge=False, face_batch=face_batch, device="cpu")
    dst = tmp_path / f"dst{face_batch}"
    c = Cloaker(str(src), str(dst), s, "run")
    det = Detection(BOXES.copy(), np.ones(2, np.float32), np.stack([_landmarks(b) for b in BOXES]))
    c.detector.detect = lambda images: [det for _ in images]
    (row,) = c.process(["crowd.png"])
    assert row["status"] == "ok", row["reason"]
    assert row["n_faces"] == 2
    written = imageio.decode((dst / "crowd.png").read_bytes()).rgb
    return orig, written


@pytest.mark.parametrize("face_batch", [1, 2])
def test_overlapping_faces_keep_both_cloaks_within_eps(tmp_path, monkeypatch, face_batch):
    orig, written = _cloak(tmp_path, monkeypatch, face_batch)
    h, w = orig.shape[:2]
    change = written.astype(int) - orig.astype(int)
    assert np.abs(change).max() <= EPS  # the photo stays within eps, overlaps included

    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = (geometry.jpeg_region(b, w, h) for b in BOXES)
    assert ax1 > bx0  # the regions overlap: x in [bx0, ax1)
    # a strip of the overlap outside both boxes (above them): both faces' changes, summed and
    # clipped to eps (the old paste kept only the later face's)
    top = change[max(ay0, by0):20, bx0:ax1]
    assert top.size and (top == min(EPS, SHIFT[0] + SHIFT[1])).all()
    # face 0's own box where it lies in face 1's margin: face 0's change (the old paste wrote face 1's there)
    a_own = change[24:70, bx0:60]
    assert a_own.size and (a_own == SHIFT[0]).all()
    # face 1's own box in face 0's margin: face 1's change
    b_own = change[24:70, 70:ax1]
    assert b_own.size and (b_own == SHIFT[1]).all()
    # where the two boxes overlap: the sum, clipped
    both = change[24:70, 60:70]
    assert (both == min(EPS, SHIFT[0] + SHIFT[1])).all()
    # each face's region away from the other: its own change; outside every region: untouched
    assert (change[ay0:ay1, ax0:bx0] == SHIFT[0]).all() and (change[by0:by1, ax1:bx1] == SHIFT[1]).all()
    outside = np.ones((h, w), bool)
    outside[ay0:ay1, ax0:ax1] = outside[by0:by1, bx0:bx1] = False
    assert (change[outside] == 0).all()


def test_the_composed_cloak_does_not_depend_on_chunking(tmp_path, monkeypatch):
    _, one = _cloak(tmp_path, monkeypatch, 1)
    _, two = _cloak(tmp_path, monkeypatch, 2)
    assert np.array_equal(one, two)


def test_photo_cloak_resumes_from_the_composed_pixels_and_clips_to_the_image():
    from facepriv.core.compose import PhotoCloak

    orig = np.full((16, 32, 3), 100, np.uint8)
    orig[:, :4] = 253  # near white: the change is clipped to [0, 255] there
    regions, boxes = [(0, 0, 20, 16), (12, 0, 32, 16)], [(2, 2, 10, 14), (22, 2, 30, 14)]
    c = PhotoCloak(orig, regions, boxes, eps=6)
    c.add(0, np.full((16, 20, 3), 5.0))
    c.add(1, np.full((16, 20, 3), 4.0))
    assert (c.pixels((0, 0, 32, 16)).astype(int) - orig)[0, 12:20].tolist() == [[6, 6, 6]] * 8  # 9 -> eps
    assert c.pixels((0, 0, 4, 16)).max() == 255
    c.settle()
    # face 0 re-attacked from what the photo holds: its result is what the photo then holds,
    # in its own box and in the margin it shares with face 1 alike
    start = c.current(0)
    assert start[0, 12].tolist() == [106.0] * 3 and start[0, 0].tolist() == [255.0] * 3
    result = np.clip(start - 7.0, orig[:, :20] - 6.0, orig[:, :20] + 6.0)  # within eps of the original
    c.add(0, result - start)
    got = c.pixels((0, 0, 20, 16)).astype(float)
    assert np.array_equal(got, np.round(result))
    # face 1's region beyond face 0's keeps face 1's change
    assert (c.pixels((20, 0, 32, 16)).astype(int) - 100 == 4).all()
    # both re-attacked from the same pixels: their changes add
    c.settle()
    s0, s1 = c.current(0), c.current(1)
    c.add(0, np.full_like(s0, 1.0))
    c.add(1, np.full_like(s1, 2.0))
    after = c.pixels((0, 0, 32, 16)).astype(float)
    assert np.array_equal(after[:, 12:20], np.minimum(s0[:, 12:20] + 3, 106.0))
