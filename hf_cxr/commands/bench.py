"""`hf-cxr bench`: speed of each architecture beside its baselines and backbones, and of the data path.

A benchmark script, not a test: numbers depend on the machine and its load, which the output states.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from hf_cxr.benchmarks.learnability import (
    DEFAULT_BASELINE,
    DEFAULT_MODELS,
    SMALL_SETTINGS,
    LearnabilitySettings,
    run_learnability,
)
from hf_cxr.benchmarks.learnability import format_markdown as format_learnability
from hf_cxr.benchmarks.lesions import no_finding_images_from_dataset
from hf_cxr.benchmarks.model_speed import DEFAULT_BASELINES
from hf_cxr.benchmarks.speed import run_benchmark
from hf_cxr.benchmarks.speed_report import format_markdown
from hf_cxr.commands import add_device_argument, at_least
from hf_cxr.registry import IMAGE_MODEL_TYPES
from hf_cxr.training.config import apply_assignments

# Options of the learnability benchmark alone (all default to None or False): refused without --learnability.
LEARNABILITY_ONLY = ("small", "image_size", "lesion_sizes_mm", "lesion_contrasts", "checkpoints", "opacity_mm",
                     "effusion_mm", "learning_rate", "train_samples", "test_samples", "seed", "backgrounds",
                     "max_backgrounds", "budget", "target_auc", "model_config")  # fmt: skip
# Options of the speed benchmark alone (all default to None or False): refused with --learnability.
SPEED_ONLY = ("repeats", "warmup", "iterations", "threads", "no_train", "compile", "no_channels_last", "fp32",
              "peak_tflops", "no_data", "data_workers", "data_images")  # fmt: skip
DEFAULT_MAX_BACKGROUNDS = 2000


def _write(text: str, payload: dict, out: str | None, quiet: bool = False) -> None:
    if not quiet:
        print(text)
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
        if not quiet:
            print(f"hf-cxr bench: wrote {path} and {path.with_suffix('.json')}", file=sys.stderr)


def _progress(message: str) -> None:
    tqdm.write(f"hf-cxr bench: {message}", file=sys.stderr)  # above a progress bar, if one is showing


def _given(args: argparse.Namespace, names: tuple[str, ...]) -> list[str]:
    return [f"--{name.replace('_', '-')}" for name in names if getattr(args, name) not in (None, False)]


def _model_config(assignments: list[str] | None) -> dict[str, Any] | None:
    """`--model-config FIELD=VALUE` assignments as a dict, parsed as `hf-cxr train --set` parses its own."""
    if not assignments:
        return None
    fields: dict[str, Any] = {}
    try:
        apply_assignments(fields, assignments, "--model-config")
    except ValueError as error:
        raise SystemExit(f"hf-cxr bench: {error}") from None
    return fields


def run_learnability_bench(args: argparse.Namespace) -> int:
    given = _given(args, SPEED_ONLY)
    if given:
        raise SystemExit(f"hf-cxr bench: {' '.join(given)} do not apply to --learnability")
    if args.presets is not None and len(args.presets) != 1:
        raise SystemExit("hf-cxr bench: --learnability trains one preset of each model; give one to --presets")
    defaults = LearnabilitySettings() if not args.small else SMALL_SETTINGS
    chosen = {
        "image_size": args.image_size,
        "sizes_mm": tuple(args.lesion_sizes_mm) if args.lesion_sizes_mm else None,
        "contrasts": tuple(args.lesion_contrasts) if args.lesion_contrasts else None,
        "checkpoints": tuple(args.checkpoints) if args.checkpoints else None,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "train_samples": args.train_samples,
        "test_samples_per_cell": args.test_samples,
        "seed": args.seed,
        "target_auc": tuple(args.target_auc) if args.target_auc else None,
        "preset": args.presets[0] if args.presets else None,
        "model_config": _model_config(args.model_config),
    }
    other_sizes = {kind: tuple(value) for kind, value in (("opacity", args.opacity_mm), ("effusion", args.effusion_mm))
                   if value}  # fmt: skip
    if other_sizes:
        chosen["other_sizes_mm"] = {**defaults.other_sizes_mm, **other_sizes}
    settings = replace(defaults, **{key: value for key, value in chosen.items() if value is not None})
    if args.baselines is None:
        baseline = DEFAULT_BASELINE
    elif len(args.baselines) > 1:
        raise SystemExit("hf-cxr bench: --learnability takes one baseline (or none with --budget)")
    else:  # `--baselines` with no name: no baseline (needs --budget)
        baseline = args.baselines[0] if args.baselines else None

    def save_partial(partial: Any) -> None:  # a long run that is cut off keeps the models it finished
        if args.out:
            _write(format_learnability(partial), partial.to_dict(), args.out, quiet=True)

    backgrounds = None  # the bundled sample's "No Finding" images
    if args.backgrounds:
        _progress(f"reading 'No Finding' PA backgrounds from {args.backgrounds}")
        limit = args.max_backgrounds or DEFAULT_MAX_BACKGROUNDS
        backgrounds = no_finding_images_from_dataset(args.backgrounds, settings.image_size, limit=limit)
    result = run_learnability(
        settings,
        backgrounds=backgrounds,
        models=DEFAULT_MODELS if args.models is None else args.models,
        baseline=baseline,
        device=args.device,
        budget=args.budget,
        progress=_progress,
        on_run=save_partial,
    )
    _write(format_learnability(result), result.to_dict(), args.out)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.learnability:
        return run_learnability_bench(args)
    given = _given(args, LEARNABILITY_ONLY)
    if given:
        raise SystemExit(f"hf-cxr bench: {' '.join(given)} apply to --learnability only")
    # Options left out take run_benchmark's defaults (they default to None here, to be refused with --learnability).
    given_options = {"presets": args.presets, "repeats": args.repeats, "iterations": args.iterations,
                     "data_workers": args.data_workers, "data_images": args.data_images}  # fmt: skip
    result = run_benchmark(
        model_types=args.models,
        baselines=DEFAULT_BASELINES if args.baselines is None else args.baselines,
        batch_size=args.batch_size,
        warmup=args.warmup,
        device=args.device,
        threads=args.threads,
        train=not args.no_train,
        compile_model=args.compile,
        channels_last=False if args.no_channels_last else None,
        use_bf16=False if args.fp32 else None,
        peak_tflops=args.peak_tflops,
        data_path=not args.no_data,
        progress=_progress,
        **{name: value for name, value in given_options.items() if value is not None},
    )
    _write(format_markdown(result), result.to_dict(), args.out)
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
        "--models",
        nargs="*",
        choices=IMAGE_MODEL_TYPES,
        default=None,
        help="architectures (default: all 2D; none with --learnability: the baseline alone)",
    )
    parser.add_argument(
        "--presets", nargs="+", choices=["tiny", "paper"], default=None,
        help="hf-cxr presets measured (default: tiny paper; --learnability: one, default tiny)",
    )  # fmt: skip
    parser.add_argument(
        "--baselines",
        nargs="*",
        default=None,
        help=f"timm model names measured beside the models (default: {' '.join(DEFAULT_BASELINES)}); "
        f"--learnability: one preset of torchxrayvision's architecture, trained from scratch ({DEFAULT_BASELINE} "
        "(default), resnet50 or tiny)",
    )
    parser.add_argument("--batch-size", type=at_least(1), default=None, help="default: 2 on CPU, 64 on CUDA")
    parser.add_argument("--repeats", type=at_least(1), default=None, help="timed repeats, medians reported (default 3)")
    parser.add_argument("--warmup", type=at_least(1), default=None, help="warm-up steps (default: 1 on CPU, 3 on CUDA)")
    parser.add_argument("--iterations", type=at_least(1), default=None, help="steps per timed repeat (default 1)")
    add_device_argument(parser)
    parser.add_argument(
        "--threads", type=at_least(1), default=None, help="CPU threads (default: the cores not busy, by load average)"
    )
    parser.add_argument("--no-train", action="store_true", help="inference only")
    parser.add_argument("--compile", action="store_true", help="torch.compile every network (CUDA mostly)")
    parser.add_argument("--no-channels-last", action="store_true", help="keep NCHW on CUDA")
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast on CUDA")
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak (default: from a table of GPUs)"
    )
    parser.add_argument("--no-data", action="store_true", help="skip the data-path measurements")
    parser.add_argument(
        "--data-workers", nargs="+", type=int, default=None, help="DataLoader worker counts (default 0 2)"
    )
    parser.add_argument(
        "--data-images", type=at_least(1), default=None, help="bundled PNGs read in the data path (default 200)"
    )
    parser.add_argument("--out", default=None, help="write the markdown here and the JSON beside it (.json)")
    learn = parser.add_argument_group(
        "learnability",
        "--learnability trains each architecture and the --baselines model (default torchxrayvision's densenet121) "
        "with `hf-cxr train`'s loop on real "
        "radiographs with inserted findings, for a budget calibrated on the baseline, and reports AUC per lesion "
        "diameter x contrast (see hf_cxr.benchmarks.learnability). --models, --presets (one), --batch-size and "
        "--device apply too.",
    )
    learn.add_argument("--learnability", action="store_true", help="run the learnability benchmark instead")
    learn.add_argument("--small", action="store_true", help="CPU-minutes settings (64 px, few steps): a smoke run")
    learn.add_argument("--image-size", type=at_least(1), default=None, help="px (default 128, --small 64)")
    learn.add_argument("--lesion-sizes-mm", nargs="+", type=float, default=None, help="nodule diameters of the grid")
    learn.add_argument("--lesion-contrasts", nargs="+", type=float, default=None, help="nodule contrasts of the grid")
    learn.add_argument("--checkpoints", nargs="+", type=at_least(1), default=None, help="steps at which to score")
    for kind, default in (("opacity", "40 80"), ("effusion", "12 30; --small 25 40")):
        learn.add_argument(
            f"--{kind}-mm", nargs=2, type=float, default=None, metavar=("LOW", "HIGH"),
            help=f"{kind} size range in mm (default {default}); at least 2 px (opacity) or 3 px (effusion)",
        )  # fmt: skip
    learn.add_argument("--learning-rate", type=float, default=None)
    learn.add_argument("--train-samples", type=at_least(1), default=None, help="inserted training images")
    learn.add_argument("--test-samples", type=at_least(1), default=None, help="inserted test images per grid cell")
    learn.add_argument("--seed", type=int, default=None)
    learn.add_argument(
        "--backgrounds", default=None, metavar="DATASET_DIR",
        help="a converted ChestX-ray14 dataset (hf-cxr convert chestxray14): its train split's 'No Finding' PA "
        "images become the backgrounds instead of the bundled sample's 67",
    )  # fmt: skip
    learn.add_argument(
        "--max-backgrounds", type=at_least(1), help=f"at most this many (default {DEFAULT_MAX_BACKGROUNDS})"
    )
    learn.add_argument(
        "--budget", type=at_least(1), default=None,
        help="train every model for this many steps (one of the checkpoints) instead of calibrating on the baseline; "
        "with `--baselines` and no name, no baseline is trained",
    )  # fmt: skip
    learn.add_argument(
        "--model-config", action="append", default=None, metavar="FIELD=VALUE",
        help="set a config field of every hf-cxr model on top of its preset (VALUE is YAML; a dotted FIELD builds a "
        "dict, which replaces the preset's whole field), to try a variant, e.g. --model-config "
        "backbone_kwargs.depth_multiplier=0.1; repeatable",
    )  # fmt: skip
    learn.add_argument(
        "--target-auc", nargs=2, type=float, default=None, metavar=("LOW", "HIGH"),
        help="the baseline's middle-cell AUC range the budget is calibrated to (default 0.7 0.95)",
    )  # fmt: skip
    parser.set_defaults(func=run)
