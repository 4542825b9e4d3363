"""`train.py`'s command line (`training_scripts/train.py`, `hf-cxr train`) and the `TrainingConfig` it makes: the
recipe named by `--recipe`, with `--set` assignments and the explicit flags applied on top."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from hf_cxr.registry import ARCHITECTURES
from hf_cxr.training.config import Recipe, TrainingConfig, apply_assignments, apply_overrides, load_recipe


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The `train.py` / `hf-cxr train` command line; flags override the recipe."""
    parser.add_argument("--model", required=True, help=f"model_type: {', '.join(sorted(ARCHITECTURES))}")
    parser.add_argument("--preset", default=None, help="paper (the published configuration) or tiny")
    parser.add_argument("--dataset", required=True, help="a converted dataset folder (hf-cxr convert) or a Hub id")
    parser.add_argument("--output-dir", required=True, help="the final model, checkpoints and logs go here")
    parser.add_argument("--recipe", default=None, help="recipe name in training_scripts/recipes or a YAML path")
    parser.add_argument("--max-steps", type=int, default=None, help="total optimizer steps (overrides epochs)")
    parser.add_argument(
        "--resume-from-checkpoint",
        default=None,
        help="a checkpoint folder, or 'latest' (the newest in OUTPUT_DIR/checkpoints; none: start)",
    )
    parser.add_argument(
        "--overwrite-output-dir",
        action="store_true",
        help="start a new run in an OUTPUT_DIR that holds one (its checkpoints, logs and model go)",
    )
    parser.add_argument("--per-device-batch-size", type=int, default=None)
    parser.add_argument("--gradient-accumulation-steps", type=int, default=None)
    parser.add_argument("--learning-rate", type=float, default=None, help="overrides every stage's learning rate")
    parser.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default=None)
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--checkpointing-steps", type=int, default=500)
    parser.add_argument("--keep-checkpoints", type=int, default=2, help="how many recent checkpoints to keep")
    parser.add_argument("--eval-steps", type=int, default=None, help="validate every N steps (default: per epoch)")
    parser.add_argument("--stop-after-steps", type=int, default=None,
                        help="leave after N optimizer steps of this invocation (e.g. a preemptible job's slot); "
                        "resume with --resume-from-checkpoint latest")  # fmt: skip
    parser.add_argument(
        "--num-workers",
        type=int,
        default=None,
        help="data-loader worker processes per training process (default: on a GPU, this process's share of the CPU "
        "cores less one, at most 8; on CPU 0, the model using every core)",
    )
    parser.add_argument(
        "--augment-on",
        choices=("auto", "cpu", "device"),
        default="auto",
        help="2D: run the recipe's augmentation in the data loader (cpu) or batched on the training device (device); "
        "default auto: device on a GPU, else cpu",
    )
    parser.add_argument("--use-cpu", action="store_true", help="train on the CPU even when a GPU is visible")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--teacher", default=None, help="distillation teacher: local path or Hub id")
    parser.add_argument(
        "--log-with",
        default="auto",
        help="comma-separated trackers: csv, tensorboard, wandb, none; auto = csv, plus tensorboard when installed. "
        "All write under OUTPUT_DIR/logs/run",
    )
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override any recipe field, e.g. --set optimization.weight_decay=0.05")  # fmt: skip

    def backbone_weights(text: str) -> str:
        field, separator, value = text.partition("=")
        if not separator or not field.strip().endswith("backbone_weights") or not value.strip():
            raise argparse.ArgumentTypeError(f"expects FIELD=VALUE with a *backbone_weights FIELD, got {text!r}")
        return text

    parser.add_argument("--backbone-weights", action="append", default=[], type=backbone_weights,
                        metavar="FIELD=VALUE",
                        help="start a backbone from pretrained timm weights (a model.overrides entry, recorded in "
                        "recipe.yaml): FIELD is backbone_weights (ma_msf, mxa_efficientvit) or "
                        "global_backbone_weights / local_backbone_weights (cr_msnet); VALUE is true (timm's default "
                        "tag), a tag such as resnet50.a1_in1k, a local .safetensors file, or null. Hub tags are read "
                        "through huggingface_hub (HF_HUB_OFFLINE=1: from the HF cache); repeatable")  # fmt: skip
    return parser


def config_from_arguments(args: argparse.Namespace) -> TrainingConfig:
    """The run `add_train_arguments`' flags describe: the recipe named by `--recipe` (or an empty one) with `--set`
    applied, then the explicit flags (batch size, learning rate of every stage, precision, seed, teacher, backbone
    weights as `model.overrides` entries, recorded in recipe.yaml). Raises `ValueError` for an unknown recipe, an
    unknown key or a value of the wrong type (named by its dotted path), and what `TrainingConfig.check` refuses."""
    recipe = load_recipe(args.recipe) if args.recipe else Recipe()
    if recipe.model.model_type and recipe.model.model_type != args.model:  # before --set can change it
        raise ValueError(f"recipe '{args.recipe}' is for model {recipe.model.model_type!r}, not {args.model!r}")
    recipe = apply_overrides(recipe, list(args.set))
    opt = recipe.optimization
    for flag, key in (
        ("per_device_batch_size", "batch_size"),
        ("gradient_accumulation_steps", "gradient_accumulation_steps"),
        ("mixed_precision", "mixed_precision"),
        ("seed", "seed"),
    ):
        if getattr(args, flag) is not None:
            setattr(opt, key, getattr(args, flag))
    if args.learning_rate is not None:
        recipe.set_learning_rate(args.learning_rate)
    if args.teacher:
        recipe.distillation.enabled, recipe.distillation.teacher = True, args.teacher
    if getattr(args, "backbone_weights", None):
        apply_assignments(recipe.model.overrides, list(args.backbone_weights), "--backbone-weights")
    config = TrainingConfig(
        model_type=args.model, dataset=str(args.dataset), output_dir=Path(args.output_dir), recipe=recipe,
        recipe_name=args.recipe, preset=args.preset, max_steps=args.max_steps,
        resume_from_checkpoint=args.resume_from_checkpoint, overwrite_output_dir=args.overwrite_output_dir,
        compile=args.compile, checkpointing_steps=args.checkpointing_steps, keep_checkpoints=args.keep_checkpoints,
        eval_steps=args.eval_steps, stop_after_steps=args.stop_after_steps, num_workers=args.num_workers,
        augment_on=args.augment_on, use_cpu=args.use_cpu, log_with=args.log_with,
        command_line=getattr(args, "command_line", None),
    )  # fmt: skip
    config.check()
    return config


def train_from_arguments(args: argparse.Namespace) -> int:
    """Train with the parsed flags of `add_train_arguments` and print the run's summary (without the validation
    history); what `hf-cxr train` and `training_scripts/train.py` run. Raises as `config_from_arguments` and
    `train` do."""
    from hf_cxr.training.loop import train

    summary = train(config_from_arguments(args))
    print(json.dumps({key: value for key, value in summary.items() if key != "history"}, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python training_scripts/train.py ...`: parse the flags, then `train_from_arguments`."""
    parser = add_train_arguments(argparse.ArgumentParser(description="Train an hf-cxr model with Accelerate."))
    program = Path(sys.argv[0]).name if argv is None else "train.py"
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.command_line = [program, *argv]
    return train_from_arguments(args)
