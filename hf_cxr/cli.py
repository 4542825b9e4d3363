"""The `hf-cxr` command line. Each subcommand lives in `hf_cxr.commands.<name>` and only parses arguments
before calling a library function that users can call from Python too."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules in `hf_cxr.commands`, each with `add_parser(subparsers)` that sets `func` on its parser.
COMMAND_MODULES = ("demo", "convert", "train", "evaluate", "push", "predict", "bench", "export_onnx")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-cxr",
        description="Chest-imaging models on the Hugging Face stack. Research use only: not a medical device.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"hf_cxr.commands.{name}").add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
