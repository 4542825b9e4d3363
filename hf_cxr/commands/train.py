"""`hf-cxr train`: the Accelerate training loop of `training_scripts/train.py` (one process; use
`accelerate launch training_scripts/train.py` for several)."""

from __future__ import annotations

import argparse
import json

from hf_cxr.training import add_train_arguments, config_from_arguments, train


def _run(args: argparse.Namespace) -> int:
    summary = train(config_from_arguments(args))
    print(json.dumps({key: value for key, value in summary.items() if key != "history"}, indent=2))
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train a model on a converted dataset with a paper's recipe")
    add_train_arguments(parser)
    parser.set_defaults(func=_run)
