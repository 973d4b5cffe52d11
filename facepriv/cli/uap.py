"""`facepriv uap fit` and `facepriv uap apply`: the universal perturbation commands.

    facepriv uap fit DATA_DIR --model model.pt --xi 10 --delta 0.2 --max-passes 10 --out uap.npy
    facepriv uap fit DATA_DIR --frame aligned --surrogate mobilefacenet --xi 12 --out uap.npy
    facepriv uap apply SRC DST --perturbation uap.npy [--min-face-quality 50] [--model model.pt --labels folder]
"""

from __future__ import annotations

import argparse
import json
import sys


def add_fit_options(p: argparse.ArgumentParser) -> None:
    """Options shared by `facepriv uap fit` and jobs/fit_universal.py."""
    from facepriv.cli.options import add_io_options

    p.add_argument("data_dir", help="folder (or s3:// prefix) with one sub-folder of photos per identity "
                                    "(the faces v is fitted on; the face nearest each photo's centre is used)")
    p.add_argument("--model", default=None,
                   help="classifier checkpoint from `facepriv train` (the surrogate of --frame crop, required there)")
    p.add_argument("--frame", default="crop", choices=["crop", "aligned"],
                   help="crop: v on the classifier's square crop (the paper's; --model); aligned: label-free, v on "
                        "the 5-point aligned template of --surrogate, drawn into each face through its landmarks "
                        "at apply time (facepriv/attacks/uap_aligned.py) (default crop)")
    p.add_argument("--out", default="uap.npy",
                   help="v as .npy (float32 (3,S,S), [0,1] pixel units); next to it: .png (amplified), "
                        ".history.parquet, .json (settings, model sha256) and .crops.parquet (default uap.npy). "
                        "An existing fit at OUT with the same settings is resumed from its last pass")
    a = p.add_argument_group("algorithm (Moosavi-Dezfooli et al. 2017, Algorithm 1)")
    a.add_argument("--xi", type=float, default=10.0, help="bound on ||v||_p in 0-255 units (default 10)")
    a.add_argument("--norm", default="linf", choices=["linf", "l2"], help="the p of ||v||_p (default linf)")
    a.add_argument("--delta", type=float, default=0.2,
                   help="stop once the fooling rate on the training faces reaches 1 - delta (default 0.2)")
    a.add_argument("--method", default="deepfool", choices=["deepfool", "robust"],
                   help="deepfool: Algorithm 1 on the model's input grid (the paper's); robust: v fitted through "
                        "what applying it does (resized to a face box, written as uint8, re-cropped with a "
                        "small shift/scale), signed-gradient steps on a clamped margin loss; survives into "
                        "written photos better (lfw50, paper-cnn, xi 10: held-out fooling 0.32 vs 0.125; "
                        "facepriv/attacks/uap_robust.py) (default deepfool)")
    a.add_argument("--max-passes", type=int, default=None,
                   help="passes over the faces in total, resumed passes included (default 10 for deepfool, "
                        "60 for robust)")
    a.add_argument("--overshoot", type=float, default=0.02, help="DeepFool overshoot (default 0.02)")
    a.add_argument("--max-iter", type=int, default=50, help="DeepFool iterations per face (default 50)")
    a.add_argument("--candidates", type=int, default=10, help="DeepFool candidate classes (default 10)")
    a.add_argument("--face-batch", type=int, default=1,
                   help="faces per DeepFool mini-batch against the same v (1 = the paper's algorithm; larger "
                        "is faster, updates summed then projected) (default 1)")
    a.add_argument("--lr", type=float, default=0.25,
                   help="robust: first pass's step as a fraction of xi, decaying linearly (default 0.25)")
    a.add_argument("--kappa", type=float, default=5.0,
                   help="robust: a face fooled by this many logits stops pulling v (default 5)")
    a.add_argument("--box-range", default="96,144", metavar="MIN,MAX",
                   help="robust: face-box sides in px of the photos v will be applied to (default 96,144, "
                        "faces in LFW-like photos)")
    a.add_argument("--seed", type=int, default=0, help="shuffle seed (default 0)")
    g = p.add_argument_group("--frame aligned (label-free, pretrained surrogates)")
    g.add_argument("--surrogate", default="mobilefacenet",
                   help="comma-separated installed surrogates (or .pt / TF.js .json) v is fitted on (default mobilefacenet)")
    g.add_argument("--holdout", default=None,
                   help="a surrogate used only to report, per pass, rank-1 protection over the fit's identities")
    g.add_argument("--loss", default="decoy", choices=["untargeted", "decoy"],
                   help="away from each face's clean embedding; decoy: also toward one fixed decoy identity (default decoy)")
    g.add_argument("--batch", type=int, default=32, help="faces per signed step, over all workers (default 32)")
    g.add_argument("--step", type=float, default=0.05,
                   help="signed step as a fraction of xi, decaying linearly to a tenth (default 0.05)")
    g.add_argument("--patience", type=int, default=3,
                   help="stop when the cosine shift improved by < --tol over this many passes (default 3; 0 = never)")
    g.add_argument("--tol", type=float, default=0.002, help="plateau tolerance on the cosine shift (default 0.002)")
    g.add_argument("--jitter", type=float, default=1.0,
                   help="probability of a re-detection jitter (small similarity) per face and step (default 1)")
    g.add_argument("--jitter-strength", type=float, default=1.0,
                   help="the jitter's ranges x this (1: scale +-4%%, rotation +-4 deg, shift +-3%% of the frame) (default 1)")
    g.add_argument("--fit-jpeg-quality", type=int, default=95,
                   help="JPEG quality of the written file modelled in the fit (0 = PNG: uint8 only) (default 95)")
    g.add_argument("--ti-sigma", type=float, default=0.0, help="Gaussian smoothing of the gradient, px (default 0)")
    g.add_argument("--quality-target", type=float, default=None, metavar="S",
                   help="a face-quality term in the fit's loss: each written crop's SSIMULACRA 2 below S costs "
                        "weight x (S - score) / 100, so v favours changes the faces' quality floor keeps (the "
                        "apply's --min-face-quality scales each face's change down until its face region meets "
                        "it) (default off)")
    g.add_argument("--quality-weight", type=float, default=1.0, metavar="W",
                   help="weight of --quality-target's term against the cosine loss (default 1)")
    g.add_argument("--rms", type=float, default=None,
                   help="also bound v's RMS over the frame (0-255 units; L2 steps): a smaller, more structured v "
                        "than the L-inf ball alone, for a face-quality floor (default: L-inf only)")
    a.add_argument("--restart", action="store_true", help="ignore an earlier fit at OUT and start from v = 0")
    r = p.add_argument_group("execution")
    r.add_argument("--workers", type=int, default=None,
                   help="Ray workers holding shards of the faces (default: the cluster's CPUs, or GPUs); "
                        "0 = single process without Ray")
    r.add_argument("--address", default=None, help="Ray cluster to join (default $RAY_ADDRESS, else local Ray)")
    r.add_argument("--gpus-per-worker", type=float, default=None,
                   help="GPUs per worker (default 1 when the cluster has GPUs, else 0)")
    r.add_argument("--crops", default=None,
                   help="crops dataset (Parquet) to reuse or create (default: OUT's stem + .crops.parquet); "
                        "faces are detected once, passes never re-run MTCNN")
    r.add_argument("--device", default="auto", help="torch device for workers: auto, cpu, cuda (default auto)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar while cropping faces")
    add_io_options(p)


