"""`hf-cxr export-onnx`: a saved 2D model as ONNX (dynamic batch), checked against PyTorch, with CPU latency."""

from __future__ import annotations

import argparse
import json
import sys

from hf_cxr.commands import add_saved_model_argument
from hf_cxr.inference.onnx_export import (
    DEFAULT_OPSET,
    EXPORTERS,
    OnnxExportError,
    export_onnx,
    format_report,
    load_image_classifier,
    onnxruntime_available,
)


def run(args: argparse.Namespace) -> int:
    """Exit 0 when exported (and, with --check, the outputs match); 1 when they differ or the model cannot export."""
    if args.check and not onnxruntime_available():
        print("hf-cxr export-onnx: --check needs onnxruntime: pip install 'hf-cxr[onnx]'", file=sys.stderr)
        return 1
    model = load_image_classifier(args.model)
    try:
        report = export_onnx(
            model, args.out, opset=args.opset, exporter=args.exporter, check=args.check, tolerance=args.tolerance
        )
    except OnnxExportError as error:
        print(f"hf-cxr export-onnx: {error}", file=sys.stderr)
        return 1
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return 0 if not report.checked or report.outputs_match else 1


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export-onnx",
        help="export a saved 2D model to ONNX (dynamic batch), check it against PyTorch, time both on the CPU",
        description=(
            "Export a saved hf-cxr image classifier to ONNX with torch.onnx.export (input pixel_values, output "
            "logits, dynamic batch axis). With --check (needs onnxruntime: pip install 'hf-cxr[onnx]'), compare "
            "onnxruntime's logits with PyTorch's and report both CPU latencies."
        ),
    )
    add_saved_model_argument(parser)
    parser.add_argument("--out", required=True, help="the .onnx file to write")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (default: %(default)s)")
    parser.add_argument("--exporter", choices=EXPORTERS, default="auto", help="auto: dynamo, then TorchScript")
    parser.add_argument("--check", action="store_true", help="compare with PyTorch in onnxruntime and time both")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="largest |logit difference| accepted, relative to the largest |logit| when that is above 1",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run)
