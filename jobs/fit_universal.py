"""`ray job submit` entrypoint: fit a universal perturbation on the cluster the job runs on.

    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python jobs/fit_universal.py s3://faces/train --model s3://models/model.pt \\
            --xi 10 --delta 0.2 --max-passes 10 --out s3://models/uap.npy --workers 8

Same options and code path as `facepriv uap fit` (facepriv.cli.uap.cmd_fit ->
facepriv.distributed.uap_fit.fit); Ray sets $RAY_ADDRESS for the job, so it joins the cluster. The crops
dataset (default OUT's stem + .crops.parquet) must be readable by every worker: on a
cluster put OUT (or --crops) on shared storage such as s3://. The fooling rate per pass is
printed for `ray job logs`; v, its history and the sidecar are rewritten after every pass,
so re-submitting the same job resumes. Apply v with jobs/cloak_archive.py --attack uap --uap OUT.
Exit status: 0 done, 2 usage/input error, 1 the run failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # --working-dir .

from facepriv.errors import FacePrivError  # noqa: E402
from facepriv.cli.uap import add_fit_options, cmd_fit  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fit_universal.py",
        description="Fit a universal perturbation on DATA_DIR/<identity>/<photos> on the Ray cluster this job "
                    "runs on (the same options as `facepriv uap fit`); resumes from OUT.",
    )
    add_fit_options(p)
    p.set_defaults(no_progress=True)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return cmd_fit(args)
    except FacePrivError as e:
        print(f"fit_universal: error: {e}", file=sys.stderr)
        return 2
    except Exception:  # noqa: BLE001 - the run itself failed
        traceback.print_exc()
        print("fit_universal: the run failed", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