def settings_from_args(args: argparse.Namespace):
    from facepriv.distributed.uap_fit import FitSettings

    from facepriv.errors import FacePrivError

    try:
        box_min, box_max = (int(v) for v in str(args.box_range).split(","))
    except ValueError:
        raise FacePrivError(f"--box-range takes MIN,MAX in px (e.g. 96,144), got {args.box_range!r}") from None
    passes = args.max_passes if args.max_passes is not None else (60 if args.method == "robust" else 10)
    return FitSettings(xi=args.xi, norm=args.norm, delta=args.delta, max_passes=passes,
                       overshoot=args.overshoot, max_iter_df=args.max_iter, num_candidates=args.candidates,
                       batch_size=args.face_batch, seed=args.seed, method=args.method, lr=args.lr,
                       kappa=args.kappa, box_min=box_min, box_max=box_max)


def aligned_settings_from_args(args: argparse.Namespace):
    from facepriv.distributed.uap_aligned_fit import AlignedFitSettings

    return AlignedFitSettings(xi=args.xi, surrogate=args.surrogate, holdout=args.holdout, loss=args.loss,
                              lr=args.step, batch=args.batch, max_passes=args.max_passes or 20,
                              patience=args.patience, tol=args.tol, jitter=args.jitter,
                              jitter_strength=args.jitter_strength,
                              jpeg_quality=args.fit_jpeg_quality or None, ti_sigma=args.ti_sigma, rms=args.rms,
                              quality_target=args.quality_target, quality_weight=args.quality_weight, seed=args.seed)


