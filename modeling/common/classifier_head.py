"""The multi-label head of the 2D classifiers that classify one pooled vector (CR-MSNet, MA-MSF, torchxrayvision):
dropout, one linear layer and the configured loss, the output fields it fills (`loss`, `logits`), and the one
`forward` these classifiers share (as transformers' generic task heads, e.g. `GenericForSequenceClassification`,
serve every decoder)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

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
    vector, and the classifier's `forward`.

    The head's modules carry the names saved checkpoints use: `dropout`, `classifier` (`classifier.weight`,
    `classifier.bias`) and `criterion` (its class weights, if any, are not saved: they come from the config). The
    base model is the module named `base_model_prefix` (`PreTrainedModel.base_model`).
    """

    # The architecture's `*ImageClassifierOutput`: `loss` and `logits`, then the base model's outputs it passes on
    # (each a field of the same name in the base model's output, e.g. CR-MSNet's `gate`).
    output_class: ClassVar[type[MultiLabelClassifierOutput]]

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

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> MultiLabelClassifierOutput | tuple:
        """Classify a batch of radiographs: one logit per finding, and the loss when `labels` are given.

        Args:
            pixel_values (`torch.FloatTensor` [batch, num_channels, image_size, image_size]): radiographs as the
                model's image processor gives them (see the base model's `forward`).
            labels (`torch.FloatTensor` [batch, num_labels], *optional*): multi-hot targets in [0, 1], one column
                per finding in `config.id2label` order; an entry equal to -100 is left out of the loss.
            return_dict (`bool`, *optional*, defaults to `config.return_dict`): the architecture's
                `output_class`, or else the tuple of its non-None fields in field order.
            kwargs: passed on to the base model's `forward` (CR-MSNet's `output_attentions`); a key it does not
                take (an extra batch column from `Trainer` or a pipeline) is ignored there.

        Returns:
            `output_class` (a `MultiLabelClassifierOutput`): `logits` [batch, num_labels], raw (a sigmoid gives
            per-finding probabilities); `loss`, a scalar (the configured `config.loss`, computed in float32), when
            `labels` are given; then the base model's outputs the architecture passes on (CR-MSNet: `gate`
            [batch, fusion_dim] and, with `output_attentions`, `cross_attentions`).

        Raises:
            `ValueError`: if `pixel_values` is not of shape [batch, num_channels, image_size, image_size]
                (`check_pixel_values`), or if `labels` is not of shape [batch, num_labels].
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        features = self.base_model(pixel_values, return_dict=True, **kwargs)
        logits, loss = self.classify(features.pooler_output, labels)
        passed_on = {
            field.name: getattr(features, field.name)
            for field in fields(self.output_class)
            if field.name not in ("loss", "logits")
        }
        output = self.output_class(loss=loss, logits=logits, **passed_on)
        return output if return_dict else output.to_tuple()
