"""`facepriv report DST [DST ...]`: the dataset-level fooling report (also jobs/fooling_report.py)."""

from __future__ import annotations

import argparse
import sys

from facepriv.report import robustness


def add_report_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("dsts", nargs="+", metavar="DST",
                   help="output archive(s) of `facepriv cloak` (local folder or s3://bucket/prefix); every run "
                        "under DST/_facepriv/runs/ is reported")
    j = p.add_argument_group("judges")
    j.add_argument("--judge", action="append", default=[], metavar="SPEC",
                   help="independent recogniser to verify the cloaks with; repeatable or comma-separated "
                        "(--judge dlib,sface): 'dlib' (dlib ResNet, euclidean, threshold 0.6), 'sface' (OpenCV Zoo's "
                        "SFace, ONNX, cosine, threshold 0.648; pip install 'facepriv[onnx]'), 'embedder:NAME' (an "
                        "installed surrogate, see `facepriv models list`) or 'tfjs:PATH.pt' (an imported embedding "
                        "checkpoint)")
    j.add_argument("--judge-installed", action="store_true",
                   help="also judge with every surrogate installed by `facepriv models install` (embedder:NAME); "
                        "each is marked white-box when the run was crafted on it, else held-out (leave-one-out)")
    j.add_argument("--gallery", default=None, metavar="DIR",
                   help="clean photos, DIR/<identity>/<photos>: evasion mode enrols them; poisoning mode uses "
                        "them as clean probes. Without it a judge measures verification only, each cloaked face "
                        "against its own clean face")
    j.add_argument("--gallery-per-identity", type=int, default=None, metavar="N",
                   help="use only the first N photos (sorted by name) of each gallery identity")
    j.add_argument("--labels", default="folder", choices=["folder", "none"],
                   help="folder: a probe's identity is its labelled face's folder (default); none: the judge's "
                        "rank-1 identity on the clean original stands in for the truth")
    j.add_argument("--mode", default="evasion", choices=["evasion", "poisoning"],
                   help="evasion: gallery clean, probes = each cloaked face (the written file, re-detected) vs its "
                        "clean original; poisoning (Fawkes' threat model): gallery built from the cloaked photos, "
                        "probes = the clean --gallery photos (default evasion)")
    j.add_argument("--verify-against", default=None, choices=["gallery", "original"],
                   help="verification protocol's reference: gallery = the clean --gallery photos of the face's own "
                        "identity (judged when the clean face matches one at the threshold, protected when the cloaked "
                        "face matches none); original = every cloaked face of each photo against the same face in "
                        "SRC (no gallery or labels needed: group photos). Default: gallery with --gallery, else "
                        "original")
    r = p.add_argument_group("robustness")
    r.add_argument("--robustness", action=argparse.BooleanOptionalAction, default=True,
                   help="re-encode / resize every cloaked output and judge again with the run's surrogate and "
                        "every judge (default on)")
    r.add_argument("--transforms", nargs="+", default=list(robustness.TRANSFORMS), metavar="T",
                   help=f"which transforms (default: {' '.join(robustness.TRANSFORMS)}; also jpegQ / downF)")
    w = p.add_argument_group("scale")
    w.add_argument("--workers", type=int, default=None, metavar="N",
                   help="Ray workers that enrol the --gallery and re-read, re-detect and embed the written files "
                        "(each loads MTCNN and every judge once); 0 = in this process, no Ray (default: one per "
                        "CPU when there are at least 48 faces to measure or gallery photos to enrol, else in this "
                        "process)")
    w.add_argument("--batch-size", type=int, default=8, metavar="N",
                   help="photos per worker call (detection is batched over them; default 8)")
    w.add_argument("--address", default=None,
                   help="Ray cluster to join (default: $RAY_ADDRESS, else an embedded local instance)")
    w.add_argument("--cache", action=argparse.BooleanOptionalAction, default=True,
                   help="keep what each face measured (embeddings, re-detection) and each enrolled gallery under "
                        "REPORT/cache/, so a report run again measures only new rows (default on)")
    o = p.add_argument_group("output")
    o.add_argument("--sample", type=int, default=8, metavar="N",
                   help="photos per run shown as panels (original, amplified perturbation, cloaked; default 8)")
    o.add_argument("--run", dest="run_ids", action="append", default=None, metavar="RUN_ID",
                   help="report only this run (repeatable; default every run)")
    o.add_argument("--src", default=None,
                   help="source archive of the originals (default: the `src` in each run's summary.json)")
    o.add_argument("--out", default=None,
                   help="write report.json, *.parquet, index.html and its chart PNGs here "
                        "(default: FIRST_DST/_facepriv/report/)")
    o.add_argument("--device", default="cpu", help="torch device for MTCNN and the surrogate (default cpu)")
    o.add_argument("--markdown", action="store_true",
                   help="print a markdown table per run (each judge's identification / verification protection on "
                        "the written file and after each transform, and the face quality) instead of the wide table")
    o.add_argument("--no-progress", action="store_true", help="no progress bars")
    o.add_argument("--s3-endpoint", default=None, help="S3 endpoint URL (default: $AWS_ENDPOINT_URL_S3 / AWS)")
    o.add_argument("--retries", type=int, default=5, help="attempts per storage call (default 5)")


def settings_from_args(args: argparse.Namespace):
    from facepriv.report.build import ReportSettings

    return ReportSettings(judges=list(args.judge), judge_installed=args.judge_installed, gallery=args.gallery, gallery_per_identity=args.gallery_per_identity,
                          labels=args.labels, mode=args.mode, robustness=args.robustness,
                          transforms=list(args.transforms), sample=args.sample, run_ids=args.run_ids, src=args.src,
                          out=args.out, s3_endpoint=args.s3_endpoint, retries=args.retries, device=args.device,
                          progress=not args.no_progress, verify_against=args.verify_against,
                          workers=args.workers, batch_size=args.batch_size, address=args.address, cache=args.cache)


def cmd_report(args: argparse.Namespace) -> int:
    from facepriv.distributed import judging
    from facepriv.report.build import build_report, print_runs
    from facepriv.report.headline import expect_table, headline

    report = build_report(args.dsts, settings_from_args(args), log=lambda m: print(m, file=sys.stderr, flush=True),
                          remote=judging)
    if args.markdown:
        print(expect_table(report))
    else:
        print_runs(report)
    for line in headline(report):
        print(line)
    print(f"report: {report['written_to']}/index.html (report.json, *.parquet)", file=sys.stderr)
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "report", help="fooling report over one or more cloak runs (judges, robustness, HTML)",
        description="Read the Parquet manifests of the runs under each DST and write "
                    "DST/_facepriv/report/{report.json, *.parquet, index.html, chart PNGs}: fooling rate per attack, "
                    "eps, model, identity and input format; PSNR/SSIM distributions (histograms with the run's floors); "
                    "a bar chart of protection per judge and transform; faces per photo; errors by reason; "
                    "timings; a fooling-rate-vs-eps curve; face panels. With --judge, independent recognisers "
                    "(never used to craft) judge the written files; with --robustness every cloaked file is also "
                    "re-encoded as JPEG q95/85/75 and downscaled by 0.5 and judged again.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_report_options(p)
    p.set_defaults(func=cmd_report)
