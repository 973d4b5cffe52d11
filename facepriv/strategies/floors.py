"""The quality floors every strategy that changes faces applies last (embed-pgd, the universal
cloak): each face's change scaled to the largest that keeps its quality region of the photo, as
it will be written, within --min-psnr / --min-ssim / --min-face-quality (`core.budget.fit_photo`)."""

from __future__ import annotations

import numpy as np
import torch

from facepriv.core import geometry
from facepriv.core.budget import Cloak, Floors, fit_photo
from facepriv.io import imageio
from facepriv.strategies.base import FaceItem


def floors_of(s) -> Floors:
    """The quality floors the settings ask for (--min-psnr, --min-ssim, --min-face-quality)."""
    return Floors(getattr(s, "min_psnr", None), getattr(s, "min_ssim", None), getattr(s, "min_face_quality", None))


def output_qualities(s, chunk: list[FaceItem]) -> list[int | None]:
    """Per face, the JPEG quality its photo will be written at (None: not written as JPEG)."""
    return [s.jpeg_quality if getattr(getattr(it.photo, "decoded", None), "format", None) == "JPEG" else None
            for it in chunk]


def fit_budget(s, chunk: list[FaceItem], x: torch.Tensor, adv: torch.Tensor, sizes, quals, floors: Floors):
    """(adv, scales): each face's perturbation scaled to the largest that keeps its quality region
    of the photo, encoded exactly as the pipeline will write it, within the floors
    (`budget.fit_photo`; settings `s` give the output's JPEG quality and metadata). Without the
    photo (bare FaceItems) each region is fitted on its own, as a JPEG at `quals[i]` (None: as is).
    Any strategy that changes faces without a surrogate can call it."""
    adv = adv.clone()
    scales = [1.0] * len(chunk)
    groups: dict[int, list[int]] = {}
    for i, it in enumerate(chunk):
        groups.setdefault(id(it.photo), []).append(i)
    for idx in groups.values():
        photo = chunk[idx[0]].photo
        whole = getattr(photo, "cloaked", None) is not None and getattr(photo, "decoded", None) is not None
        cloaks = [_cloak(chunk[i], x[i], adv[i], sizes[i], whole) for i in idx]
        if whole:
            det = getattr(photo, "det", None)
            ours = {chunk[i].index for i in idx}
            hh, ww = photo.decoded.rgb.shape[:2]
            extra = [geometry.quality_region(b, ww, hh) for k, b in enumerate(det.boxes) if k not in ours] \
                if det is not None else []
            write = imageio.writer(photo.decoded, s.jpeg_quality, s.keep_metadata)
            got = fit_photo(photo.decoded.rgb, photo.cloaked, cloaks, floors, write, extra,
                            render=_composed(photo, [chunk[i].index for i in idx], cloaks))
        else:
            got = [fit_photo(c.at(0), c.at(0), [c], floors, _region_writer(quals[i]))[0]
                   for i, c in zip(idx, cloaks)]
        for i, c, sc in zip(idx, cloaks, got):
            h, w = sizes[i]
            adv[i, :, :h, :w] = torch.from_numpy(c.at(sc)).to(adv).permute(2, 0, 1) / 255
            scales[i] = sc
    return adv, scales


def _composed(photo, faces: list[int], cloaks: list[Cloak]):
    """budget.fit_photo's render for a photo whose faces' changes the pipeline composes
    (`compose.PhotoCloak`): the window as the composite would hold it with these faces'
    changes at the given scales; None (plain pasting) without a composite."""
    comp = getattr(photo, "composite", None)
    if comp is None:
        return None

    def render(scales, win):
        trial = comp.trial({f: c.at(sc).astype(np.float32) - c.orig for f, c, sc in zip(faces, cloaks, scales)})
        x0, y0, x1, y1 = win
        out = photo.cloaked[y0:y1, x0:x1].copy()
        for f in faces:
            rx0, ry0, rx1, ry1 = comp.regions[f]
            ix0, iy0, ix1, iy1 = max(rx0, x0), max(ry0, y0), min(rx1, x1), min(ry1, y1)
            if ix0 < ix1 and iy0 < iy1:
                out[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0] = trial.pixels((ix0, iy0, ix1, iy1))
        return out

    return render


def _cloak(it: FaceItem, x: torch.Tensor, adv: torch.Tensor, size: tuple[int, int], whole: bool) -> Cloak:
    """A face's perturbation for the budget: in photo coordinates when its photo is known
    (`whole`; the quality region from the photo's own detection box when it has one), else
    in its region's."""
    h, w = size
    orig = x[:, :h, :w].permute(1, 2, 0).cpu().numpy().astype(np.float64) * 255
    cand = adv[:, :h, :w].permute(1, 2, 0).cpu().numpy().astype(np.float64) * 255
    rx0, ry0, rx1, ry1 = it.region
    if not whole:
        return Cloak((0, 0, w, h), orig, cand, geometry.quality_region(it.box, w, h))
    det = getattr(it.photo, "det", None)
    box = det.boxes[it.index] if det is not None else np.asarray(it.box, np.float64) + [rx0, ry0, rx0, ry0]
    ph, pw = it.photo.decoded.rgb.shape[:2]
    return Cloak(it.region, orig, cand, geometry.quality_region(box, pw, ph))


def _region_writer(quality: int | None):
    """budget.Writer for a bare region: a JPEG round trip at `quality`, else as is."""
    if quality is None:
        return lambda a, win: a
    return lambda a, win: imageio.jpeg_round_trip(a, quality)
