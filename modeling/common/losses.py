"""Multi-label losses for imbalanced chest findings, shared by the 2D models and the training scripts.

Every loss takes raw logits [B, K] and float targets [B, K] in [0, 1]; a target equal to `IGNORE_LABEL`
(-100, the transformers convention) is left out of the loss, which is how CheXpert's "uncertain, ignore"
labels and a teacher's missing findings are skipped. The mean is over the labels that are kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_LABEL = -100.0
LOSS_TYPES = ("bce", "focal", "class_balanced_focal", "asymmetric")
CLASS_BALANCE_MODES = ("effective_number", "inverse_frequency")


def _masked_mean(per_label: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    kept = keep.sum()
    return (per_label * keep).sum() / kept.clamp(min=1)


def _split_targets(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets with ignored entries zeroed, float mask of kept entries)."""
    keep = (targets != IGNORE_LABEL).to(targets.dtype)
    return targets * keep, keep


def class_balance_weights(
    positive_counts: Sequence[float], num_samples: int, mode: str = "effective_number", beta: float = 0.9999
) -> torch.Tensor:
    """Per-class weights that grow as a finding gets rarer, normalised to mean 1.

    `effective_number` is Cui et al. (CVPR 2019): w_c = (1 - beta) / (1 - beta^n_c).
    `inverse_frequency` is (N / n_c)^beta with beta typically 0.5. Raises `ValueError` for another `mode`, and
    for `effective_number` with `beta` outside [0, 1).
    """
    # On the CPU explicitly: a model built on the meta device (as `from_pretrained` does) still gets real values.
    counts = torch.tensor([max(float(c), 1.0) for c in positive_counts], dtype=torch.float64, device="cpu")
    if mode == "effective_number":
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"class_balance_beta must lie in [0, 1) for effective_number, got {beta}")
        weights = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64, device="cpu"), counts))
    elif mode == "inverse_frequency":
        weights = torch.pow(float(num_samples) / counts, beta)
    else:
        raise ValueError(f"class_balance_mode must be 'effective_number' or 'inverse_frequency', got {mode!r}")
    return (weights / weights.mean()).to(torch.float32)


class ClassWeightedLoss(nn.Module):
    """A loss with optional per-class weights, kept as a non-persistent buffer `class_weights` [K].

    The weights are derived from the config (`class_positive_counts`, ...), so they are not saved with the model's
    weights; `from_pretrained` builds the model on the meta device and leaves such buffers uninitialised, and the
    model's `_init_weights` calls `init_non_persistent_buffers()` to write the values given here back.
    """

    def __init__(self, class_weights: Sequence[float] | torch.Tensor | None = None) -> None:
        super().__init__()
        if isinstance(class_weights, torch.Tensor):
            class_weights = class_weights.detach().to("cpu", torch.float32).tolist()
        self.class_weight_values = tuple(float(w) for w in class_weights) if class_weights is not None else None
        weights = torch.tensor(self.class_weight_values) if self.class_weight_values is not None else None
        self.register_buffer("class_weights", weights, persistent=False)

    @torch.no_grad()
    def init_non_persistent_buffers(self) -> None:
        """Rewrite `class_weights` from the values given at construction (after meta-device initialisation)."""
        if self.class_weights is not None:
            values = torch.tensor(self.class_weight_values, dtype=self.class_weights.dtype, device="cpu")
            self.class_weights.copy_(values)


class MultiLabelBCELoss(ClassWeightedLoss):
    """Binary cross-entropy on logits, optionally with one weight per class."""

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets, keep = _split_targets(targets.to(logits.dtype))
        per_label = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        if self.class_weights is not None:
            per_label = per_label * self.class_weights
        return _masked_mean(per_label, keep)


class FocalLoss(MultiLabelBCELoss):
    """Focal loss (Lin et al. 2017): BCE scaled by (1 - p_t)^gamma to concentrate on hard examples.

    With `class_weights` it is the class-balanced focal loss of Cui et al.
    """

    def __init__(self, gamma: float = 2.0, class_weights: Sequence[float] | torch.Tensor | None = None) -> None:
        super().__init__(class_weights)
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets, keep = _split_targets(targets.to(logits.dtype))
        bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        probs = torch.sigmoid(logits)
        p_t = probs * targets + (1 - probs) * (1 - targets)
        per_label = (1 - p_t).pow(self.gamma) * bce
        if self.class_weights is not None:
            per_label = per_label * self.class_weights
        return _masked_mean(per_label, keep)


class AsymmetricLoss(nn.Module):
    """Asymmetric loss (Ridnik et al., ICCV 2021) for many-negative multi-label data.

    Negatives are focused harder (gamma_neg > gamma_pos) and easy negatives with p < clip are discarded by
    shifting their probability down by `clip`.
    """

    def __init__(self, gamma_pos: float = 0.0, gamma_neg: float = 4.0, clip: float = 0.05) -> None:
        super().__init__()
        self.gamma_pos, self.gamma_neg, self.clip = gamma_pos, gamma_neg, clip

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets, keep = _split_targets(targets.to(logits.dtype))
        probs = torch.sigmoid(logits)
        probs_neg = (probs - self.clip).clamp(min=0) if self.clip > 0 else probs
        # log(p) and log(1 - p_shifted), written with logsigmoid where possible for stability.
        log_pos = F.logsigmoid(logits)
        log_neg = torch.log((1 - probs_neg).clamp(min=1e-8))
        loss_pos = targets * (1 - probs).pow(self.gamma_pos) * log_pos
        loss_neg = (1 - targets) * probs_neg.pow(self.gamma_neg) * log_neg
        return _masked_mean(-(loss_pos + loss_neg), keep)


