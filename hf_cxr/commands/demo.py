"""`hf-cxr demo`: train, evaluate, save and reload a tiny model on the bundled NIH sample."""

from __future__ import annotations

import argparse

from hf_cxr.demo import run_demo


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="run the whole path on the bundled real NIH sample (CPU, a few minutes)"
    )
    parser.add_argument("--output-dir", default="hf-cxr-demo", help="where the Hub-ready model folder is written")
    parser.add_argument("--model", default="cr_msnet", help="architecture (model_type) to train at its tiny preset")
    parser.add_argument("--max-steps", type=int, default=120, help="optimizer steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=lambda args: run_demo(args.output_dir, args.model, args.max_steps, seed=args.seed) and 0)
