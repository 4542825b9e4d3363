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
