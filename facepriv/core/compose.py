"""Composing per-face cloaks into one photo (pure numpy).

Each face is attacked in its own region (its box plus a margin, `geometry.jpeg_region`); in
a crowd, neighbours' regions overlap. `PhotoCloak` keeps the photo's change from the
original as floats (0-255 units, over the bounding rectangle of its face regions) and
composes each face's change into it, so one face's result never erases a neighbour's:

* a pixel inside exactly one face's crop box (the square the recogniser sees) holds that
  face's change alone: a neighbour's margin never writes over a face;
* every other pixel of a region (margins, and boxes that overlap each other) holds the sum
  of the changes of the faces whose regions cover it;
* the sum is clipped to +-eps and the pixels to [0, 255] before rounding to uint8, so the
  photo stays within eps of the original (L-inf) however many regions overlap.

A face's change is its result minus what its attack started from: the original for a first
attack (faces attacked side by side in parallel, each from the original pixels, so their
changes add and the order does not matter), the composed cloak for a re-attack (the
pipeline's verify rounds resume from the current cloak, which already holds the
neighbours' changes; where only that face counts, its result is then exactly what the
photo holds). Faces re-attacked together add their changes the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in photo pixels

NONE, MANY = -1, -2  # owner map values: no face's box / more than one face's box


class PhotoCloak:
    """The composed cloak of one photo. `orig`: (H,W,3) uint8; `regions[i]` the pixels face
    i may change; `boxes[i]` its crop box (inside its region); eps in 0-255 units."""

    def __init__(self, orig: np.ndarray, regions: Sequence[Box], boxes: Sequence[Box], eps: float):
        self.eps = float(eps)
        self.regions = [tuple(int(v) for v in r) for r in regions]
        if self.regions:
            x0 = min(r[0] for r in self.regions)
            y0 = min(r[1] for r in self.regions)
            x1 = max(r[2] for r in self.regions)
            y1 = max(r[3] for r in self.regions)
        else:
            x0 = y0 = x1 = y1 = 0
        self.origin = (x0, y0)  # the arrays below cover [y0:y1, x0:x1] of the photo
        self.orig = orig[y0:y1, x0:x1].astype(np.float32)
        self.delta = np.zeros_like(self.orig)  # the change, unclipped within a round of attacks
        self.owner = np.full(self.orig.shape[:2], NONE, np.int32)
        for i, b in enumerate(boxes):
            bx0, by0, bx1, by1 = self._local(b)
            o = self.owner[by0:by1, bx0:bx1]
            o[o == NONE] = i
            o[(o != NONE) & (o != i)] = MANY

    def _local(self, box: Box) -> Box:
        x0, y0, x1, y1 = (int(v) for v in box)
        return x0 - self.origin[0], y0 - self.origin[1], x1 - self.origin[0], y1 - self.origin[1]

    def settle(self) -> None:
        """Fold the clipping into the change (call between rounds of attacks): a face
        re-attacked next starts from the pixels the photo holds, and its result replaces
        exactly those."""
        self.delta = np.clip(np.clip(self.delta, -self.eps, self.eps), -self.orig, 255.0 - self.orig)

    def original(self, i: int) -> np.ndarray:
        """Face i's region of the original photo: (h,w,3) float 0-255."""
        x0, y0, x1, y1 = self._local(self.regions[i])
        return self.orig[y0:y1, x0:x1]

    def current(self, i: int) -> np.ndarray:
        """Face i's region as the photo holds it now, before rounding: (h,w,3) float 0-255."""
        x0, y0, x1, y1 = self._local(self.regions[i])
        return self.orig[y0:y1, x0:x1] + np.clip(self.delta[y0:y1, x0:x1], -self.eps, self.eps)

    def add(self, i: int, change: np.ndarray) -> None:
        """Compose face i's change (h,w,3 float, 0-255 units, over its region) into the photo,
        leaving the pixels of other faces' own crop boxes to them."""
        x0, y0, x1, y1 = self._local(self.regions[i])
        own = self.owner[y0:y1, x0:x1]
        counts = (own == i) | (own == NONE) | (own == MANY)
        d = self.delta[y0:y1, x0:x1]
        d += np.where(counts[..., None], change[: y1 - y0, : x1 - x0], 0.0).astype(np.float32)

    def trial(self, changes: dict[int, np.ndarray]) -> "PhotoCloak":
        """A copy with these faces' changes added (to measure a would-be cloak)."""
        t = object.__new__(PhotoCloak)
        t.__dict__.update(self.__dict__)
        t.delta = self.delta.copy()
        for i, ch in changes.items():
            t.add(i, ch)
        return t

    def pixels(self, region: Box) -> np.ndarray:
        """The uint8 pixels the photo holds in `region` (photo coordinates, inside the
        union of the face regions): original + change clipped to +-eps, rounded."""
        x0, y0, x1, y1 = self._local(region)
        d = np.clip(self.delta[y0:y1, x0:x1], -self.eps, self.eps)
        return np.clip(np.round(self.orig[y0:y1, x0:x1] + d), 0, 255).astype(np.uint8)