@dataclass
class LossSettings:
    """The config fields that choose a model's loss, each None when left as the config has it.

    `build_loss_from_config` and `build_single_label_loss_from_config` read these fields of a model config; a training
    recipe's curriculum stage sets the ones it gives (`LossSettings.given`) on the model's config before the stage.
    """

    loss: Literal["bce", "focal", "class_balanced_focal", "asymmetric", "cross_entropy"] | None = None
    """The loss: a multi-label one (`LOSS_TYPES`) or, for a single-label model, one of `SINGLE_LABEL_LOSS_TYPES`."""
    focal_gamma: float | None = None
    """Focusing parameter of the focal losses."""
    class_balance_mode: Literal["effective_number", "inverse_frequency"] | None = None
    """How `class_balanced_focal` weighs the classes (`class_balance_weights`)."""
    class_balance_beta: float | None = None
    """Beta of that class-balance rule."""
    asymmetric_gamma_pos: float | None = None
    """The asymmetric loss's focusing parameter on positives (Ridnik et al., ICCV 2021)."""
    asymmetric_gamma_neg: float | None = None
    """Its focusing parameter on negatives."""
    asymmetric_clip: float | None = None
    """Its probability margin on negatives."""

    def given(self) -> dict[str, Any]:
        """The fields that are set (not None), by name."""
        return {name: getattr(self, name) for name in LOSS_SETTING_FIELDS if getattr(self, name) is not None}


# The names of the loss fields of a model config, in `LossSettings` order.
LOSS_SETTING_FIELDS = tuple(item.name for item in fields(LossSettings))


def _class_balance_weights_of(config: Any, needs: str) -> torch.Tensor:
    """`class_balance_weights` of a config's training-split counts, for its `class_balanced_focal` loss; raises
    `ValueError` saying what it `needs` when the config lacks them, and as `class_balance_weights` does."""
    if not config.class_positive_counts or not config.num_train_samples:
        raise ValueError(f"loss 'class_balanced_focal' needs {needs}; set them from the dataset")
    return class_balance_weights(
        config.class_positive_counts,
        config.num_train_samples,
        mode=config.class_balance_mode,
        beta=config.class_balance_beta,
    )


def build_loss_from_config(config: Any) -> nn.Module:
    """The multi-label loss `config.loss` names, with the config's loss fields (`CXRClassifierConfig` documents them
    and holds their defaults); `class_balanced_focal` needs the training split's positive counts.

    Raises `ValueError` for a `config.loss` not in `LOSS_TYPES`, for `class_balanced_focal` without
    `class_positive_counts` and `num_train_samples`, and as `class_balance_weights` does for its mode and beta.
    """
    if config.loss == "bce":
        return MultiLabelBCELoss()
    if config.loss == "focal":
        return FocalLoss(gamma=config.focal_gamma)
    if config.loss == "class_balanced_focal":
        needs = (
            "config.class_positive_counts and config.num_train_samples (the training split's positives per finding "
            "and its size)"
        )
        return FocalLoss(gamma=config.focal_gamma, class_weights=_class_balance_weights_of(config, needs))
    if config.loss == "asymmetric":
        return AsymmetricLoss(config.asymmetric_gamma_pos, config.asymmetric_gamma_neg, config.asymmetric_clip)
    raise ValueError(f"loss must be one of {LOSS_TYPES}, got {config.loss!r}")


# ------------------------------------------------------------------------------------ single-label (softmax)

SINGLE_LABEL_LOSS_TYPES = ("cross_entropy", "focal", "class_balanced_focal")


class SoftmaxFocalLoss(ClassWeightedLoss):
    """Single-label focal loss on a softmax: -alpha_y (1 - p_y)^gamma log p_y, mean over kept samples.

    For mutually exclusive classes (e.g. lung cancer histology) where the multi-label losses above do not apply.
    `gamma = 0` without `class_weights` is cross-entropy. Logits [B, K], integer targets [B]; a target equal to
    `IGNORE_LABEL` is left out.
    """

    def __init__(self, gamma: float = 2.0, class_weights: Sequence[float] | torch.Tensor | None = None) -> None:
        super().__init__(class_weights)
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = targets.long()
        keep = targets != int(IGNORE_LABEL)
        safe_targets = torch.where(keep, targets, torch.zeros_like(targets))
        log_p = F.log_softmax(logits, dim=-1).gather(1, safe_targets[:, None])[:, 0]  # [B]
        per_sample = -(1 - log_p.exp()).pow(self.gamma) * log_p
        if self.class_weights is not None:
            per_sample = per_sample * self.class_weights.to(per_sample.dtype)[safe_targets]
        return _masked_mean(per_sample, keep.to(per_sample.dtype))


def build_single_label_loss_from_config(config: Any) -> nn.Module:
    """The softmax loss a single-label config names: `cross_entropy`, `focal` or `class_balanced_focal`.

    `class_balanced_focal` weights each class by `class_balance_weights` of its training-split count
    (`config.class_positive_counts`, one count per class). Raises `ValueError` for another `config.loss`, for
    `class_balanced_focal` without `class_positive_counts` and `num_train_samples`, and as `class_balance_weights`
    does for its mode and beta.
    """
    if config.loss == "cross_entropy":
        return SoftmaxFocalLoss(gamma=0.0)
    if config.loss == "focal":
        return SoftmaxFocalLoss(gamma=config.focal_gamma)
    if config.loss == "class_balanced_focal":
        needs = "config.class_positive_counts (training samples per class) and config.num_train_samples"
        return SoftmaxFocalLoss(gamma=config.focal_gamma, class_weights=_class_balance_weights_of(config, needs))
    raise ValueError(f"single-label loss must be one of {SINGLE_LABEL_LOSS_TYPES}, got {config.loss!r}")
