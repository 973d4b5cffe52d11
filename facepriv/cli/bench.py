"""`facepriv bench PHOTO_DIR [...] [--model MODEL.pt] [--preset protect] --out bench.json` (see benchmarks/bench.py)."""

from __future__ import annotations

import argparse
import sys

from facepriv.core.settings import PRESETS


def add_parser(subparsers) -> None:
    b = subparsers.add_parser(
        "bench", help="benchmark facepriv cloak against a naive MTCNN + torchattacks loop (not a test)",
        description="In one run on the given photo folders (copied to a temporary SRC) with the same model: "
                    "facepriv cloak FGSM and PGD throughput (in-process, and on Ray), the same photos through a "
                    "naive per-photo MTCNN + torchattacks + PIL loop, the pipeline's per-face cost over the "
                    "surrogate's bare forward+backward for PGD (every step forced) on the model's arch and on "
                    "inception-resnet-v1, with a breakdown from the manifest's timing columns, and the peak RSS "
                    "of cloaking N and 10N photos; and the product path, a preset (--preset protect, on by "
                    "default when surrogates are installed): photos/s, faces/s, its per-face cost over the "
                    "surrogate's bare forward+backward x the preset's steps, a breakdown (detect, align, attack, "
                    "budget search, encode, judge, ...) and peak RSS of N and 10N photos. Without --model only the "
                    "preset is measured. Warm-up runs are excluded. Prints a table, writes JSON. The --model parts "
                    "need torchattacks: pip install -e '.[bench]'. Timings depend on the machine and its load; "
                    "ratios are measured side by side in this run.")
    b.add_argument("photo_dirs", nargs="+", metavar="PHOTO_DIR",
                   help="folders of photos (e.g. ../shared/data/lfw50 ../shared/data/photos/group)")
    b.add_argument("--model", default=None, help="classifier checkpoint from `facepriv train`: the FGSM/PGD parts "
                                                "(default: skipped)")
    b.add_argument("--preset", default=None, choices=[*PRESETS, "none"],
                   help="cloak preset to measure (default: protect when surrogates are installed or --surrogate "
                        "is given, else none)")
    b.add_argument("--surrogate", default=None,
                   help="the preset's surrogates (default: the installed ones, as `facepriv cloak --preset` picks)")
    b.add_argument("--preset-rss-n", type=int, default=3,
                   help="N for the preset's peak-RSS runs of N and 10N photos (default 3; 0 skips them)")
    b.add_argument("--report-judges", default="dlib,sface", metavar="SPECS",
                   help="judges of the report timed on the preset's written files, beside the cloak (per-face cost "
                        "of `facepriv report` over the cloak's; judges not installed are left out and named; "
                        "'none' skips it; default dlib,sface)")
    b.add_argument("--report-gallery", default=None, metavar="DIR",
                   help="clean DIR/<identity>/<photos> the report enrols (default: none, verification against the "
                        "originals)")
    b.add_argument("--device", default="auto", help="torch device for the cloaks (default auto: cuda if available)")
    b.add_argument("--out", default="bench.json", help="JSON to write (default bench.json)")
    b.add_argument("--limit", type=int, default=None,
                   help="at most this many photos per PHOTO_DIR, spread over its sub-folders (default all)")
    b.add_argument("--warmup", type=int, default=4, help="photos cloaked first and not timed (default 4)")
    b.add_argument("--batch-size", type=int, default=8, help="photos per pipeline call, as cloak (default 8)")
    b.add_argument("--face-batch", type=int, default=32, help="faces per attack call, as cloak (default 32)")
    b.add_argument("--views", type=int, default=5, help="crop-jitter views, as cloak (default 5); the per-face "
                                                        "cost is also measured with 1")
    b.add_argument("--eps", type=float, default=8.0, help="FGSM eps, 0-255 units (default 8)")
    b.add_argument("--pgd-eps", type=float, default=4.0, help="PGD eps, 0-255 units (default 4; alpha max(eps/4,1))")
    b.add_argument("--steps", type=int, default=10, help="PGD steps (default 10)")
    b.add_argument("--irv1-model", default=None,
                   help="inception-resnet-v1 classifier checkpoint for its per-face cost (default: a randomly "
                        "initialised one - fine for timing, meaningless for fooling)")
    b.add_argument("--irv1-photos", type=int, default=4,
                   help="photos for the inception-resnet-v1 PGD run (default 4; ~5 s per face per 5 views on CPU)")
    b.add_argument("--rss-n", type=int, default=20, help="N for the peak-RSS runs of N and 10N photos (default 20)")
    b.add_argument("--no-ray", action="store_true", help="skip the Ray run")
    b.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    b.add_argument("--work-dir", default=None, help="scratch folder (default a temporary one, removed after)")
    b.add_argument("--keep", action="store_true", help="keep the scratch folder (outputs, manifests)")
    b.add_argument("--no-progress", action="store_true", help="no progress bars")
    b.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    bench = harness()
    BenchOptions, format_table, run_bench = bench.BenchOptions, bench.format_table, bench.run_bench

    o = BenchOptions(photo_dirs=args.photo_dirs, model=args.model, out=args.out, limit=args.limit,
                     preset=default_preset(args.preset, args.surrogate), surrogate=args.surrogate,
                     preset_rss_n=args.preset_rss_n, device=args.device,
                     report_judges=[] if args.report_judges == "none" else
                     [j.strip() for j in args.report_judges.split(",") if j.strip()],
                     report_gallery=args.report_gallery,
                     warmup=args.warmup, batch_size=args.batch_size, face_batch=args.face_batch, views=args.views,
                     fgsm_eps=args.eps, pgd_eps=args.pgd_eps, steps=args.steps, irv1_model=args.irv1_model,
                     irv1_photos=args.irv1_photos, rss_n=args.rss_n, ray=not args.no_ray, threads=args.threads,
                     progress=not args.no_progress, work_dir=args.work_dir, keep=args.keep)
    res = run_bench(o, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(format_table(res))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def default_preset(preset: str | None, surrogate: str | None) -> str | None:
    """--preset as given ("none": None); unset: protect when there is a surrogate to use."""
    if preset is not None:
        return None if preset == "none" else preset
    from facepriv.models import store

    return "protect" if surrogate or store.installed() else None


def harness():
    """benchmarks/bench.py of the source checkout this facepriv runs from (benchmarks are not
    library code, so they are not installed with the package)."""
    import importlib.util
    from pathlib import Path

    from facepriv.errors import UsageError

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench.py"
    if not path.is_file():
        raise UsageError(f"facepriv bench runs from a source checkout: {path} not found "
                         "(git clone the project and `pip install -e '.[bench]'`)")
    spec = importlib.util.spec_from_file_location("facepriv_bench_harness", path)
    mod = importlib.util.module_from_spec(spec)
    import sys

    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod
