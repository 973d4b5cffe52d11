"""The `facepriv` command line.

    facepriv train  DATA_DIR --arch paper-cnn --out model.pt
    facepriv cloak  SRC DST --model model.pt --attack fgsm --eps 8 --labels folder

Each command lives in a small `add_parser(subparsers)` function; `jobs/` reuse the same
option sets for `ray job submit`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from . import __version__
from .embed_options import add_embed_options, apply_preset
from .errors import FacePrivError

# Command modules that add their own sub-commands (each has add_parser(subparsers)).
COMMAND_MODULES: list[str] = ["facepriv.report.cli", "facepriv.uap_cli", "facepriv.bench_cli", "facepriv.models_cli"]


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
    a.add_argument("--uap", default=None, metavar="PATH",
                   help="universal perturbation (.npy from `facepriv uap fit`) for --attack uap")
    a.add_argument("--eps", type=float, default=None, help="L-inf budget in 0-255 pixel units (default 8)")
    a.add_argument("--steps", type=int, default=None, help="pgd / embed-pgd iterations (default 10)")
    a.add_argument("--alpha", type=float, default=None, help="pgd step in 0-255 units (default max(eps/4, 1))")
    a.add_argument("--views", type=int, default=5,
                   help="crop-jitter views averaged per gradient (1-7; default 5), so the cloak survives the "
                        "slightly different face box found when the written file is re-detected")
    a.add_argument("--kappa", type=float, default=1.0,
                   help="pgd keeps stepping until the face is fooled by this logit margin (default 1.0), "
                        "so the cloak survives quantisation and JPEG")
    a.add_argument("--verify-rounds", type=int, default=3,
                   help="pgd: encode each cloaked photo as it will be written, re-detect and re-classify it, "
                        "and re-attack (from the current cloak, through the re-detected crop) the faces it "
                        "does not fool, up to this many times (default 3; 0 = off)")
    a.add_argument("--check-every", type=int, default=2,
                   help="pgd: spend the same step budget (steps x (verify-rounds + 1) per face) in calls of "
                        "this many steps, re-detecting the would-be file after each, so a face stops once the "
                        "file fools it and the attack follows the box re-detection finds (default 2; "
                        "0 = check only after every --steps steps)")
    a.add_argument("--target", default=None, help="targeted attack: make every face read as this class")
    a.add_argument("--labels", default="none", choices=["none", "folder"],
                   help="folder: a photo's identity is its parent folder's name (for judging against the "
                        "truth, as the paper does); none: fooled = prediction changed (default)")
    add_embed_options(a)
    o = p.add_argument_group("output")
    o.add_argument("--jpeg-quality", type=int, default=95, help="quality for JPEG/WebP outputs (default 95)")
    o.add_argument("--keep-metadata", action="store_true",
                   help="keep EXIF fields other than location (GPS is always stripped)")
    o.add_argument("--no-judge", action="store_true",
                   help="skip re-reading and re-classifying the written files (no fooling rate)")
    o.add_argument("--redetect", default="near", choices=["near", "full"],
                   help="where judging looks for each face again in the written file: near (MTCNN's first "
                        "stage only on windows around the faces first found, twice their size, cut from the "
                        "same image pyramid: the boxes a whole-photo detection gives, ~2x faster on large "
                        "group photos; default) or full (the whole photo)")
    o.add_argument("--max-pixels", type=int, default=100_000_000,
                   help="refuse images with more pixels than this, before decoding (default 1e8)")
    o.add_argument("--strict", action="store_true",
                   help="exit with status 1 when any photo got an `error` row (default: bad files are "
                        "recorded in the manifest with their reason and the exit status stays 0)")
    d = p.add_argument_group("faces")
    d.add_argument("--min-face-size", type=int, default=20, help="smallest face MTCNN looks for, px (default 20)")
    d.add_argument("--thresholds", type=float, nargs=3, default=[0.6, 0.7, 0.7], metavar=("P", "R", "O"),
                   help="MTCNN stage thresholds (default 0.6 0.7 0.7)")
    d.add_argument("--min-prob", type=float, default=0.9, help="keep faces with at least this probability")
    r = p.add_argument_group("execution")
    r.add_argument("--address", default=None,
                   help="Ray cluster to join (default $RAY_ADDRESS; none: start a local Ray instance)")
    r.add_argument("--workers", type=int, default=None, help="parallel workers (default: GPUs, else CPUs)")
    r.add_argument("--gpus-per-worker", type=float, default=None,
                   help="GPUs per worker (default 1 when the cluster has GPUs, else 0)")
    r.add_argument("--batch-size", type=int, default=8, help="photos per worker call (default 8)")
    r.add_argument("--face-batch", type=int, default=32, help="faces per attack batch (default 32)")
    r.add_argument("--device", default="auto", help="torch device in workers: auto, cpu, cuda (default auto)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--log-every", type=float, default=0.0, metavar="SECONDS",
                   help="also print a progress line (done/total, photos/s, errors, skipped) every SECONDS "
                        "(default 0 = off; jobs/cloak_archive.py defaults to 10 for `ray job logs`)")
    r.add_argument("--full", action="store_true",
                   help="re-cloak every photo; by default photos that DST's manifest says were already "
                        "cloaked with the same content (sha256) and settings are skipped (status skipped)")
    r.add_argument("--force-lock", action="store_true",
                   help="take over DST from another run's lease (_facepriv/lock.json). Only for a run that "
                        "is dead: a lease without a heartbeat for 10 minutes is taken over anyway")
    add_io_options(p)


def settings_from_args(args: argparse.Namespace):
    from .pipeline import EMBED_FIELDS, CloakSettings

    apply_preset(args)  # --preset, then the defaults, for every option the user left unset
    if getattr(args, "attack", None) == "uap":
        from .uap_apply import prepare_args

        prepare_args(args)  # --uap required; eps = the perturbation's size; extra records the file
    return CloakSettings(
        model=args.model, attack=args.attack, eps=args.eps, steps=args.steps, alpha=args.alpha,
        kappa=args.kappa, views=args.views, verify_rounds=args.verify_rounds, check_every=args.check_every, target=args.target, labels=args.labels, jpeg_quality=args.jpeg_quality,
        keep_metadata=args.keep_metadata, min_face_size=args.min_face_size, thresholds=tuple(args.thresholds),
        min_prob=args.min_prob, max_pixels=args.max_pixels, face_batch=args.face_batch,
        judge=not args.no_judge, redetect=args.redetect, device=args.device, extra=getattr(args, "extra", None) or {},
        **{k: getattr(args, k) for k in EMBED_FIELDS},
    )


def cmd_cloak(args: argparse.Namespace) -> int:
    from .runner import run_cloak

    summary = run_cloak(
        args.src, args.dst, settings_from_args(args), address=args.address, workers=args.workers,
        gpus_per_worker=args.gpus_per_worker, batch_size=args.batch_size, s3_endpoint=args.s3_endpoint,
        retries=args.retries, progress=not args.no_progress, log=lambda m: print(m, file=sys.stderr, flush=True),
        log_every=args.log_every, incremental=not args.full, force_lock=args.force_lock,
    )
    print_summary(summary, args.dst)
    if getattr(args, "strict", False) and summary.get("errors"):
        print(f"facepriv: --strict: {summary['errors']} photo(s) had errors (see the manifest)", file=sys.stderr)
        return 1
    return 0


def print_summary(summary: dict, dst: str) -> None:
    rdir = f"{dst.rstrip('/')}/_facepriv/runs/{summary['run_id']}"
    print(json.dumps({k: v for k, v in summary.items() if k != "error_reasons"}, indent=2, default=str))
    print(f"cloaked photos: {dst}", file=sys.stderr)
    print(f"manifest:       {rdir}/manifest/", file=sys.stderr)
    print(f"summary:        {rdir}/summary.json", file=sys.stderr)


def cmd_train(args: argparse.Namespace) -> int:
    from .train import TrainSettings, train

    s = TrainSettings(arch=args.arch, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      val_fraction=args.val_fraction, seed=args.seed, pretrained=args.pretrained,
                      freeze_backbone=args.freeze_backbone, device=args.device,
                      aug_shift=args.aug_shift, aug_scale=args.aug_scale)
    train(args.data_dir, args.out, s, s3_endpoint=args.s3_endpoint, progress=not args.no_progress,
          retries=args.retries)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="facepriv",
        description="Face cloaking for photo archives: the same photos, visually unchanged, in which face "
                    "recognisers can no longer identify the people, plus Parquet manifests that prove it.",
    )
    p.add_argument("--version", action="version", version=f"facepriv {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a surrogate face classifier on DATA_DIR/<identity>/<photos>",
                       description="Crop faces with MTCNN, hold out a seeded validation split, train a "
                                   "surrogate classifier and save one checkpoint (weights + metadata).")
    t.add_argument("data_dir", help="folder (or s3:// prefix) with one sub-folder of photos per identity")
    t.add_argument("--out", default="model.pt", help="checkpoint to write (default model.pt)")
    t.add_argument("--arch", default="paper-cnn", choices=["paper-cnn", "inception-resnet-v1"],
                   help="paper-cnn: the paper's Fig. 6 CNN; inception-resnet-v1: facenet-pytorch's network "
                        "with a classification head (default paper-cnn)")
    t.add_argument("--pretrained", default=None,
                   help="local state_dict for inception-resnet-v1 (e.g. facenet-pytorch vggface2 weights)")
    t.add_argument("--freeze-backbone", action="store_true", help="train only the classification head")
    t.add_argument("--epochs", type=int, default=60, help="training epochs (default 60)")
    t.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    t.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    t.add_argument("--val-fraction", type=float, default=0.2, help="held-out share per identity (default 0.2)")
    t.add_argument("--seed", type=int, default=0, help="seed for the split and training (default 0)")
    t.add_argument("--aug-shift", type=float, default=0.1,
                   help="augmentation: move each training crop's centre by up to this fraction of its side "
                        "(default 0.1; a model that tolerates the 1-3 px a re-detected box moves keeps cloaks "
                        "crafted on it fooling it in the written file)")
    t.add_argument("--aug-scale", type=float, default=0.15,
                   help="augmentation: scale each training crop by 1 +- this (default 0.15)")
    t.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_io_options(t)
    t.set_defaults(func=cmd_train)

    c = sub.add_parser("cloak", help="cloak every photo under SRC into DST (runs on Ray)",
                       description="Detect faces, cloak them with an adversarial perturbation crafted on a "
                                   "surrogate model, write each photo under DST at the same relative path in "
                                   "its own format, then re-read, re-detect and re-classify the written files "
                                   "to measure the fooling rate honestly. Starts a local Ray instance unless "
                                   "--address or $RAY_ADDRESS names a cluster.")
    add_cloak_options(c)
    c.set_defaults(func=cmd_cloak)

    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except FacePrivError as e:
        print(f"facepriv: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("facepriv: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
