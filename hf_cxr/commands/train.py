"""`hf-cxr train`: the Accelerate training loop of `training_scripts/train.py` (one process; use
`accelerate launch training_scripts/train.py` for several)."""

from __future__ import annotations

import argparse

from hf_cxr.training.arguments import add_train_arguments, train_from_arguments


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train a model on a converted dataset with a paper's recipe")
    add_train_arguments(parser)
    parser.set_defaults(func=train_from_arguments)
