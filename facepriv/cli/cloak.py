"""`facepriv cloak SRC DST`: cloak every photo under SRC into DST (runs on Ray)."""

from __future__ import annotations

import argparse
import json
import sys

from facepriv.cli.options import add_cloak_options, settings_from_args


def add_parser(sub) -> None:
    c = sub.add_parser("cloak", help="cloak every photo under SRC into DST (runs on Ray)",
                       description="Detect faces, cloak them with an adversarial perturbation crafted on a "
                                   "surrogate model, write each photo under DST at the same relative path in "
                                   "its own format, then re-read, re-detect and re-classify the written files "
                                   "to measure the fooling rate honestly. Starts a local Ray instance unless "
                                   "--address or $RAY_ADDRESS names a cluster.")
    add_cloak_options(c)
    c.set_defaults(func=cmd_cloak)


def cmd_cloak(args: argparse.Namespace) -> int:
    from facepriv.distributed.runner import run_cloak  # light: torch and Ray come after its preflight

    settings = settings_from_args(args)

    summary = run_cloak(
        args.src, args.dst, settings, address=args.address, workers=args.workers,
        gpus_per_worker=args.gpus_per_worker, batch_size=args.batch_size, s3_endpoint=args.s3_endpoint,
        retries=args.retries, progress=not args.no_progress, log=lambda m: print(m, file=sys.stderr, flush=True),
        log_every=args.log_every, incremental=not args.full, force_lock=args.force_lock,
        allow_empty=args.allow_empty,
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
