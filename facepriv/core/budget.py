"""The quality budget per face: how much of each face's perturbation the written file can hold.

Floors (`Floors`: --min-psnr, --min-ssim, --min-face-quality = SSIMULACRA 2) bind on each
face's quality region (`geometry.quality_region`: the box + 10% each side) of the photo as it
will be written - the cloaks pasted as uint8 into the photo, encoded exactly as the pipeline
writes it (format, quality) and decoded - against the original. Each face gets its own
factor s in [0, 1] on its perturbation (pixels round(orig + s * (adv - orig))), the largest
at which every floor holds (`fit_photo`):

1. search, face by face (binary search, 8 halvings), on a window of the photo: the quality
   region plus WINDOW_BORDER px, grown out to the 16 px JPEG MCU grid, encoded and decoded on
   its own (JPEG codes each block alone, so the window's decode within the region is the whole
   file's; the border keeps chroma upsampling at the window's edge away from it). The faces
   searched before it are in the window at their factors, the later ones not yet;
2. check, on the whole photo encoded once with every factor: every face's region (also the
   photo's faces of other chunks, `extra`). A face that fails is searched again with its
   neighbours as they now are; one that fails at 0 has the factors of the cloaks that overlap
   its region halved. Until all pass (or nothing is left to shrink; after MAX_ROUNDS the cloaks
   still in the way are dropped, factor 0). A face whose region fails with every cloak at 0 -
   the file's re-encoding alone below a floor - keeps its (zero) cloak and is not a failure
   of the budget.

Pure numpy on uint8 arrays; the encoder is passed in (`write`), so this module knows no
formats.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from facepriv.core.metrics import Ssimulacra2Ref, psnr, ssim

Box = tuple[int, int, int, int]  # x0, y0, x1, y1
# write(pixels, window) -> what the written file holds in `window` when the photo holds
# `pixels` there (window = (0, 0, W, H): the whole photo, as the pipeline writes it)
Writer = Callable[[np.ndarray, Box], np.ndarray]

WINDOW_BORDER = 16  # px of photo around a quality region in the search window
MCU = 16  # the largest JPEG MCU (4:2:0); windows are aligned to it
ITERS = 8  # binary-search halvings: resolution 1/256
MAX_ROUNDS = 6  # whole-photo checks before the cloaks in a failing region are dropped


@dataclass(frozen=True)
class Floors:
    """Lower bounds on a face region's quality; None = not bound."""

    psnr: float | None = None
    ssim: float | None = None
    ssimulacra2: float | None = None

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(m for m in ("psnr", "ssim", "ssimulacra2") if getattr(self, m) is not None)

    def __bool__(self) -> bool:
        return bool(self.metrics)


@dataclass
class Cloak:
    """One face's perturbation in a photo: `region` (x0, y0, x1, y1) holds round(orig + s *
    (adv - orig)); orig / adv are (h, w, 3) float 0-255. `quality` is its quality region."""

    region: Box
    orig: np.ndarray
    adv: np.ndarray
    quality: Box

    def at(self, s: float) -> np.ndarray:
        return np.clip(np.round(self.orig + s * (self.adv - self.orig)), 0, 255).astype(np.uint8)


def largest_scale(ok: Callable[[float], bool], hi: float = 1.0, iters: int = ITERS) -> float:
    """Largest s in [0, hi] with ok(s) (binary search, resolution hi / 2^iters); hi when ok(hi),
    0.0 when no s > 0 found is."""
    if ok(hi):
        return hi
    lo = 0.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo


class _Region:
    """A quality region and its reference pixels, scored against candidates (the reference's
    half of SSIMULACRA 2 prepared once)."""

    def __init__(self, ref: np.ndarray, box: Box, floors: Floors):
        x0, y0, x1, y1 = box
        self.box, self.floors = box, floors
        self.ref = ref[y0:y1, x0:x1]
        self.s2 = Ssimulacra2Ref(self.ref) if floors.ssimulacra2 is not None else None

    def ok(self, written: np.ndarray, origin: tuple[int, int] = (0, 0)) -> bool:
        """Whether `written` (pixels of the file from `origin` = its top-left in the photo) meets
        the floors on this region. Cheapest figure first; stops at the first that fails."""
        x0, y0, x1, y1 = self.box
        w = written[y0 - origin[1] : y1 - origin[1], x0 - origin[0] : x1 - origin[0]]
        f = self.floors
        return ((f.psnr is None or psnr(self.ref, w) >= f.psnr)
                and (f.ssim is None or ssim(self.ref, w) >= f.ssim)
                and (f.ssimulacra2 is None or self.s2.score(w) >= f.ssimulacra2))