def cmd_fit(args: argparse.Namespace) -> int:
    from facepriv.distributed.uap_fit import fit
    from facepriv.errors import UsageError

    if args.frame == "aligned":
        from facepriv.distributed.uap_aligned_fit import fit as fit_aligned

        res = fit_aligned(args.data_dir, args.out, aligned_settings_from_args(args), workers=args.workers,
                          crops_path=args.crops, restart=args.restart, address=args.address,
                          s3_endpoint=args.s3_endpoint, retries=args.retries, progress=not args.no_progress,
                          log=lambda m: print(m, file=sys.stderr, flush=True))
        print(json.dumps(res, indent=2, default=str))
        return 0
    if not args.model:
        raise UsageError("`uap fit --frame crop` needs --model (a classifier from `facepriv train`)")

    res = fit(args.data_dir, args.model, args.out, settings_from_args(args), workers=args.workers,
              crops_path=args.crops, restart=args.restart, address=args.address, device=args.device,
              gpus_per_worker=args.gpus_per_worker, s3_endpoint=args.s3_endpoint, retries=args.retries,
              progress=not args.no_progress, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(json.dumps({k: v for k, v in res.items() if k != "history"}, indent=2, default=str))
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    from facepriv.cli.cloak import cmd_cloak
    from facepriv.errors import FacePrivError

    if args.attack != "uap":
        raise FacePrivError("`facepriv uap apply` only applies --attack uap; use `facepriv cloak` for others")
    return cmd_cloak(args)


def add_parser(sub) -> None:
    from facepriv.cli.options import add_cloak_options

    u = sub.add_parser("uap", help="universal perturbation: fit one v on labelled faces, apply it to archives",
                       description="One image-agnostic perturbation v that makes the classifier misidentify "
                                   "most faces it is added to (Moosavi-Dezfooli et al., CVPR 2017).")
    us = u.add_subparsers(dest="uap_command", required=True, metavar="SUBCOMMAND")
    f = us.add_parser("fit", help="fit v on DATA_DIR/<identity>/<photos> (prints the fooling rate per pass)",
                      description="Crop the faces once (MTCNN, into a Parquet crops dataset), then run "
                                  "Algorithm 1: workers (Ray actors, model loaded once) each run DeepFool over "
                                  "their shard against the current v; a coordinating actor sums their updates, "
                                  "projects onto the xi-ball and records the fooling rate aggregated from all "
                                  "workers (--method robust: each worker runs an epoch of gradient steps through the "
                                  "apply chain, merged the same way). Stops at 1 - delta or "
                                  "--max-passes; resumes from OUT.")
    add_fit_options(f)
    f.set_defaults(func=cmd_fit)
    a = us.add_parser("apply", help="cloak every photo under SRC into DST with v (runs on Ray)",
                      description="Resize v to each detected face's crop box and add it to the original pixels "
                                  "(no gradients, no surrogate). The same Ray runner, manifest and summary.json "
                                  "as `facepriv cloak`; with --model the written files are re-read, re-detected "
                                  "and re-classified to measure the fooling rate (without one, fooled is null).")
    add_cloak_options(a)
    a.set_defaults(func=cmd_apply, attack="uap")
