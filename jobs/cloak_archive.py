"""`ray job submit` entrypoint: cloak an archive on the cluster the job runs on.

    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python jobs/cloak_archive.py s3://photos/archive s3://photos/cloaked --model s3://models/model.pt \\
            --attack pgd --eps 4 --gpus-per-worker 1

Same options and the same code path as `facepriv cloak` (facepriv.cli.cloak.cmd_cloak ->
facepriv.distributed.runner.run_cloak); Ray sets $RAY_ADDRESS for the job, so it joins the cluster. In a
job the tqdm bar is off and a progress line is logged every 10 s (`--log-every`) for
`ray job logs`. Exit status: 0 when the run completed (bad photos are manifest rows with
status error, not a failure), 2 for a usage/input error, 1 when the run itself failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # --working-dir .

from facepriv.cli.options import add_cloak_options

from facepriv.cli.cloak import cmd_cloak  # noqa: E402
from facepriv.errors import FacePrivError  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cloak_archive.py",
        description="Cloak every photo under SRC into DST on the Ray cluster this job runs on (the same "
                    "options as `facepriv cloak`). Incremental: photos already cloaked with the same content "
                    "and settings are skipped; an interrupted run resumes.",
    )
    add_cloak_options(p)
    p.set_defaults(no_progress=True, log_every=10.0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return cmd_cloak(args)
    except FacePrivError as e:
        print(f"cloak_archive: error: {e}", file=sys.stderr)
        return 2
    except Exception:  # noqa: BLE001 - the run itself failed
        traceback.print_exc()
        print("cloak_archive: the run failed", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
