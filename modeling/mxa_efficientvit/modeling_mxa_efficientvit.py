"""MXA-EfficientViT: EfficientViT (MSRA) with the Medical X-ray Attention block and a distillation head.

The backbone is timm's `efficientvit_m0..m5` (cascaded group attention in local windows). In every attention
block the MXA block runs beside the local-window attention (LWA): a small convolutional ROI predictor proposes
one box per image, the box is pooled back to the full map size, and CBAM channel-then-spatial attention
refines it. Written from the paper's description (the authors' code has no licence); the places where the paper
and its code disagree are `MXAEfficientViTConfig` fields (`mxa_fusion`, `roi_pooling`).

PEFT: good LoRA `target_modules` are the attention convolutions `qkvs.0.conv` .. `qkvs.3.conv` (per-head
query/key/value, 1x1 `nn.Conv2d`) and `proj.1.conv` (attention output), optionally the feed-forward 1x1 convs
`pw1.conv` / `pw2.conv` and the MXA layers `roi_predictor.conv`, `roi_predictor.box`, `channel_attention.fc1`,
`channel_attention.fc2`; put `classifier` (both heads) in `modules_to_save`. BatchNorm running statistics are not
part of a LoRA adapter: add the norms to `modules_to_save` when adapting to a new domain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from timm.models.efficientvit_msra import NormLinear
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .backbone_weights import create_backbone, loading_saved_weights
from .configuration_mxa_efficientvit import MXAEfficientViTConfig
from .layers import ChannelAttention, SpatialAttention
from .losses import build_loss_from_config
from .pretrained import CXRPreTrainedMixin, mark_as_timm


@dataclass
class MXAEfficientViTModelOutput(ModelOutput):
    """Features of MXA-EfficientViT.

    Args:
        pooler_output (`torch.FloatTensor` [B, embed_dim[-1]]): globally average-pooled last feature map.
        last_hidden_state (`torch.FloatTensor` [B, embed_dim[-1], h, w]): the last stage's feature map.
        hidden_states (`tuple[torch.FloatTensor]`, *optional*): each stage's output map, with
            `output_hidden_states=True`.
        roi_boxes (`tuple[torch.FloatTensor]`, *optional*): with `output_attentions=True` and `use_mxa`, the box
            each MXA block pooled, one [B, 4] tensor per attention block in network order, as normalised
            (x1, y1, x2, y2) with 0 <= x1 <= x2 <= 1 and 0 <= y1 <= y2 <= 1 over that block's feature map (which
            spans the whole image, so the same numbers locate the box on the input). Detached: for drawing.
    """

    pooler_output: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    roi_boxes: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class MXAEfficientViTImageClassifierOutput(ModelOutput):
    """Classification output: raw logits (apply a sigmoid for per-finding probabilities).

    Args:
        loss (`torch.FloatTensor`, *optional*): the configured label loss when `labels` are given; in training
            with a distillation head, the mean of both heads' losses (so each head learns the labels on its own).
        logits (`torch.FloatTensor` [B, num_labels]): the mean of the two heads' logits (the single head's without
            `distillation_head`), in training and in eval alike, so `pipeline` and `Trainer` can always use it.
        cls_logits (`torch.FloatTensor` [B, num_labels], *optional*): the class head's logits; training mode only.
        distillation_logits (`torch.FloatTensor` [B, num_labels], *optional*): the distillation head's logits;
            training mode with `distillation_head` only. `hf_cxr.distillation` trains it towards the teacher.
        roi_boxes (`tuple[torch.FloatTensor]`, *optional*): see `MXAEfficientViTModelOutput`.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cls_logits: torch.FloatTensor | None = None
    distillation_logits: torch.FloatTensor | None = None
    roi_boxes: tuple[torch.FloatTensor, ...] | None = None


