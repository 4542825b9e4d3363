"""`hf-cxr demo`: train, evaluate, save and reload a tiny model on the bundled NIH sample."""

from __future__ import annotations

import argparse

from hf_cxr.demo import DEMO_MODELS, run_demo


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="run the whole path on the bundled real NIH sample (CPU, a few minutes)"
    )
    parser.add_argument(
        "--output-dir",
        default="hf-cxr-demo",
        help="folder for everything the demo writes: the raw NIH layout, the converted dataset, the trained model, "
        "the evaluation report, the Hub-ready folder and the heatmaps (default %(default)s; running the demo again "
        "replaces its own outputs there)",
    )
    parser.add_argument(
        "--model", default="cr_msnet", choices=DEMO_MODELS, help="architecture to train at its tiny preset"
    )
    parser.add_argument("--max-steps", type=int, default=120, help="optimizer steps (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=lambda args: run_demo(args.output_dir, args.model, args.max_steps, seed=args.seed) and 0)
