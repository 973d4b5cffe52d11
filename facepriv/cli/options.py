"""The options of `facepriv cloak` (and `uap apply`, jobs/cloak_archive.py), declared once.

Every flag that shapes the cloak has default None and the name (dest) of its `CloakSettings`
field: `settings_from_args` builds the settings with `CloakSettings.from_args`, which takes what
the user gave, else the preset's value, else the field's default (facepriv/core/settings.py).
"""

from __future__ import annotations

import argparse

from facepriv.core.settings import PRESETS, CloakSettings


def add_io_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("storage")
    g.add_argument("--s3-endpoint", default=None,
                   help="S3 endpoint URL (default: $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL, else AWS). "
                        "Credentials come from the standard AWS variables/profiles, never from flags.")
    g.add_argument("--retries", type=int, default=5,
                   help="attempts in total per photo read, write or S3 listing page for transient errors "
                        "(timeouts, dropped connections, 5xx, throttling), with exponential backoff from 0.2 s "
                        "(default 5; botocore's and s3fs's own retries are off, so N means N, not N x N); "
                        "a permanent error on one object becomes its error row")


def add_cloak_options(p: argparse.ArgumentParser) -> None:
    """Options shared by `facepriv cloak` and jobs/cloak_archive.py."""
    p.add_argument("src", help="source archive: a local folder or s3://bucket/prefix (never written to)")
    p.add_argument("dst", help="output archive (must not be SRC or inside it); cloaked photos keep their "
                               "relative paths, manifests go to DST/_facepriv/runs/<run_id>/")
    a = p.add_argument_group("attack")
    a.add_argument("--model", help="surrogate checkpoint from `facepriv train` (needed by fgsm and pgd)")
    a.add_argument("--attack", default=None, choices=["fgsm", "pgd", "uap", "embed-pgd"],
                   help="fgsm: one signed-gradient step (the paper's eq. 1); pgd: iterative, stops per face "
                        "once fooled; uap: add the universal perturbation given by --uap (no model needed; "
                        "a --model only judges); embed-pgd: label-free PGD on pretrained face-embedding "
                        "surrogates (--surrogate; no --model or labels needed) (default fgsm)")
    a.add_argument("--perturbation", "--uap", dest="uap", default=None, metavar="PATH",
                   help="universal perturbation (.npy from `facepriv uap fit`) for --attack uap; one fitted "
                        "with --frame aligned is drawn into each face through its 5 landmarks and needs no "
                        "surrogate (add --min-face-quality to bound each face's quality)")
    a.add_argument("--top-up", type=int, default=None, metavar="STEPS",
                   help="--attack uap: then STEPS embed-pgd steps (--preset protect's attack, on --surrogate or "
                        "the installed surrogates) from the universal cloak, for the faces whose would-be file "
                        "the surrogate still finds close to their clean embedding (--top-up-above); the "
                        "manifest's steps count them (default 0 = off)")
    a.add_argument("--top-up-above", type=float, default=None, metavar="COS",
                   help="--top-up: top up the faces whose cloaked embedding keeps a cosine above COS with their "
                        "clean one (mean over the surrogates; default 0.4)")
    a.add_argument("--eps", type=float, default=None,
                   help="L-inf budget in 0-255 pixel units (default 8) of the change facepriv makes. The manifest's "
                        "per-face linf / l2 are measured on the written file read back, so for JPEG outputs they "
                        "include the re-encoding error (linf 5-15 at --eps 4 with JPEG q95 is normal); PNG outputs "
                        "stay within eps")
    a.add_argument("--steps", type=int, default=None, help="pgd / embed-pgd iterations (default 10)")
    a.add_argument("--alpha", type=float, default=None, help="pgd step in 0-255 units (default max(eps/4, 1))")
    a.add_argument("--views", type=int, default=None,
                   help="crop-jitter views averaged per gradient (1-7; default 5), so the cloak survives the "
                        "slightly different face box found when the written file is re-detected")
    a.add_argument("--kappa", type=float, default=None,
                   help="pgd keeps stepping until the face is fooled by this logit margin (default 1.0), "
                        "so the cloak survives quantisation and JPEG")
    a.add_argument("--verify-rounds", type=int, default=None,
                   help="pgd: encode each cloaked photo as it will be written, re-detect and re-classify it, "
                        "and re-attack (from the current cloak, through the re-detected crop) the faces it "
                        "does not fool, up to this many times (default 3; 0 = off)")
    a.add_argument("--check-every", type=int, default=None,
                   help="pgd: spend the same step budget (steps x (verify-rounds + 1) per face) in calls of "
                        "this many steps, re-detecting the would-be file after each, so a face stops once the "
                        "file fools it and the attack follows the box re-detection finds (default 2; "
                        "0 = check only after every --steps steps)")
    a.add_argument("--target", default=None, help="targeted attack: make every face read as this class")
    a.add_argument("--labels", default=None, choices=["none", "folder"],
                   help="folder: a photo's identity is its parent folder's name (for judging against the "
                        "truth, as the paper does); none: fooled = prediction changed (default)")
    add_embed_options(a)
    o = p.add_argument_group("output")
    o.add_argument("--jpeg-quality", type=int, default=None, help="quality for JPEG/WebP outputs (default 95)")
    o.add_argument("--keep-metadata", action="store_true",
                   help="keep EXIF fields other than location (GPS is always stripped)")
    o.add_argument("--no-judge", action="store_true",
                   help="skip re-reading and re-classifying the written files (no fooling rate)")
    o.add_argument("--redetect", default=None, choices=["near", "full"],
                   help="where judging looks for each face again in the written file: near (MTCNN's first "
                        "stage only on windows around the faces first found, twice their size, cut from the "
                        "same image pyramid: the boxes a whole-photo detection gives, ~2x faster on large "
                        "group photos; default) or full (the whole photo)")
    o.add_argument("--max-pixels", type=int, default=None,
                   help="refuse images with more pixels than this, before decoding (default 1e8)")
    o.add_argument("--strict", action="store_true",
                   help="exit with status 1 when any photo got an `error` row (default: bad files are "
                        "recorded in the manifest with their reason and the exit status stays 0)")
    d = p.add_argument_group("faces")
    d.add_argument("--min-face-size", type=int, default=None, help="smallest face MTCNN looks for, px (default 20)")
    d.add_argument("--thresholds", type=float, nargs=3, default=None, metavar=("P", "R", "O"),
                   help="MTCNN stage thresholds (default 0.6 0.7 0.7)")
    d.add_argument("--min-prob", type=float, default=None, help="keep faces with at least this probability")
    r = p.add_argument_group("execution")
    r.add_argument("--address", default=None,
                   help="Ray cluster to join (default $RAY_ADDRESS; none: start a local Ray instance)")
    r.add_argument("--workers", type=int, default=None, help="parallel workers (default: GPUs, else CPUs)")
    r.add_argument("--gpus-per-worker", type=float, default=None,
                   help="GPUs per worker (default 1 when the cluster has GPUs, else 0)")
    r.add_argument("--batch-size", type=int, default=8, help="photos per worker call (default 8)")
    r.add_argument("--face-batch", type=int, default=None, help="faces per attack batch (default 32)")
    r.add_argument("--device", default=None, help="torch device in workers: auto, cpu, cuda (default auto)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--log-every", type=float, default=0.0, metavar="SECONDS",
                   help="also print a progress line (done/total, photos/s, errors, skipped) every SECONDS "
                        "(default 0 = off; jobs/cloak_archive.py defaults to 10 for `ray job logs`)")
    r.add_argument("--full", action="store_true",
                   help="re-cloak every photo; by default photos that DST's manifest says were already "
                        "cloaked with the same content (sha256) and settings are skipped (status skipped)")
    r.add_argument("--allow-empty", action="store_true",
                   help="run even when SRC lists no photos (default: exit 2 with an error, before Ray starts)")
    r.add_argument("--force-lock", action="store_true",
                   help="take over DST from another run's lease (_facepriv/lock.json). Only for a run that "
                        "is dead: a lease without a heartbeat for 10 minutes is taken over anyway")
    add_io_options(p)


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
    a.add_argument("--quality-every", type=int, default=None, metavar="K",
                   help="embed-pgd: recompute that term's gradient every K steps and reuse it in between (it "
                        "changes slowly with the cloak; one evaluation costs about a third of a surrogate pass; "
                        "default 1, --preset protect 8)")
    a.add_argument("--preset", default=None, choices=list(PRESETS),
                   help="the protection / face-quality trade-off, embed-pgd on the installed surrogates (`facepriv "
                        "models install`; mobilefacenet when installed, else all of them): discreet (every face "
                        "SSIMULACRA 2 >= 70, face PSNR >= 38), protect (>= 50, face PSNR >= 35; the recommendation) "
                        "or strong (>= 30); see the README's table for the protection each gives. "
                        + "; ".join(name + ": " + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in p.items()
                                                        if k not in ("attack", "surrogate") and v is not None)
                                    for name, p in PRESETS.items())
                        + ". Options you give explicitly override it")


def settings_from_args(args: argparse.Namespace) -> CloakSettings:
    """CloakSettings from parsed cloak options; looks up what `from_args` needs from outside:
    the installed surrogates (for a preset) and the universal perturbation (for --attack uap)."""
    from facepriv.errors import UsageError

    for flag in ("workers", "batch_size", "face_batch"):
        v = getattr(args, flag, None)
        if v is not None and v < 1:
            raise UsageError(f"--{flag.replace('_', '-')} {v}: must be at least 1"
                             + (" (leave it out for one worker per CPU, or GPU)" if flag == "workers" else ""))
    installed: list[str] = []
    models_dir = "$FACEPRIV_HOME/models"
    if (getattr(args, "preset", None) or getattr(args, "top_up", None)) and not getattr(args, "surrogate", None):
        from facepriv.models.store import installed as installed_names, models_dir as mdir

        installed, models_dir = installed_names(), str(mdir())
    perturbation = None
    if (getattr(args, "attack", None) or "") == "uap" and getattr(args, "uap", None):
        from facepriv.io.perturbation import describe

        perturbation = describe(args.uap)
    return CloakSettings.from_args(args, installed=installed, perturbation=perturbation, models_dir=models_dir)
