"""`hf-cxr predict`: findings, decision thresholds and heatmap pictures for radiographs (PNG/JPEG/DICOM).

The JSON printed with `--json` is documented in `hf_cxr.inference.predict` (and docs/predict.md).
"""

from __future__ import annotations

import argparse
import json
import sys

from hf_cxr.commands import add_device_argument, add_saved_model_argument, at_least
from hf_cxr.inference.predict import format_results, predict, results_to_json
from hf_cxr.registry import is_ct_model, load_model


def _threshold(value: str) -> str | float:
    if value == "per-class":
        return value
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'per-class' or a probability, got {value!r}") from None
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"a threshold must lie in [0, 1], got {value}")
    return number


def run(args: argparse.Namespace) -> int:
    """Exit status 0 when every input was scored, 1 when some were refused: any failure on one input (not a
    radiograph, unreadable, malformed, an error in the model on it) refuses that input alone; each is named with
    its reason on stderr and in the output, and the others are still scored."""
    model, processor = load_model(args.model, device=args.device)
    if is_ct_model(model.config.model_type):
        raise ValueError(f"'{args.model}' is a CT model (MMCAF-Net); hf-cxr predict reads radiographs. Use the "
                         "'ct-clinical-classification' pipeline for a CT series and a clinical record")  # fmt: skip
    results = predict(
        model, processor, args.inputs, out_dir=args.out, threshold=args.threshold, top_k=args.top_k, layer=args.layer
    )
    if args.json:
        print(json.dumps(results_to_json(results, args.model, args.threshold), indent=2))
    else:
        print(format_results(results))
    refused = [result for result in results if result.error is not None]
    for result in refused:
        print(f"hf-cxr predict: refused {result.path}: {result.error}", file=sys.stderr)
    return 1 if refused else 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="findings and Grad-CAM heatmaps for radiographs (research use only, not a medical device)",
        description=(
            "Print each finding's probability (most probable first, '*' at or above its decision threshold) and "
            "write a PNG per input with the radiograph and heatmaps of the top findings. Research use only: "
            "not a medical device."
        ),
    )
    add_saved_model_argument(parser)
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DICOM", help="PNG/JPEG (8/16-bit) or DICOM radiographs")
    parser.add_argument("--out", default="hf-cxr-predict", help="folder for the heatmap PNGs (default: %(default)s)")
    parser.add_argument(
        "--threshold",
        type=_threshold,
        default="per-class",
        help="'per-class' (config.decision_thresholds, else 0.5) or one probability for every finding",
    )
    parser.add_argument("--json", action="store_true", help="print the documented JSON object instead of text")
    parser.add_argument("--top-k", type=at_least(0), default=3, help="findings to draw heatmaps for (default 3)")
    parser.add_argument("--layer", default=None, help="Grad-CAM module name instead of the architecture's default")
    add_device_argument(parser)
    parser.set_defaults(func=run)
