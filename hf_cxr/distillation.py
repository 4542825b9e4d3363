"""Multi-label knowledge distillation from a frozen chest X-ray classifier (MXA paper, section 5).

Three pieces, usable on their own or together:

- `TeacherOutputAdapter` re-expresses a teacher's per-finding probabilities in the student's label space: by
  name (with the documented synonyms, e.g. torchxrayvision's `Effusion` -> CheXpert's `Pleural Effusion`), with
  "No Finding" computed as the product of (1 - p) over the mapped findings, and a mask of the student labels the
  teacher cannot supply.
- `MultiLabelDistillationLoss`: (1 - alpha) * BCE(student_cls, y) + alpha * weighted BCE(student_dist, teacher),
  soft or hard targets, dynamic label weights w_j = 1 - mean_i p_ij, masked labels left out.
- `DistillationTrainer`: a `transformers.Trainer` whose `compute_loss` runs the frozen teacher on each batch.

Distillation is a training-time component: nothing here is saved with the student.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer

from hf_cxr.labels import CHEXPERT_LABELS, FINDING_SYNONYMS
from hf_cxr.losses import MultiLabelBCELoss

TEACHER_OUTPUTS = ("probabilities", "logits", "reference")
DISTILLATION_TYPES = ("soft", "hard")
NO_FINDING = "No Finding"
# The constant target the public code gives labels without a teacher source (their logit set to 0).
REFERENCE_UNMAPPED_TARGET = 0.5


def _normalise(name: str) -> str:
    return " ".join(name.replace("_", " ").split()).lower()


class TeacherOutputAdapter(nn.Module):
    """Teacher probabilities [B, T] in the teacher's label order -> (targets [B, K], mask [K]) for the student.

    Args:
        teacher_labels: the teacher's output names, in its order (e.g. `TORCHXRAYVISION_LABELS`).
        student_labels: the student's findings, in its order (default CheXpert's 14).
        synonyms: teacher name -> student name renamings tried when no student label has the teacher's own name
            (default `FINDING_SYNONYMS`: Effusion -> Pleural Effusion, and Pleural_Thickening -> Pleural Other as a
            documented proxy). Names match case-insensitively, with `_` read as a space.
        no_finding_label: the student's "no finding" label. When the teacher has no output of that name it is
            computed as prod_k (1 - p_k) over the mapped student findings except `no_finding_excludes`.
        no_finding_excludes: mapped labels left out of that product because they are not abnormalities
            (CheXpert marks "No Finding" images that carry support devices).

    `mask[j]` is False for a student label no teacher output supplies; its target is 0 and must be excluded from
    any loss (`MultiLabelDistillationLoss` does).
    """

    def __init__(
        self,
        teacher_labels: Sequence[str],
        student_labels: Sequence[str] = CHEXPERT_LABELS,
        synonyms: Mapping[str, str] = FINDING_SYNONYMS,
        no_finding_label: str = NO_FINDING,
        no_finding_excludes: Sequence[str] = ("Support Devices",),
    ) -> None:
        super().__init__()
        self.teacher_labels = list(teacher_labels)
        self.student_labels = list(student_labels)
        student_index = {_normalise(name): j for j, name in enumerate(self.student_labels)}
        if len(student_index) != len(self.student_labels):
            raise ValueError(f"student labels must be unique, got {self.student_labels}")
        synonym_of = {_normalise(k): _normalise(v) for k, v in synonyms.items()}
        # Exact names first, then synonyms, so a teacher with both "Effusion" and "Pleural Effusion" keeps the latter.
        sources: dict[int, int] = {}
        for use_synonyms in (False, True):
            for i, name in enumerate(self.teacher_labels):
                key = _normalise(name)
                if use_synonyms:
                    if key in student_index or key not in synonym_of:
                        continue
                    key = synonym_of[key]
                j = student_index.get(key)
                if j is None:
                    continue
                if j in sources and not use_synonyms:
                    raise ValueError(f"two teacher outputs are named {self.student_labels[j]!r}")
                sources.setdefault(j, i)
        self.mapping: dict[str, str] = {
            self.student_labels[j]: self.teacher_labels[i] for j, i in sorted(sources.items())
        }

        no_finding = student_index.get(_normalise(no_finding_label))
        excluded = {_normalise(name) for name in no_finding_excludes}
        self.no_finding_index: int | None = None
        findings: list[int] = []
        if no_finding is not None and no_finding not in sources:
            findings = [j for j in sorted(sources) if _normalise(self.student_labels[j]) not in excluded]
            if findings:
                self.no_finding_index = no_finding
                self.mapping[self.student_labels[no_finding]] = "prod(1 - p) over " + ", ".join(
                    self.student_labels[j] for j in findings
                )
        index = torch.full((len(self.student_labels),), -1, dtype=torch.long)
        for j, i in sources.items():
            index[j] = i
        mask = index >= 0
        if self.no_finding_index is not None:
            mask[self.no_finding_index] = True
        self.register_buffer("teacher_index", index, persistent=False)
        self.register_buffer("finding_index", torch.tensor(findings, dtype=torch.long), persistent=False)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, teacher_probabilities: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if teacher_probabilities.ndim != 2 or teacher_probabilities.shape[1] != len(self.teacher_labels):
            raise ValueError(
                f"teacher output must be [batch, {len(self.teacher_labels)}] (one column per teacher label), "
                f"got {tuple(teacher_probabilities.shape)}"
            )
        probabilities = teacher_probabilities.float()
        targets = probabilities.new_zeros(probabilities.shape[0], len(self.student_labels))
        mapped = self.teacher_index >= 0
        targets[:, mapped] = probabilities[:, self.teacher_index[mapped]]
        if self.no_finding_index is not None:
            targets[:, self.no_finding_index] = torch.prod(1 - targets[:, self.finding_index], dim=1)
        return targets, self.mask


class MultiLabelDistillationLoss(nn.Module):
    """(1 - alpha) * L_cls(z_cls, y) + alpha * L_dist(z_dist, t), for multi-label students.

    L_cls is `base_loss` (default: BCE with logits; labels equal to -100 are ignored, the package convention).
    L_dist = sum_{i, j kept} w_j * BCE(z_dist_ij, t_ij) / #kept, where t is the teacher's probability p (`soft`) or
    1[p > 0.5] (`hard`), the kept entries are the labels the teacher supplies, and with `dynamic_weights`
    w_j = 1 - mean_i p_ij over the batch (labels the teacher is confident about weigh less); otherwise w_j = 1.

    Args:
        alpha: the distillation weight in [0, 1] (paper: 0.5).
        distillation_type: `soft` (paper) or `hard`.
        teacher_outputs: what the teacher returns: `probabilities` (default; torchxrayvision models do), `logits`
            (most Hugging Face classifiers: a sigmoid is applied), or `reference`, the public code's behaviour:
            a second sigmoid applied to probabilities (every target lands in [0.5, 0.73]) and labels without a
            teacher source given the constant target 0.5 instead of being masked.
        adapter: maps the teacher's labels to the student's; without one the teacher must already output the
            student's labels in the student's order.
        dynamic_weights: use w_j = 1 - mean_i p_ij (paper) instead of 1.
        base_loss: the ground-truth loss on raw logits and float targets (default `MultiLabelBCELoss`).
    """

    def __init__(
        self,
        alpha: float = 0.5,
        distillation_type: str = "soft",
        teacher_outputs: str = "probabilities",
        adapter: TeacherOutputAdapter | None = None,
        dynamic_weights: bool = True,
        base_loss: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        if distillation_type not in DISTILLATION_TYPES:
            raise ValueError(f"distillation_type must be one of {DISTILLATION_TYPES}, got {distillation_type!r}")
        if teacher_outputs not in TEACHER_OUTPUTS:
            raise ValueError(f"teacher_outputs must be one of {TEACHER_OUTPUTS}, got {teacher_outputs!r}")
        self.alpha = alpha
        self.distillation_type = distillation_type
        self.teacher_outputs = teacher_outputs
        self.adapter = adapter
        self.dynamic_weights = dynamic_weights
        self.base_loss = base_loss if base_loss is not None else MultiLabelBCELoss()

    def teacher_targets(self, teacher_output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(targets [B, K], soft probabilities [B, K], kept-label mask [K]) in the student's label space."""
        values = teacher_output.detach().float()
        if self.teacher_outputs == "logits":
            values = torch.sigmoid(values)
        else:
            if values.numel() and (values.min() < 0 or values.max() > 1):
                raise ValueError(
                    f"teacher_outputs={self.teacher_outputs!r} expects probabilities in [0, 1], got values in "
                    f"[{values.min().item():.3g}, {values.max().item():.3g}]; use teacher_outputs='logits'"
                )
            if self.teacher_outputs == "reference":
                values = torch.sigmoid(values)
        if self.adapter is not None:
            probabilities, mask = self.adapter(values)
        else:
            probabilities, mask = values, torch.ones(values.shape[1], dtype=torch.bool, device=values.device)
        if self.teacher_outputs == "reference":
            probabilities = torch.where(mask, probabilities, torch.full_like(probabilities, REFERENCE_UNMAPPED_TARGET))
            mask = torch.ones_like(mask)
        targets = (probabilities > 0.5).float() if self.distillation_type == "hard" else probabilities
        return targets, probabilities, mask.to(probabilities.device)

    def forward(
        self,
        cls_logits: torch.Tensor,
        labels: torch.Tensor,
        teacher_output: torch.Tensor,
        distillation_logits: torch.Tensor | None = None,
        return_components: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The total loss (and, with `return_components`, its detached parts `cls_loss`/`distillation_loss`).

        `distillation_logits` is the student's distillation head; without one the class head is distilled.
        """
        dist_logits = (distillation_logits if distillation_logits is not None else cls_logits).float()
        if labels.shape != cls_logits.shape:
            raise ValueError(
                f"labels must have the student's shape {tuple(cls_logits.shape)}, got {tuple(labels.shape)}"
            )
        cls_loss = self.base_loss(cls_logits.float(), labels.float())
        targets, probabilities, mask = self.teacher_targets(teacher_output)
        if targets.shape != dist_logits.shape:
            raise ValueError(
                f"teacher targets {tuple(targets.shape)} do not match the student's logits {tuple(dist_logits.shape)}; "
                "pass a TeacherOutputAdapter that maps the teacher's labels to the student's"
            )
        keep = mask.to(dist_logits.dtype).expand_as(dist_logits)
        weights = 1 - probabilities.mean(dim=0) if self.dynamic_weights else torch.ones_like(probabilities[0])
        per_label = F.binary_cross_entropy_with_logits(dist_logits, targets, reduction="none") * weights
        distillation_loss = (per_label * keep).sum() / keep.sum().clamp(min=1)
        loss = (1 - self.alpha) * cls_loss + self.alpha * distillation_loss
        if return_components:
            return loss, {"cls_loss": cls_loss.detach(), "distillation_loss": distillation_loss.detach()}
        return loss


def _teacher_tensor(output: Any) -> torch.Tensor:
    """A teacher's per-label output from a tensor, a `ModelOutput` (its `logits`) or a tuple (its first item)."""
    if isinstance(output, torch.Tensor):
        return output
    if getattr(output, "logits", None) is not None:
        return output.logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"cannot read per-label outputs from a teacher output of type {type(output).__name__}")


