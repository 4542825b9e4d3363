"""`hf-cxr bench`: speed of each architecture beside its baselines and backbones, and of the data path.

A benchmark script, not a test: numbers depend on the machine and its load, which the output states.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hf_cxr.bench import DEFAULT_BASELINES, format_markdown, image_model_types, run_benchmark


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return number


def run(args: argparse.Namespace) -> int:
    result = run_benchmark(
        model_types=args.models,
        presets=args.presets,
        baselines=args.baselines,
        batch_size=args.batch_size,
        repeats=args.repeats,
        warmup=args.warmup,
        iterations=args.iterations,
        device=args.device,
        threads=args.threads,
        train=not args.no_train,
        compile_model=args.compile,
        channels_last=False if args.no_channels_last else None,
        use_bf16=False if args.fp32 else None,
        peak_tflops=args.peak_tflops,
        data_path=not args.no_data,
        data_workers=args.data_workers,
        data_images=args.data_images,
        progress=lambda message: print(f"hf-cxr bench: {message}", file=sys.stderr, flush=True),
    )
    text = format_markdown(result)
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        out.with_suffix(".json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        print(f"hf-cxr bench: wrote {out} and {out.with_suffix('.json')}", file=sys.stderr)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="inference/training images/s, memory, FLOPs against timm baselines, and the data path",
        description=(
            "Measure every 2D architecture (tiny and paper presets) beside timm baselines and its own backbone(s), "
            "interleaved in the same run, medians over repeats and per-repeat ratios; then the data path (PNG "
            "decoding, image processor, dataset with DataLoader workers). CPU by default when no GPU; on CUDA bf16 "
            "autocast and channels-last, optionally torch.compile, with the fraction of the GPU's bf16 peak."
        ),
    )
    parser.add_argument(
        "--models", nargs="+", choices=image_model_types(), default=None, help="architectures (default: all 2D)"
    )
    parser.add_argument("--presets", nargs="+", choices=["tiny", "paper"], default=["tiny", "paper"])
    parser.add_argument(
        "--baselines",
        nargs="*",
        default=list(DEFAULT_BASELINES),
        help="timm model names measured beside the models (default: %(default)s)",
    )
    parser.add_argument("--batch-size", type=_positive, default=None, help="default: 2 on CPU, 64 on CUDA")
    parser.add_argument("--repeats", type=_positive, default=3, help="timed repeats (medians are reported)")
    parser.add_argument("--warmup", type=_positive, default=None, help="warm-up steps (default: 1 on CPU, 3 on CUDA)")
    parser.add_argument("--iterations", type=_positive, default=1, help="steps per timed repeat")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument(
        "--threads", type=_positive, default=None, help="CPU threads (default: the cores not busy, by load average)"
    )
    parser.add_argument("--no-train", action="store_true", help="inference only")
    parser.add_argument("--compile", action="store_true", help="torch.compile every network (CUDA mostly)")
    parser.add_argument("--no-channels-last", action="store_true", help="keep NCHW on CUDA")
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast on CUDA")
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak (default: from a table of GPUs)"
    )
    parser.add_argument("--no-data", action="store_true", help="skip the data-path measurements")
    parser.add_argument("--data-workers", nargs="+", type=int, default=[0, 2], help="DataLoader worker counts")
    parser.add_argument("--data-images", type=_positive, default=200, help="bundled PNGs read in the data path")
    parser.add_argument("--out", default=None, help="write the markdown here and the JSON beside it (.json)")
    parser.set_defaults(func=run)
