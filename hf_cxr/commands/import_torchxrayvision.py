"""`hf-cxr import-torchxrayvision WEIGHTS --out DIR`: a torchxrayvision weight set as an hf-cxr model folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from hf_cxr.interop.torchxrayvision import DEFAULT_CACHE_DIR, WEIGHT_SETS


def _run(args: argparse.Namespace) -> int:
    from hf_cxr.interop.torchxrayvision import import_torchxrayvision, weight_set

    folder = import_torchxrayvision(
        args.weights, args.out, weights_file=args.weights_file, overwrite=args.overwrite, repo_id=args.repo_id
    )
    entry = weight_set(args.weights)
    print(
        f"wrote {folder} ({entry.architecture}, {entry.input_resolution} px, {len(entry.labels)} findings: "
        f"{', '.join(entry.labels)}); research use only, not a medical device"
    )
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "import-torchxrayvision",
        help="convert a torchxrayvision weight set into a model folder (safetensors, processor, remote code, card)",
        description=(
            "Convert one of torchxrayvision's released classifiers into an hf-cxr model folder: model.safetensors, "
            "config.json (its trained findings and operating points), preprocessor_config.json, remote code and a "
            f"model card. The weights file is read from torchxrayvision's cache folder ({DEFAULT_CACHE_DIR}/, where "
            "torchxrayvision puts it) or --weights-file, allowing only the classes such a file holds "
            "(torch.load(weights_only=True), or an equally restricted reader for torch's pre-1.6 file format); hf-cxr "
            "never downloads it. `hf-cxr push` publishes the folder."
        ),
    )
    parser.add_argument("weights", choices=sorted(WEIGHT_SETS), metavar="WEIGHTS", help=f"one of {sorted(WEIGHT_SETS)}")
    parser.add_argument("--out", required=True, type=Path, help="the model folder to write")
    parser.add_argument(
        "--weights-file", type=Path, default=None, help="the release file (default: torchxrayvision's cache folder)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    parser.add_argument(
        "--repo-id", default=None, help="the id the card's examples name (default: the folder's name; push renders it)"
    )
    parser.set_defaults(func=_run)
