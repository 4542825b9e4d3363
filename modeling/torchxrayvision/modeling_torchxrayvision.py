"""torchxrayvision's chest X-ray classifiers (Cohen et al., MIDL 2022) as Hugging Face models.

The backbone is timm's DenseNet-121 or ResNet-50 on one grey channel, the head one linear layer: the computation
of `torchxrayvision.models.DenseNet` (features, ReLU, global average pooling, linear) and of the torchvision
ResNet-50 inside `torchxrayvision.models.ResNet`. `forward` returns logits: torchxrayvision's pre-sigmoid outputs
for the findings the weight set was trained on. `operating_point_scores` gives torchxrayvision's `op_norm` scores.

Written from torchxrayvision's documented behaviour (https://github.com/mlmed/torchxrayvision, Apache-2.0); no code
was copied.
"""

from __future__ import annotations

from dataclasses import dataclass

import timm
import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .classifier_head import MultiLabelClassifierOutput, MultiLabelHeadMixin
from .configuration_torchxrayvision import TorchXRayVisionConfig
from .pretrained import CXRPreTrainedMixin, mark_as_timm


@dataclass
class TorchXRayVisionModelOutput(ModelOutput):
    """Features of a torchxrayvision classifier.

    Args:
        last_hidden_state (`torch.FloatTensor` [B, C, H/32, W/32]): the backbone's last feature map (DenseNet-121:
            C = 1024 after the final norm and ReLU; ResNet-50: C = 2048, layer4's output).
        pooler_output (`torch.FloatTensor` [B, C]): its global average, the classifier's input.
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None


@dataclass
class TorchXRayVisionImageClassifierOutput(MultiLabelClassifierOutput):
    """Classification output, the multi-label head's fields only: `loss` (*optional*, when `labels` are given) and
    `logits` [B, num_labels], raw (a sigmoid gives torchxrayvision's `apply_sigmoid=True` scores); see
    `MultiLabelClassifierOutput`."""


def operating_point_scores(probabilities: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """torchxrayvision's `op_norm`: probabilities rescaled piecewise-linearly so that each finding's operating point
    maps to 0.5.

    For a probability p and threshold t in (0, 1): p / (2 t) when p < t, else 1 - (1 - p) / (2 (1 - t)); a finding
    whose threshold is NaN (no operating point) scores 0.5 whatever p is, as in torchxrayvision.

    Args:
        probabilities: [B, K] sigmoid scores.
        thresholds: [K] operating points (probabilities), NaN where a finding has none.

    Returns:
        [B, K] scores in [0, 1]; 0.5 is the operating point. Raises `ValueError` when the shapes disagree.
    """
    if probabilities.ndim != 2 or thresholds.shape != probabilities.shape[1:]:
        raise ValueError(
            f"probabilities must be [batch, K] and thresholds [K], got {tuple(probabilities.shape)} and "
            f"{tuple(thresholds.shape)}"
        )
    thresholds = thresholds.to(probabilities.device, probabilities.dtype).expand_as(probabilities)
    known = ~torch.isnan(thresholds)
    safe = torch.where(known, thresholds, torch.full_like(thresholds, 0.5))
    below = probabilities / (2 * safe)
    above = 1 - (1 - probabilities) / (2 * (1 - safe))
    scores = torch.where(probabilities < safe, below, above)
    return torch.where(known, scores, torch.full_like(scores, 0.5))


class TorchXRayVisionPreTrainedModel(CXRPreTrainedMixin, PreTrainedModel):
    config_class = TorchXRayVisionConfig
    config: TorchXRayVisionConfig
    base_model_prefix = "torchxrayvision"
    _no_split_modules = ["TorchXRayVisionModel"]


class TorchXRayVisionModel(TorchXRayVisionPreTrainedModel):
    """The timm backbone without its classifier: the last feature map and its global average.

    `feature_map` is an identity module applied to the last map, so that one module name
    (`torchxrayvision.feature_map` in the task model) addresses it for Grad-CAM whatever the backbone.
    """

    def __init__(self, config: TorchXRayVisionConfig) -> None:
        super().__init__(config)
        self.backbone = mark_as_timm(
            timm.create_model(
                config.architecture,
                pretrained=False,
                num_classes=0,
                in_chans=config.num_channels,
                **config.backbone_kwargs,
            )
        )
        self.feature_map = nn.Identity()
        self.post_init()

    @property
    def num_features(self) -> int:
        """Channels of the pooled vector (DenseNet-121: 1024, ResNet-50: 2048)."""
        return int(self.backbone.num_features)

    def forward(
        self, pixel_values: torch.Tensor, return_dict: bool | None = None, **kwargs
    ) -> TorchXRayVisionModelOutput | tuple:
        """The backbone's last feature map and its global average for a batch of radiographs.

        Args:
            pixel_values (`torch.FloatTensor` [batch, num_channels, image_size, image_size]): radiographs as the
                image processor gives them (one grey channel, centre-cropped and resized, intensities in
                [-1024, 1024]).
            return_dict (`bool`, *optional*, defaults to `config.return_dict`): a `TorchXRayVisionModelOutput`, or
                else the tuple (last_hidden_state, pooler_output).
            kwargs: accepted and ignored (extra batch keys from `Trainer` or a pipeline).

        Returns:
            `TorchXRayVisionModelOutput`: `last_hidden_state` [batch, C, h, w] (C = 1024 for DenseNet-121, 2048 for
            ResNet-50; h, w = image_size / 32) and `pooler_output` [batch, C].

        Raises:
            `ValueError`: if `pixel_values` is not a tensor of shape [batch, num_channels, image_size, image_size]
                (`check_pixel_values`).
        """
        self.check_pixel_values(pixel_values)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        feature_map = self.feature_map(self.backbone.forward_features(pixel_values))
        pooled = self.backbone.forward_head(feature_map, pre_logits=True)
        output = TorchXRayVisionModelOutput(last_hidden_state=feature_map, pooler_output=pooled)
        return output if return_dict else output.to_tuple()


class TorchXRayVisionForImageClassification(MultiLabelHeadMixin, TorchXRayVisionPreTrainedModel):
    """A torchxrayvision classifier with its multi-label head (`MultiLabelHeadMixin.forward`): logits, and the loss
    when `labels` are given. The logits are torchxrayvision's pre-sigmoid outputs; `operating_point_scores` turns
    them into its `op_norm` scores."""

    output_class = TorchXRayVisionImageClassifierOutput

    def __init__(self, config: TorchXRayVisionConfig) -> None:
        super().__init__(config)
        self.torchxrayvision = TorchXRayVisionModel(config)
        self.add_multilabel_head(self.torchxrayvision.num_features)
        self.post_init()

    def operating_point_scores(self, logits: torch.Tensor) -> torch.Tensor:
        """torchxrayvision's calibrated outputs (`op_norm`, what its models return when `op_threshs` is set) from
        this model's logits [B, num_labels]: `operating_point_scores(sigmoid(logits), thresholds)` with
        `config.decision_thresholds` as the thresholds (NaN, hence a constant 0.5, for a finding without one)."""
        stored = self.config.decision_thresholds or {}
        thresholds = torch.tensor(
            [float(stored.get(self.config.id2label[index], float("nan"))) for index in range(self.config.num_labels)],
            dtype=torch.float32,
        )
        return operating_point_scores(torch.sigmoid(logits.float()), thresholds)


__all__ = [
    "TorchXRayVisionForImageClassification",
    "TorchXRayVisionModel",
    "TorchXRayVisionPreTrainedModel",
    "operating_point_scores",
]
