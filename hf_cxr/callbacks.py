"""Trainer callbacks for hf-cxr models.

`AnchorUpdateCallback` keeps the momentum anchor of MA-MSF (`model.update_anchor()`) in step with training when a
model is fine-tuned with `transformers.Trainer`; `update_model_anchor` is the same step for hand-written loops
(the Accelerate training script calls it after each optimizer step).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments


def find_anchor_update(model: nn.Module) -> Callable[..., None] | None:
    """The `update_anchor` method of `model`, looking through DDP, Accelerate and PEFT wrappers; None if absent.

    Duck-typed on purpose: a model loaded as Hub remote code is a different class object from hf_cxr's own.
    """
    for module in model.modules():
        update = getattr(module, "update_anchor", None)
        if callable(update):
            return update
    return None


def update_model_anchor(model: nn.Module, momentum: float | None = None) -> bool:
    """One anchor EMA step if `model` has a momentum anchor; returns whether it had one.

    Call it after every optimizer step (not after every micro-batch of gradient accumulation), on every process.
    """
    update = find_anchor_update(model)
    if update is None:
        return False
    update(momentum)
    return True


class AnchorUpdateCallback(TrainerCallback):
    """Calls the model's `update_anchor()` after every optimizer step.

    `on_step_end` is Trainer's once-per-optimizer-step event: with gradient accumulation it fires only when the
    accumulated gradients are applied (micro-batches go to `on_substep_end`), so the anchor's EMA counts optimizer
    steps, as the momentum m is meant to. Under DDP every process runs it, as `update_anchor` requires.

    Args:
        momentum: overrides `config.anchor_momentum` when given.
    """

    def __init__(self, momentum: float | None = None) -> None:
        self.momentum = momentum

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        if model is not None and find_anchor_update(model) is None:
            raise ValueError(f"AnchorUpdateCallback needs a model with `update_anchor()`, got {type(model).__name__}")

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        if model is not None:
            update_model_anchor(model, self.momentum)


__all__ = ["AnchorUpdateCallback", "find_anchor_update", "update_model_anchor"]
