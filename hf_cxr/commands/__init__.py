"""`hf-cxr` subcommands: argument parsing only, the work is done by library functions."""

import argparse
from collections.abc import Callable


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse `type`: a whole number >= `minimum`; anything else is refused in one line naming the value."""

    def whole_number(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {value}")
        return value

    whole_number.__name__ = f"integer >= {minimum}"  # argparse names the type in its error
    return whole_number


def add_saved_model_argument(parser: argparse.ArgumentParser) -> None:
    """The required `--model` of a command that loads a saved model and downloads nothing: a model folder, or a Hub
    id already in the local cache (`hf-cxr predict`, `hf-cxr export-onnx`). Raises `argparse.ArgumentError` when
    `parser` already has a `--model`."""
    parser.add_argument("--model", required=True, help="saved model folder, or a Hub id already in the local cache")


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """`--device` of a command that runs a model: a torch device, None (the default) choosing CUDA when available
    (`hf_cxr.machine.torch_device`). Raises `argparse.ArgumentError` when `parser` already has a `--device`."""
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
