"""The `hf-cxr` command line. Each subcommand lives in `hf_cxr.commands.<name>` and only parses arguments
before calling a library function that users can call from Python too.

An expected mistake (a bad value, a missing or existing path, a missing optional package, a model or dataset that
cannot be found) ends the command with one line, `hf-cxr <command>: error: <what and which value>`, and exit
status 1, as argparse does for a wrong option (status 2). `--debug` (or the environment variable `HF_CXR_DEBUG=1`)
shows the full traceback instead. Anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from huggingface_hub.errors import StrictDataclassError

# Modules in `hf_cxr.commands`, each with `add_parser(subparsers)` that sets `func` on its parser.
COMMAND_MODULES = (
    "demo", "convert", "train", "evaluate", "push", "predict", "bench", "export_onnx", "import_torchxrayvision",
)  # fmt: skip
DEBUG_VARIABLE = "HF_CXR_DEBUG"
# What a user's mistake raises in hf-cxr (bad values: ValueError; paths: FileNotFoundError, FileExistsError and
# the other OSErrors, the Hub's offline and not-found errors among them; a missing optional package: ImportError;
# a model config value of the wrong type, e.g. in a saved config.json: huggingface_hub's StrictDataclassError).
EXPECTED_ERRORS = (ValueError, OSError, ImportError, StrictDataclassError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-cxr",
        description="Chest-imaging models on the Hugging Face stack. Research use only: not a medical device.",
    )
    parser.add_argument(
        "--debug", action="store_true", help=f"show the full traceback of an error (or set {DEBUG_VARIABLE}=1)"
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"hf_cxr.commands.{name}").add_parser(subparsers)
    _accept_debug_anywhere(parser)
    return parser


def _accept_debug_anywhere(parser: argparse.ArgumentParser) -> None:
    """Let `--debug` follow the subcommand too (`hf-cxr train ... --debug`): every subcommand parser takes it, with
    no default of its own, so that it never resets the value given before the subcommand."""
    for action in parser._subparsers._group_actions if parser._subparsers else ():
        for child in dict.fromkeys(action.choices.values()):
            if "--debug" not in child._option_string_actions:
                child.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
            _accept_debug_anywhere(child)


def error_line(error: BaseException) -> str:
    """An exception as one line: its message with line breaks folded (a list of missing files stays readable)."""
    text = str(error).strip() or type(error).__name__
    if isinstance(error, KeyError) or text.startswith("[Errno"):
        text = f"{type(error).__name__}: {text}"
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.command_line = ["hf-cxr", *argv]  # what `hf-cxr train` records as the run's command
    debug = args.debug or os.environ.get(DEBUG_VARIABLE, "").strip() not in ("", "0")
    try:
        return int(args.func(args) or 0)
    except EXPECTED_ERRORS as error:
        if debug:
            raise
        print(f"hf-cxr {args.command}: error: {error_line(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"hf-cxr {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
