"""ONNX export of the paper presets, checked in onnxruntime, with CPU latency (issue 9; `hf-cxr export-onnx` per model).

No trained weights are downloaded, so each model is built from its config and its BatchNorm statistics are set from
a few random batches first, as any trained model has them: at initialisation the unit running statistics let
activations grow through the deep backbones (MA-MSF's logits reach about 1500), and float32 rounding then hides
whether the exported graph is right.

    python benchmarks/bench_onnx_paper.py [--threads 1] [--repeats 10] [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch import nn

import hf_cxr
from hf_cxr.inference.onnx_export import export_onnx
from hf_cxr.machine import cpu_name

MODELS = ("cr_msnet", "mxa_efficientvit", "ma_msf")


def set_batchnorm_statistics(model: nn.Module, batches: int = 3, batch_size: int = 8) -> None:
    """Cumulative BatchNorm statistics over `batches` random batches (a data-dependent initialisation)."""
    norms = [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average
    config = model.config
    generator = torch.Generator().manual_seed(0)
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            shape = (batch_size, config.num_channels, config.image_size, config.image_size)
            model(pixel_values=torch.randn(*shape, generator=generator))
    for norm in norms:
        norm.momentum = 0.1
    model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None, help="keep the .onnx files here (default: a temp folder)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="hf-cxr-onnx-"))
    print(f"{cpu_name()}, {args.threads} thread(s), torch {torch.__version__}; batch 1, medians of {args.repeats}")
    print("| model (paper preset) | input | exporter | max abs logit difference | PyTorch ms | onnxruntime ms |")
    print("| --- | --- | --- | --- | --- | --- |")
    for model_type in MODELS:
        torch.manual_seed(0)
        model = hf_cxr.build_model(model_type, "paper")
        set_batchnorm_statistics(model)
        report = export_onnx(
            model, out / f"{model_type}.onnx", latency_repeats=args.repeats, threads=args.threads, check=True
        )
        size = f"{model.config.num_channels}x{model.config.image_size}x{model.config.image_size}"
        verdict = "" if report.outputs_match else " (DO NOT MATCH)"
        print(
            f"| {model_type} | {size} | {report.exporter} | {report.max_abs_difference:.1e}{verdict} | "
            f"{report.torch_latency_ms:.1f} | {report.onnxruntime_latency_ms:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
