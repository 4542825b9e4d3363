"""The multi-label head of the 2D classifiers that classify one pooled vector (CR-MSNet, MA-MSF, torchxrayvision):
dropout, one linear layer and the configured loss, and the output fields it fills (`loss`, `logits`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import ModelOutput

from .losses import build_loss_from_config


@dataclass
class MultiLabelClassifierOutput(ModelOutput):
    """What the multi-label head gives: raw logits (apply a sigmoid for per-finding probabilities) and the loss.

    The `*ImageClassifierOutput` of each architecture with this head subclasses it (its own fields, if any, come
    after these two).

    Args:
        loss (`torch.FloatTensor`, *optional*): the configured multi-label loss, when `labels` are given.
        logits (`torch.FloatTensor` [B, num_labels]): one logit per finding.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None


class MultiLabelHeadMixin:
    """Mixed into an architecture's `*ForImageClassification` (before its `PreTrainedModel` subclass, whose
    `CXRPreTrainedMixin.multilabel_loss` computes the loss): a linear multi-label head on the base model's pooled
    vector.

    The head's modules carry the names saved checkpoints use: `dropout`, `classifier` (`classifier.weight`,
    `classifier.bias`) and `criterion` (its class weights, if any, are not saved: they come from the config).
    """

    def add_multilabel_head(self, in_features: int) -> None:
        """Add `dropout` (`config.classifier_dropout`), `classifier` (Linear in_features -> `config.num_labels`) and
        `criterion` (the loss `config.loss` names). Call it in `__init__` after building the base model and before
        `post_init()`. Raises `ValueError` as `build_loss_from_config` does."""
        self.dropout = nn.Dropout(self.config.classifier_dropout)
        self.classifier = nn.Linear(in_features, self.config.num_labels)
        self.criterion = build_loss_from_config(self.config)

    def classify(
        self, pooled: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits [B, num_labels], loss) of the pooled vector [B, in_features]: the loss is `multilabel_loss` of
        `labels` [B, num_labels] when they are given, else None. Raises `ValueError` when `labels` is not of the
        logits' shape."""
        logits = self.classifier(self.dropout(pooled))
        loss = self.multilabel_loss(logits, labels) if labels is not None else None
        return logits, loss
