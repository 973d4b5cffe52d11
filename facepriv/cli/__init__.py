"""The `facepriv` command line.

    facepriv train  DATA_DIR --arch paper-cnn --out model.pt
    facepriv cloak  SRC DST --model model.pt --attack fgsm --eps 8 --labels folder

One module per command (facepriv/cli/<command>.py), each with `add_parser(subparsers)`;
the options are declared once in facepriv/cli/options.py, and `jobs/` reuse them for
`ray job submit`. Heavy libraries (torch, ray) are imported only when a command runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from facepriv import __version__
from facepriv.errors import FacePrivError

# One module per command, each with add_parser(subparsers), in the order `--help` lists them.
COMMAND_MODULES: list[str] = ["facepriv.cli.train", "facepriv.cli.cloak", "facepriv.cli.report", "facepriv.cli.uap",
                              "facepriv.cli.bench", "facepriv.cli.models"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="facepriv",
        description="Face cloaking for photo archives: the same photos, visually unchanged, in which face "
                    "recognisers can no longer identify the people, plus Parquet manifests that prove it.",
    )
    p.add_argument("--version", action="version", version=f"facepriv {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
