"""`facepriv uap fit` and `facepriv uap apply`: the universal perturbation commands.

    facepriv uap fit DATA_DIR --model model.pt --xi 10 --delta 0.2 --max-passes 10 --out uap.npy
    facepriv uap apply SRC DST --uap uap.npy [--model model.pt --labels folder]
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
    p.add_argument("--model", required=True, help="classifier checkpoint from `facepriv train` (the surrogate)")
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


def cmd_fit(args: argparse.Namespace) -> int:
    from facepriv.distributed.uap_fit import fit

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
