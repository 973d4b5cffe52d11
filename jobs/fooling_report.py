"""`ray job submit` entrypoint (or plain `python`): the fooling report over one or more runs.

    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python jobs/fooling_report.py s3://photos/cloaked --judge dlib --gallery s3://photos/enrol

Same options and code path as `facepriv report` (facepriv.cli.report.cmd_report ->
facepriv.report.build_report): the written files are re-read, re-detected and embedded in Ray
workers (`--workers`, each loading MTCNN and every judge once), the rates computed in the
job's driver from the embeddings; rows measured by an earlier report come from its cache. Exit status: 0 on success, 2 for a usage/input error, 1
when the report itself failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # --working-dir .

from facepriv.errors import FacePrivError  # noqa: E402
from facepriv.cli.report import add_report_options, cmd_report  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fooling_report.py",
        description="Write DST/_facepriv/report/{report.json, *.parquet, index.html} for the runs under each DST "
                    "(the same options as `facepriv report`).",
    )
    add_report_options(p)
    p.set_defaults(no_progress=True)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return cmd_report(args)
    except FacePrivError as e:
        print(f"fooling_report: error: {e}", file=sys.stderr)
        return 2
    except Exception:  # noqa: BLE001 - the report itself failed
        traceback.print_exc()
        print("fooling_report: the report failed", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
