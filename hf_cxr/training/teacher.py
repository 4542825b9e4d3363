"""The distillation teacher of a training run: a frozen hf-cxr model with its own image processor, and the
distillation loss built from the recipe's `distillation` section (`hf_cxr.distillation`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator

from hf_cxr.registry import load_model
from hf_cxr.training.config import DistillationSection


@dataclass
class Teacher:
    """A frozen distillation teacher: the model, its image processor, and whether its targets start from its
    operating-point scores (torchxrayvision's op_norm of the sigmoids; `teacher_outputs` operating_point_scores or
    reference)."""

    model: Any
    processor: Any
    operating_point_scores: bool

    def reads(self, processor: Any) -> bool:
        """Whether the teacher's processor makes the same pixels as `processor` (then the student's batch serves)."""
        return _pixel_settings(self.processor) == _pixel_settings(processor)

    @torch.no_grad()
    def scores(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The teacher's per-label outputs for a batch of its pixels: logits, or operating-point scores."""
        logits = self.model(pixel_values=pixel_values.to(next(self.model.parameters()).dtype)).logits
        if not self.operating_point_scores:
            return logits
        unwrapped = getattr(self.model, "module", self.model)
        return unwrapped.operating_point_scores(logits.float())


def _pixel_settings(processor: Any) -> tuple[Any, ...]:
    """What decides a CXR image processor's pixels (its class name and other bookkeeping aside)."""
    fields = ("size", "resize_mode", "num_channels", "do_rescale", "do_normalize", "image_mean", "image_std")
    return tuple(getattr(processor, name, None) for name in fields)


def load_teacher(section: DistillationSection, student_labels: Sequence[str]) -> Teacher | None:
    """The distillation teacher the recipe's `distillation` section names (`teacher`: a saved model folder or a Hub
    id in the local cache, e.g. `hf-cxr import-torchxrayvision densenet121-res224-chex --out DIR`), in eval mode and
    frozen, with its own image processor; None without distillation. Raises `ValueError` without a teacher, for
    `operating_point_scores` or `reference` with a teacher that has no operating points, and when the teacher's
    labels share no finding with the student's; `FileNotFoundError` for a teacher that cannot be found."""
    if not section.enabled:
        return None
    source = section.teacher
    if not source:
        raise ValueError("distillation is enabled but names no teacher: pass --teacher DIR (hf-cxr "
                         "import-torchxrayvision densenet121-res224-chex --out DIR makes the MXA paper's)")  # fmt: skip
    outputs = section.teacher_outputs
    model, processor = load_model(source, device="cpu")
    model.requires_grad_(False)
    if outputs in ("operating_point_scores", "reference") and not hasattr(model, "operating_point_scores"):
        raise ValueError(f"distillation.teacher_outputs {outputs} needs a teacher with operating points (a "
                         f"torchxrayvision import); '{source}' ({model.config.model_type}) has none: use "
                         "logits")  # fmt: skip
    from hf_cxr.distillation import TeacherOutputAdapter

    teacher_labels = [model.config.id2label[i] for i in sorted(model.config.id2label)]
    if not TeacherOutputAdapter(teacher_labels, student_labels).mapping:
        raise ValueError(f"the teacher '{source}' predicts {teacher_labels}: none of the student's findings "
                         f"{list(student_labels)}")  # fmt: skip
    return Teacher(model, processor, outputs in ("operating_point_scores", "reference"))


def build_distillation(
    section: DistillationSection, teacher: Teacher | None, student_labels: Sequence[str], accelerator: Accelerator
) -> tuple[Teacher, torch.nn.Module] | None:
    """(the teacher on the training device, the distillation loss) from the recipe's `distillation` section, or None
    without a teacher. The teacher's label names are mapped to the student's by `TeacherOutputAdapter`."""
    if teacher is None:
        return None
    from hf_cxr.distillation import MultiLabelDistillationLoss, TeacherOutputAdapter

    config = teacher.model.config
    teacher_labels = [config.id2label[i] for i in sorted(config.id2label)]
    outputs = section.teacher_outputs
    # train.py's teachers are hf-cxr models, which return logits: `operating_point_scores` are probabilities.
    loss = MultiLabelDistillationLoss(
        alpha=section.alpha,
        distillation_type=section.type,
        teacher_outputs={"operating_point_scores": "probabilities"}.get(outputs, outputs),
        adapter=TeacherOutputAdapter(teacher_labels=teacher_labels, student_labels=student_labels),
        dynamic_weights=section.dynamic_weights,
    )
    teacher.model = accelerator.prepare(teacher.model)
    return teacher, loss.to(accelerator.device)