class DistillationTrainer(Trainer):
    """`Trainer` that distils a frozen multi-label teacher into the student with `MultiLabelDistillationLoss`.

    The student's training-mode output must carry `cls_logits` and (optionally) `distillation_logits`, as
    `MXAEfficientViTForImageClassification` does; any other classifier is distilled through its `logits`.
    Evaluation scores the student's mean `logits` with the same loss.

    Args:
        teacher: a frozen classifier (`nn.Module` returning a tensor, a tuple or a `ModelOutput` with `logits`);
            it is put in eval mode, its parameters frozen and moved to the training device.
        distillation_loss: the loss, with the `TeacherOutputAdapter` and `teacher_outputs` that fit the teacher.
        teacher_inputs: builds the teacher's input from a batch (e.g. other preprocessing); default: the batch's
            `pixel_values` (the MXA processor's [-1024, 1024] grey pixels are what torchxrayvision teachers expect).
        Every other argument is `Trainer`'s.
    """

    def __init__(
        self,
        *args: Any,
        teacher: nn.Module,
        distillation_loss: MultiLabelDistillationLoss,
        teacher_inputs: Callable[[dict[str, Any]], Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.teacher = teacher.eval().requires_grad_(False).to(self.args.device)
        self.distillation_loss = distillation_loss.to(self.args.device)
        self.teacher_inputs = teacher_inputs
        # The loss is a per-batch mean: Trainer divides it by the gradient-accumulation steps itself.
        self.loss_is_scaled_for_ga = False

    @torch.no_grad()
    def teacher_predictions(self, inputs: dict[str, Any]) -> torch.Tensor:
        """The frozen teacher's per-label outputs for one batch."""
        self.teacher.eval()
        teacher_input = self.teacher_inputs(inputs) if self.teacher_inputs is not None else inputs["pixel_values"]
        if isinstance(teacher_input, Mapping):
            return _teacher_tensor(self.teacher(**teacher_input))
        return _teacher_tensor(self.teacher(teacher_input))

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        if "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs["labels"]
        outputs = model(**{key: value for key, value in inputs.items() if key != "labels"})
        cls_logits = getattr(outputs, "cls_logits", None)
        if cls_logits is None:
            cls_logits = outputs["logits"]
        loss = self.distillation_loss(
            cls_logits,
            labels,
            self.teacher_predictions(inputs),
            distillation_logits=getattr(outputs, "distillation_logits", None),
        )
        return (loss, outputs) if return_outputs else loss


__all__ = [
    "DISTILLATION_TYPES",
    "TEACHER_OUTPUTS",
    "DistillationTrainer",
    "MultiLabelDistillationLoss",
    "TeacherOutputAdapter",
]
