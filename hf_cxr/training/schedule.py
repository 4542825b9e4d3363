"""The curriculum and the learning-rate schedule: stages from the recipe, the optimiser, the rate at each step, and
what a stage changes on the model (its loss, head and frozen parts)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from hf_cxr.losses import build_loss_from_config
from hf_cxr.registry import is_ct_model
from hf_cxr.training.config import OptimizationSection, Recipe


@dataclass
class Stage:
    """One curriculum stage as the loop runs it: which images, which loss, how long, at which learning rate."""

    name: str
    description: str | None = None
    exclude_no_finding: bool = False
    loss_fields: dict[str, Any] = field(default_factory=dict)  # the model config's loss fields the stage sets
    epochs: float = 1.0
    learning_rate: float = 1e-4
    classification_head: str | None = None  # MMCAF-Net: which head's logits are trained (image, table, fused)
    frozen_parts: list[str] | None = None  # MMCAF-Net: parts frozen (and kept in eval mode) during the stage
    steps: int = 0  # optimizer steps, resolved once the data is known


def stages_from_recipe(recipe: Recipe) -> list[Stage]:
    """The curriculum stages, in order; a recipe without a curriculum is one stage on all images. A stage without
    `epochs` or `learning_rate` takes the `optimization` section's."""
    opt = recipe.optimization
    if not recipe.curriculum:
        return [Stage(name="all", epochs=float(opt.epochs), learning_rate=float(opt.learning_rate))]
    return [
        Stage(
            name=name,
            description=values.description,
            exclude_no_finding=values.exclude_no_finding,
            loss_fields=values.given(),
            epochs=float(values.epochs if values.epochs is not None else opt.epochs),
            learning_rate=float(values.learning_rate if values.learning_rate is not None else opt.learning_rate),
            classification_head=values.classification_head,
            frozen_parts=list(values.frozen_parts) if values.frozen_parts is not None else None,
        )
        for name, values in recipe.curriculum.items()
    ]


def build_optimizer(opt: OptimizationSection, parameters: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """`optimization.optimizer`: adamw or sgd (with `momentum`); base learning rate 1.0, scaled by `lr_at`."""
    if opt.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=1.0, momentum=opt.momentum, weight_decay=opt.weight_decay)
    return torch.optim.AdamW(
        parameters, lr=1.0, weight_decay=opt.weight_decay, betas=tuple(opt.betas), eps=opt.eps
    )  # fmt: skip


def lr_at(step: int, stages: Sequence[Stage], opt: OptimizationSection, steps_per_epoch: Sequence[int]) -> float:
    """The learning rate after `step` optimizer steps: per stage, linear warm-up (first stage), cosine decay to
    `min_learning_rate` (or constant), then `cooldown_epochs` at the minimum."""
    start = 0
    for index, stage in enumerate(stages):
        if step < start + stage.steps or index == len(stages) - 1:
            within = step - start
            base = float(stage.learning_rate)
            warmup = round(opt.warmup_epochs * steps_per_epoch[index]) if index == 0 else 0
            cooldown = round(opt.cooldown_epochs * steps_per_epoch[index])
            warmup, cooldown = min(warmup, stage.steps // 2), min(cooldown, stage.steps // 2)
            if within < warmup:
                warm_start = opt.warmup_learning_rate
                return warm_start + (base - warm_start) * (within + 1) / warmup
            decay_steps = max(stage.steps - warmup - cooldown, 1)
            progress = min(max(within - warmup, 0) / decay_steps, 1.0)
            if opt.scheduler == "constant":
                return base
            min_lr = opt.min_learning_rate
            return min_lr + (base - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
        start += stage.steps
    raise AssertionError("unreachable")


def check_max_steps(max_steps: int | None, stage_count: int) -> None:
    """Raise `ValueError` when `max_steps` is fewer than the curriculum's `stage_count` stages (each trains at least
    one optimizer step); None (the stages' epochs) always passes."""
    if max_steps is not None and max_steps < stage_count:
        raise ValueError(f"max_steps {max_steps} is fewer than the recipe's {stage_count} curriculum stages (each "
                         f"trains at least one step): give at least {stage_count}")  # fmt: skip


def resolve_steps(stages: Sequence[Stage], steps_per_epoch: Sequence[int], max_steps: int | None) -> int:
    """Set each stage's optimizer steps (its epochs of its data, or `max_steps` split over the stages in proportion
    to their epochs, each at least one) and return the total, which is `max_steps` when it is given. Raises
    `ValueError` when `max_steps` is fewer than the stages (each trains at least one step)."""
    for stage, per_epoch in zip(stages, steps_per_epoch, strict=True):
        stage.steps = max(round(stage.epochs * per_epoch), 1)
    if max_steps is not None:
        check_max_steps(max_steps, len(stages))
        # One step each, the rest in proportion to the epochs (rounded down); the last stage takes what is left.
        spare, total_epochs = max_steps - len(stages), sum(stage.epochs for stage in stages)
        for stage in stages[:-1]:
            stage.steps = 1 + math.floor(spare * stage.epochs / total_epochs)
        stages[-1].steps = max_steps - sum(stage.steps for stage in stages[:-1])
    return sum(stage.steps for stage in stages)


def describe_stage(stage: Stage, config: Any) -> str:
    """One line on what a curriculum stage trains: its steps, images, loss and learning rate, and what it is for."""
    parts = [f"{stage.steps} steps"]
    if stage.exclude_no_finding:
        parts.append("abnormal images only")
    if stage.classification_head is not None:
        parts.append(f"{stage.classification_head} head")
    if stage.frozen_parts:
        parts.append(f"frozen: {', '.join(stage.frozen_parts)}")
    parts += [f"loss {config.loss}", f"learning rate {stage.learning_rate:g}"]
    return ", ".join(parts) + (f" ({stage.description})" if stage.description else "")


def apply_stage(model: Any, stage: Stage) -> None:
    """The stage's effect on the model: its loss (e.g. class-balanced focal in stage 2) and, for MMCAF-Net, the head
    whose logits are trained and the frozen parts (kept in eval mode). Raises `ValueError` when the model's loss
    builder refuses the stage's loss fields."""
    if stage.classification_head is not None:
        model.config.classification_head = stage.classification_head
    if stage.frozen_parts is not None:
        model.set_frozen_parts(stage.frozen_parts)
    if not stage.loss_fields:
        return
    for key, value in stage.loss_fields.items():
        setattr(model.config, key, value)
    if is_ct_model(model.config.model_type):
        from hf_cxr.modeling.mmcaf_net.losses import build_single_label_loss_from_config as build
    else:
        build = build_loss_from_config
    model.criterion = build(model.config).to(next(model.parameters()).device)