def bilinear_roi_pool(features: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Sample each image's box (x1, y1, x2, y2 in [0, 1], ordered) back onto the full H x W grid.

    One bilinear sample at the centre of every output cell (RoIAlign with one sample per bin), written with
    `affine_grid`/`grid_sample` so gradients reach the box coordinates. [B, C, H, W], [B, 4] -> [B, C, H, W].
    It runs in float32 whatever the autocast: CUDA has no bfloat16 kernel for part of its backward pass.
    """
    with torch.autocast(features.device.type, enabled=False):
        x1, y1, x2, y2 = boxes.float().unbind(dim=-1)
        zero = torch.zeros_like(x1)
        # Output coordinate u in [-1, 1] maps to x1..x2 in the [-1, 1] frame of grid_sample: x = (x2-x1) u + (x1+x2-1).
        theta = torch.stack(
            [torch.stack([x2 - x1, zero, x1 + x2 - 1], dim=-1), torch.stack([zero, y2 - y1, y1 + y2 - 1], dim=-1)],
            dim=1,
        )
        grid = F.affine_grid(theta, list(features.shape), align_corners=False)
        pooled = F.grid_sample(features.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return pooled.to(features.dtype)


def integer_roi_crop(features: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The public code's pooling: truncate the box to pixel indices, crop, resize bilinearly to H x W.

    Integer indices carry no gradient, so the ROI predictor is never trained. x2 (y2) is kept at least one
    pixel past x1 (y1). Returns the pooled map and the box actually cropped, normalised.
    """
    batch, _, height, width = features.shape
    scale = torch.tensor([width, height, width, height], device=boxes.device, dtype=boxes.dtype)
    pooled, cropped = [], []
    for index, (x1, y1, x2, y2) in enumerate((boxes.detach() * scale).long().tolist()):
        x1, y1 = min(max(x1, 0), width - 1), min(max(y1, 0), height - 1)
        x2, y2 = min(max(x2, x1 + 1), width), min(max(y2, y1 + 1), height)
        crop = features[index : index + 1, :, y1:y2, x1:x2]
        pooled.append(F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False))
        cropped.append([x1 / width, y1 / height, x2 / width, y2 / height])
    return torch.cat(pooled), torch.tensor(cropped, device=boxes.device, dtype=boxes.dtype).view(batch, 4)


class ROIPredictor(nn.Module):
    """conv3x3 C -> C/2, ReLU, conv1x1 -> 4, sigmoid, spatial mean: one box (x1, y1, x2, y2) in [0, 1] per image.

    The corners are not ordered here; the pooling step orders them. [B, C, H, W] -> [B, 4].
    """

    def __init__(self, channels: int, initial_logits: list[float] | None) -> None:
        super().__init__()
        hidden = max(channels // 2, 1)
        self.conv = nn.Conv2d(channels, hidden, kernel_size=3, padding=1)
        self.act = nn.ReLU()
        self.box = nn.Conv2d(hidden, 4, kernel_size=1)
        # Read by `_init_weights`: the bias that makes the initial box `config.roi_initial_box`.
        self.box.initial_bias = initial_logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, H, W] -> box corners [B, 4] in (0, 1), unordered: the per-position sigmoid outputs averaged."""
        return torch.sigmoid(self.box(self.act(self.conv(x)))).mean(dim=(2, 3))


class MXABlock(nn.Module):
    """Medical X-ray Attention: ROI prediction, dynamic ROI pooling, CBAM channel then spatial attention.

    [B, C, H, W] -> [B, C, H, W]. The pooled box of the latest forward is kept in `last_roi_boxes` (detached) so
    the model can return it without threading it through timm's sequential stages.
    """

    def __init__(
        self,
        channels: int,
        reduction: int,
        spatial_kernel_size: int,
        roi_pooling: str,
        initial_logits: list[float] | None,
    ) -> None:
        super().__init__()
        self.roi_pooling = roi_pooling
        self.roi_predictor = ROIPredictor(channels, initial_logits)
        self.channel_attention = ChannelAttention(channels, reduction)
        self.spatial_attention = SpatialAttention((spatial_kernel_size,))
        self.last_roi_boxes: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, H, W] -> [B, C, H, W]: the predicted box pooled back onto the H x W grid, then reweighted by
        channel ([B, C, 1, 1]) and spatial ([B, 1, H, W]) attention; the box [B, 4] goes to `last_roi_boxes`."""
        corners = self.roi_predictor(x)  # [B, 4], unordered
        if self.roi_pooling == "differentiable":
            x1, y1, x2, y2 = corners.unbind(dim=-1)
            boxes = torch.stack(
                [torch.minimum(x1, x2), torch.minimum(y1, y2), torch.maximum(x1, x2), torch.maximum(y1, y2)], dim=-1
            )
            pooled = bilinear_roi_pool(x, boxes)
        else:
            pooled, boxes = integer_roi_crop(x, corners)
        self.last_roi_boxes = boxes.detach()
        refined = pooled * self.channel_attention(pooled)
        return refined * self.spatial_attention(refined)