def search_window(box: Box, width: int, height: int, border: int = WINDOW_BORDER) -> Box:
    """A quality region grown by `border` px and out to the MCU grid, clipped to the photo."""
    x0, y0, x1, y1 = box
    x0, y0 = max(0, x0 - border) // MCU * MCU, max(0, y0 - border) // MCU * MCU
    x1, y1 = min(width, -(-(x1 + border) // MCU) * MCU), min(height, -(-(y1 + border) // MCU) * MCU)
    return x0, y0, x1, y1


def _overlap(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def fit_photo(ref: np.ndarray, base: np.ndarray, cloaks: Sequence[Cloak], floors: Floors, write: Writer,
              extra: Sequence[Box] = (), iters: int = ITERS, render=None) -> list[float]:
    """Each cloak's factor (see the module doc). ref: the original photo (uint8 H x W x 3);
    base: the photo as it stands without these cloaks (uint8; other faces' cloaks pasted);
    cloaks are pasted in order (a later one overwrites an earlier one where regions overlap,
    as the pipeline pastes them); extra: quality regions of the photo's other faces, which
    these cloaks must not push below the floors either. render(scales, window) -> the uint8
    pixels of `window` with the cloaks at those scales, when the pipeline composes them
    otherwise than by pasting (`compose.PhotoCloak`)."""
    n = len(cloaks)
    if not floors or n == 0:
        return [1.0] * n
    h, w = ref.shape[:2]
    scales = [0.0] * n
    regions = [_Region(ref, c.quality, floors) for c in cloaks] + [_Region(ref, b, floors) for b in extra]

    def canvas(win: Box) -> np.ndarray:
        if render is not None:
            return render(scales, win)
        x0, y0, x1, y1 = win
        out = base[y0:y1, x0:x1].copy()
        for c, s in zip(cloaks, scales):
            rx0, ry0, rx1, ry1 = c.region
            ix0, iy0, ix1, iy1 = max(rx0, x0), max(ry0, y0), min(rx1, x1), min(ry1, y1)
            if ix0 < ix1 and iy0 < iy1:
                out[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0] = c.at(s)[iy0 - ry0 : iy1 - ry0, ix0 - rx0 : ix1 - rx0]
        return out

    def search(i: int, hi: float) -> float:
        win = search_window(cloaks[i].quality, w, h)

        def ok(s: float) -> bool:
            scales[i] = s
            return regions[i].ok(write(canvas(win), win), win[:2])

        found = largest_scale(ok, hi, iters)
        scales[i] = found
        return found

    for i in range(n):
        search(i, 1.0)
    full = (0, 0, w, h)
    for _ in range(MAX_ROUNDS):
        written = write(canvas(full), full)
        failing = [k for k, r in enumerate(regions) if not r.ok(written)]
        progressed = False
        for k in failing:
            if k < n and scales[k] > 0:  # its own cloak first, with its neighbours as they are now
                before = scales[k]
                if search(k, before) >= before:  # the window passed what the whole file fails
                    scales[k] = before / 2 if before > 2.0**-iters else 0.0
                progressed = True
                continue
            for j in range(n):  # then the other cloaks reaching into its region
                if j != k and scales[j] > 0 and _overlap(cloaks[j].region, regions[k].box):
                    scales[j] = scales[j] / 2 if scales[j] > 2.0**-iters else 0.0
                    progressed = True
        if not progressed:
            return scales
    # still failing after MAX_ROUNDS whole-photo checks: drop the cloaks in the failing regions
    written = write(canvas(full), full)
    for k, r in enumerate(regions):
        if not r.ok(written):
            for j in range(n):
                if j == k or _overlap(cloaks[j].region, r.box):
                    scales[j] = 0.0
    return scales
