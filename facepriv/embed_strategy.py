"""The "embed-pgd" strategy: label-free cloaks against pretrained face-embedding surrogates.

Built once per worker: the surrogates named by ``settings.surrogate`` (comma-separated
specs, `facepriv.models.store.load_surrogate`: installed names, .pt checkpoints or TF.js
.json graphs) are loaded once. Per chunk of faces, each surrogate sees the regions through
its own 5-point alignment (`JitteredAlign`: its crop template and input size, plus input
diversity) and all of them see what the written file will hold (`WrittenModel`: uint8 +
the JPEG round trip, straight-through gradients). The attack is
`facepriv.attacks.embed_pgd.embed_pgd`.

Decoys (``embed_loss="decoy"``, Fawkes' targeted cloak): Fawkes moves a face toward a
public identity far from the user. Here the decoy for a face is the *other face in the
same chunk* (from a different photo) whose clean embeddings are least similar to it (mean
cosine over the surrogates); no extra data is shipped. A face with no such partner (a
chunk of one photo) gets the untargeted loss (a zero decoy). The choice therefore depends
on which photos share a chunk (it is not recorded; it is only the direction of the push).

Quality budget (``min_psnr`` / ``min_ssim`` / ``min_face_quality``, `facepriv.budget`):
after the attack, each face's perturbation is scaled down by the largest factor in [0, 1] at
which its quality region (box + 10%) of the photo - pasted as uint8, encoded exactly as the
pipeline will write it (format, quality) and decoded - keeps PSNR, SSIM and SSIMULACRA 2
against the original at or above the floors, checked at the end on the whole photo encoded
once: the face figures the manifest records. The photo's faces of other chunks
(``face_batch``, default 32) are checked too (not rescaled); faces of later chunks are
fitted against the cloaks already pasted. Bare FaceItems without their photo are fitted
per region, as a JPEG at the output quality when the photo is one.

Not resumable: the pipeline's verify stage re-detects and re-classifies with a classifier;
with no labels there is nothing to re-attack toward, so faces are attacked once.
"""

from __future__ import annotations

import numpy as np
import torch

from . import geometry, imageio
from .attacks.embed_pgd import JitteredAlign, embed_pgd, texture_map
from .budget import Cloak, Floors, fit_photo
from .errors import FacePrivError
from .strategies import FaceItem, WrittenModel, register


class _Identity(torch.nn.Module):
    def forward(self, x):
        return x

    def select(self, idx):
        return self


def specs_of(surrogate: str | None) -> list[str]:
    from .models.store import parse_specs

    return parse_specs(surrogate)


def choose_decoys(clean: list[torch.Tensor], groups: list[object]) -> list[int | None]:
    """For each face, the index of the face least similar to it (mean cosine over models)
    among faces of a different group (photo); None when there is none."""
    sim = sum(c @ c.T for c in clean) / len(clean)
    out: list[int | None] = []
    for i in range(len(groups)):
        cand = [j for j in range(len(groups)) if groups[j] is not groups[i]]
        out.append(min(cand, key=lambda j: float(sim[i, j])) if cand else None)
    return out


@register("embed-pgd")
class EmbedPGDStrategy:
    resumable = False

    def __init__(self, settings, loaded, device):
        from .models.store import load_surrogate

        specs = specs_of(getattr(settings, "surrogate", None))
        if not specs:
            raise FacePrivError("--attack embed-pgd needs --surrogate NAMES (comma-separated installed names, "
                                ".pt or TF.js .json paths; see `facepriv models install`), or --preset protect")
        self.s, self.device = settings, device
        self.nets = []
        for spec in specs:
            net = load_surrogate(spec, device)
            if getattr(net, "kind", None) != "embedder":
                raise FacePrivError(f"surrogate {spec!r} is a {getattr(net, 'kind', 'unknown')!r} model; "
                                    "embed-pgd needs face-embedding models")
            for p in net.parameters():
                p.requires_grad_(False)
            self.nets.append(net)
        self.specs = specs
        self.rng = np.random.default_rng(0)
        self.last_scales: list[float] = []

    def _qualities(self, chunk):
        return [self.s.jpeg_quality if getattr(it.photo.decoded, "format", None) == "JPEG" else None for it in chunk]

    def __call__(self, chunk: list[FaceItem]):
        s = self.s
        x = geometry.pack([it.pixels for it in chunk]).to(self.device)
        sizes = [tuple(it.pixels.shape[1:]) for it in chunk]
        lms = np.stack([np.asarray(it.landmarks, np.float64) for it in chunk])
        pre = WrittenModel(_Identity(), sizes, self._qualities(chunk)) if getattr(s, "simulate_write", True) else None
        models = [JitteredAlign(net, lms, p=getattr(s, "input_diversity", 0.0), rng=self.rng) for net in self.nets]
        plain = [JitteredAlign(net, lms, p=0.0) for net in self.nets]
        with torch.no_grad():
            clean = [torch.nn.functional.normalize(m(x).flatten(1), dim=1) for m in plain]
        loss = getattr(s, "embed_loss", "untargeted")
        decoys = None
        if loss == "decoy":
            pick = choose_decoys(clean, [it.photo for it in chunk])
            decoys = [torch.stack([c[j] if j is not None else torch.zeros_like(c[i]) for i, j in enumerate(pick)])
                      for c in clean]
        t = float(getattr(s, "texture_mask", 0.0) or 0.0)
        emap = texture_map(x, t) if t > 0 else None
        adv, used = embed_pgd(models, x, eps=s.eps, steps=s.steps, alpha=s.alpha, loss=loss, clean=clean,
                              decoys=decoys, momentum=getattr(s, "momentum", 0.0),
                              ti_sigma=getattr(s, "ti_sigma", 0.0), pre=pre, eps_map=emap)
        floors = Floors(getattr(s, "min_psnr", None), getattr(s, "min_ssim", None),
                        getattr(s, "min_face_quality", None))
        self.last_scales = [1.0] * len(chunk)
        if floors:
            adv = self._fit_budget(chunk, x, adv, sizes, pre, floors)
        return adv, used.tolist()

    def _fit_budget(self, chunk, x, adv, sizes, pre, floors: Floors) -> torch.Tensor:
        """Scale each face's perturbation to the largest that keeps its quality region of the
        photo, encoded exactly as the pipeline will write it, within the floors (`budget.fit_photo`).
        Without the photo (bare FaceItems) each region is fitted on its own."""
        adv = adv.clone()
        groups: dict[int, list[int]] = {}
        for i, it in enumerate(chunk):
            groups.setdefault(id(it.photo), []).append(i)
        quals = pre.qualities if pre is not None else [None] * len(chunk)
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
                write = imageio.writer(photo.decoded, self.s.jpeg_quality, self.s.keep_metadata)
                scales = fit_photo(photo.decoded.rgb, photo.cloaked, cloaks, floors, write, extra)
            else:
                scales = [fit_photo(c.at(0), c.at(0), [c], floors, _region_writer(quals[i]))[0]
                          for i, c in zip(idx, cloaks)]
            for i, c, sc in zip(idx, cloaks, scales):
                h, w = sizes[i]
                adv[i, :, :h, :w] = torch.from_numpy(c.at(sc)).to(adv).permute(2, 0, 1) / 255
                self.last_scales[i] = sc
        return adv


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