def _logit(probability: float) -> float:
    return math.log(probability / (1.0 - probability))


class MXAMixer(nn.Module):
    """Replaces an EfficientViT block's residual token mixer: local-window attention and MXA side by side.

    The timm attention stays at `.m` so its parameter names (`mixer.m.attn.*`) are timm's; see
    `MXAEfficientViTConfig.mxa_fusion` for the three fusions.
    """

    def __init__(self, attention: nn.Module, mxa: MXABlock, fusion: str, alpha_init: float) -> None:
        super().__init__()
        self.m = attention
        self.mxa = mxa
        self.fusion = fusion
        self.alpha_init = alpha_init
        if fusion == "alpha":
            self.alpha_logit = nn.Parameter(torch.full((1,), _logit(alpha_init)))

    def set_input_size(self, resolution: int) -> None:
        self.m.set_input_size(resolution)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, C, H, W], the residual included (`parallel`: x + LWA(x) + MXA(x))."""
        if self.fusion == "parallel":
            return x + self.m(x) + self.mxa(x)
        if self.fusion == "alpha":
            alpha = torch.sigmoid(self.alpha_logit).to(x.dtype)
            return x + (1 - alpha) * self.m(x) + alpha * self.mxa(x)
        fused = (x + self.m(x)) + (x + self.mxa(x))
        return fused + self.m(fused)


class MXAEfficientViTHeads(nn.Module):
    """`head` and (optionally) `head_dist`: timm's BatchNorm + Linear classifier, twice. [B, D] -> 2 x [B, K]."""

    def __init__(self, in_features: int, num_labels: int, dropout: float, distillation_head: bool) -> None:
        super().__init__()
        self.head = NormLinear(in_features, num_labels, drop=dropout)
        self.head_dist = NormLinear(in_features, num_labels, drop=dropout) if distillation_head else None

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """pooled [B, D] -> (class logits [B, K], distillation logits [B, K], or None without `head_dist`)."""
        return self.head(pooled), (self.head_dist(pooled) if self.head_dist is not None else None)


class MXAEfficientViTPreTrainedModel(CXRPreTrainedMixin, PreTrainedModel):
    config_class = MXAEfficientViTConfig
    config: MXAEfficientViTConfig
    base_model_prefix = "mxa_efficientvit"
    _no_split_modules = ["MXAEfficientViTModel"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        initial_bias = getattr(module, "initial_bias", False)
        if initial_bias is not False:
            # The ROI predictor's box layer: small weights and a bias that puts the initial box at
            # `config.roi_initial_box` (a fan-out init of a 4-channel conv would make it jump from image to image).
            init.trunc_normal_(module.weight, std=self.config.initializer_range)
            if initial_bias is None:
                init.zeros_(module.bias)
            else:
                init.copy_(module.bias, torch.tensor(initial_bias, dtype=module.bias.dtype))
        elif isinstance(module, MXAMixer) and module.fusion == "alpha":
            init.constant_(module.alpha_logit, _logit(module.alpha_init))

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
        # The backbone is built without `config.backbone_weights`: its values are in the saved file.
        with loading_saved_weights():
            return super().from_pretrained(*args, **kwargs)


class MXAEfficientViTModel(MXAEfficientViTPreTrainedModel):
    """The EfficientViT backbone with MXA in every attention block; returns the pooled image vector."""

    # Loading the features-only model from a classifier checkpoint: the heads are expected to be left behind.
    _keys_to_ignore_on_load_unexpected = [r"^classifier\."]

    def __init__(self, config: MXAEfficientViTConfig) -> None:
        super().__init__(config)
        # With `config.backbone_weights`, timm loads them into its own EfficientViT here, before the MXA blocks are
        # inserted around its attention (never when `from_pretrained` builds the model).
        self.backbone = mark_as_timm(
            create_backbone(
                f"efficientvit_{config.variant}",
                config.backbone_weights,
                "MXAEfficientViTConfig.backbone_weights",
                "MXAEfficientViTConfig.embed_dim/depth/num_heads/kernels/key_dim",
                num_classes=0,
                in_chans=config.num_channels,
                img_size=config.image_size,
                embed_dim=tuple(config.embed_dim),
                depth=tuple(config.depth),
                num_heads=tuple(config.num_heads),
                kernels=tuple(config.kernels),
                key_dim=(config.key_dim,) * 3,
                window_size=(config.window_size,) * 3,
            )
        )
        if config.use_mxa:
            for stage, width in zip(self.backbone.stages, config.embed_dim, strict=True):
                for block in stage.blocks:
                    mxa = MXABlock(
                        width,
                        config.mxa_channel_reduction,
                        config.mxa_spatial_kernel_size,
                        config.roi_pooling,
                        config.roi_initial_logits,
                    )
                    block.mixer = MXAMixer(block.mixer.m, mxa, config.mxa_fusion, config.mxa_alpha_init)
        self.num_features = self.backbone.num_features
        self.post_init()

    @property
    def mxa_blocks(self) -> list[MXABlock]:
        """The MXA blocks in network order (stage by stage, block by block)."""
        return [module for module in self.backbone.modules() if isinstance(module, MXABlock)]

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MXAEfficientViTModelOutput | tuple:
        """Encode a batch of radiographs with the EfficientViT backbone (MXA in every attention block).

        Args:
            pixel_values (`torch.FloatTensor` [batch, num_channels, image_size, image_size]): radiographs as the
                image processor gives them (one grey channel by default, resized, intensities scaled to
                [-1024, 1024]).
            output_attentions (`bool`, *optional*, defaults to `False`; `config.output_attentions` is not read):
                with `config.use_mxa`, also return the box each MXA block pooled (`roi_boxes`).
            output_hidden_states (`bool`, *optional*, defaults to `False`; `config.output_hidden_states` is not
                read): also return each stage's output map (`hidden_states`).
            return_dict (`bool`, *optional*, defaults to `config.return_dict`): a `MXAEfficientViTModelOutput`, or
                else the tuple of its non-None fields in field order.
            kwargs: accepted and ignored (extra batch keys from `Trainer` or a pipeline).

        Returns:
            `MXAEfficientViTModelOutput`: `pooler_output` [batch, embed_dim[-1]], `last_hidden_state` [batch,
            embed_dim[-1], h, w]; with `output_hidden_states`, `hidden_states` (one [batch, embed_dim[i], h_i, w_i]
            map per stage); with `output_attentions` and `use_mxa`, `roi_boxes` (one [batch, 4] tensor per
            attention block).

        Raises:
            `ValueError`: if `pixel_values` is not a tensor of shape [batch, num_channels, image_size, image_size]
                (`check_pixel_values`), or if the model is in training mode and the batch holds one image
                (EfficientViT's BatchNorm layers need at least 2 to train; call `model.eval()` for inference).
        """
        self.check_pixel_values(pixel_values)
        if self.training and pixel_values.shape[0] < 2:
            raise ValueError(
                "pixel_values holds one image but the model is in training mode: EfficientViT's BatchNorm layers "
                "need a batch of at least 2 to train; call model.eval() for inference"
            )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        last, stages = self.backbone.forward_intermediates(pixel_values)
        pooled = self.backbone.forward_head(last, pre_logits=True)
        roi_boxes = None
        if output_attentions and self.config.use_mxa:
            roi_boxes = tuple(block.last_roi_boxes for block in self.mxa_blocks)
        output = MXAEfficientViTModelOutput(
            pooler_output=pooled,
            last_hidden_state=last,
            hidden_states=tuple(stages) if output_hidden_states else None,
            roi_boxes=roi_boxes,
        )
        return output if return_dict else output.to_tuple()


class MXAEfficientViTForImageClassification(MXAEfficientViTPreTrainedModel):
    """MXA-EfficientViT with its class and distillation heads; returns logits, and the loss when `labels` are given.

    Training mode also returns each head's logits (`cls_logits`, `distillation_logits`) for
    `hf_cxr.distillation`; eval mode returns only their mean, as DeiT-style distilled models do at inference.
    """

    def __init__(self, config: MXAEfficientViTConfig) -> None:
        super().__init__(config)
        self.mxa_efficientvit = MXAEfficientViTModel(config)
        self.classifier = mark_as_timm(
            MXAEfficientViTHeads(
                self.mxa_efficientvit.num_features,
                config.num_labels,
                config.classifier_dropout,
                config.distillation_head,
            )
        )
        self.criterion = build_loss_from_config(config)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MXAEfficientViTImageClassifierOutput | tuple:
        """Classify a batch of radiographs with both heads, and the loss when `labels` are given.

        Args:
            pixel_values (`torch.FloatTensor` [batch, num_channels, image_size, image_size]): radiographs as the
                image processor gives them (see `MXAEfficientViTModel.forward`).
            labels (`torch.FloatTensor` [batch, num_labels], *optional*): multi-hot targets in [0, 1], one column
                per finding in `config.id2label` order; an entry equal to -100 is left out of the loss.
            output_attentions, output_hidden_states (`bool`, *optional*): see `MXAEfficientViTModel.forward`
                (only `roi_boxes` is passed on to this output).
            return_dict (`bool`, *optional*, defaults to `config.return_dict`): a
                `MXAEfficientViTImageClassifierOutput`, or else the tuple of its non-None fields in field order.
            kwargs: accepted and ignored.

        Returns:
            `MXAEfficientViTImageClassifierOutput`: `logits` [batch, num_labels] (the mean of both heads' logits
            with `config.distillation_head`; a sigmoid gives per-finding probabilities); in training mode also
            `cls_logits` and (with the distillation head) `distillation_logits`, each [batch, num_labels];
            `roi_boxes` with `output_attentions`; and, when `labels` are given, `loss` (a scalar, computed in
            float32: in training mode with the distillation head the mean of both heads' `config.loss`, else the
            loss of `logits`).

        Raises:
            `ValueError`: if `labels` is not of shape [batch, num_labels], and as `MXAEfficientViTModel.forward`
                does (wrong `pixel_values` shape; one image in training mode).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if labels is not None and isinstance(pixel_values, torch.Tensor) and pixel_values.ndim == 4:
            expected = (pixel_values.shape[0], self.config.num_labels)
            if tuple(labels.shape) != expected:
                raise ValueError(f"labels must be multi-hot floats of shape {expected}, got {tuple(labels.shape)}")
        features = self.mxa_efficientvit(
            pixel_values,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        cls_logits, dist_logits = self.classifier(features.pooler_output)
        logits = cls_logits if dist_logits is None else (cls_logits + dist_logits) / 2
        loss = None
        if labels is not None:
            labels = labels.float()
            if self.training and dist_logits is not None:
                loss = (self.criterion(cls_logits.float(), labels) + self.criterion(dist_logits.float(), labels)) / 2
            else:
                loss = self.criterion(logits.float(), labels)
        output = MXAEfficientViTImageClassifierOutput(
            loss=loss,
            logits=logits,
            cls_logits=cls_logits if self.training else None,
            distillation_logits=dist_logits if self.training else None,
            roi_boxes=features.roi_boxes,
        )
        return output if return_dict else output.to_tuple()


__all__ = [
    "MXAEfficientViTForImageClassification",
    "MXAEfficientViTImageClassifierOutput",
    "MXAEfficientViTModel",
    "MXAEfficientViTModelOutput",
    "MXAEfficientViTPreTrainedModel",
]
