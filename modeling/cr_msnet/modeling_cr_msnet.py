"""CR-MSNet: a dual-branch multi-scale attention network for multi-label chest X-ray classification.

Global branch (a CoAtNet by default) and local branch (a ResNet) each refined by PMS-CSA; global tokens query
local tokens by cross-attention; an adaptive gate decides per image and channel how much of the fused view
to add to the purely global one. Built from the paper's description (no public code exists); every choice
the paper leaves open is a `CRMSNetConfig` field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .backbone_weights import create_backbone, loading_saved_weights
from .classifier_head import MultiLabelClassifierOutput, MultiLabelHeadMixin
from .configuration_cr_msnet import CRMSNetConfig
from .layers import ChannelAttention, CrossAttention, SpatialAttention
from .pretrained import CXRPreTrainedMixin, mark_as_timm


@dataclass
class CRMSNetModelOutput(ModelOutput):
    """Features of CR-MSNet.

    Args:
        pooler_output (`torch.FloatTensor` [B, fusion_dim]): the gated image vector z fed to the classifier.
        last_hidden_state (`torch.FloatTensor` [B, N_global, fusion_dim]): global tokens after cross-attention.
        global_features (`torch.FloatTensor` [B, C_g, H_g, W_g]): the global map after PMS-CSA.
        local_features (`torch.FloatTensor` [B, C_l, H_l, W_l]): the local map after PMS-CSA.
        gate (`torch.FloatTensor` [B, fusion_dim]): the adaptive gate g in (0, 1).
        cross_attentions (`torch.FloatTensor` [B, heads, N_global, N_local], *optional*): global-to-local
            attention weights, returned with `output_attentions=True`.
    """

    pooler_output: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
    global_features: torch.FloatTensor | None = None
    local_features: torch.FloatTensor | None = None
    gate: torch.FloatTensor | None = None
    cross_attentions: torch.FloatTensor | None = None


@dataclass
class CRMSNetImageClassifierOutput(MultiLabelClassifierOutput):
    """Classification output: the multi-label head's fields (`MultiLabelClassifierOutput`), then CR-MSNet's own.

    Args:
        loss (`torch.FloatTensor`, *optional*): the configured multi-label loss, when `labels` are given.
        logits (`torch.FloatTensor` [B, num_labels]): one raw logit per finding (a sigmoid gives probabilities).
        gate (`torch.FloatTensor` [B, fusion_dim]): the adaptive gate.
        cross_attentions (`torch.FloatTensor`, *optional*): see `CRMSNetModelOutput`.
    """

    gate: torch.FloatTensor | None = None
    cross_attentions: torch.FloatTensor | None = None


class PMSCSA(nn.Module):
    """Parallel Multi-Scale Channel-Spatial Attention.

    A channel path (avg+max pooled, shared MLP) and a multi-scale spatial path (channel mean+max through
    parallel k = 3/5/7 convs, summed) run side by side on the same input; their weights re-scale the input
    around the identity so its structure is kept: x * (1 + a_c + a_s). [B, C, H, W] -> [B, C, H, W].
    """

    def __init__(self, channels: int, reduction: int, kernel_sizes: list[int], combine: str) -> None:
        super().__init__()
        self.channel_attention = ChannelAttention(channels, reduction)
        self.spatial_attention = SpatialAttention(tuple(kernel_sizes))
        self.combine = combine
        if combine == "learned":
            self.channel_weight = nn.Parameter(torch.ones(1))
            self.spatial_weight = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, H, W] -> [B, C, H, W]: x * (1 + a_c + a_s), a_c [B, C, 1, 1] and a_s [B, 1, H, W] in (0, 1)
        (each times its learned weight with `combine="learned"`)."""
        channel = self.channel_attention(x)  # [B, C, 1, 1]
        spatial = self.spatial_attention(x)  # [B, 1, H, W]
        if self.combine == "learned":
            channel, spatial = self.channel_weight * channel, self.spatial_weight * spatial
        return x * (1 + channel + spatial)


class AdaptiveGate(nn.Module):
    """g = sigmoid(MLP([pool(G); pool(CA)])): how much of the fused view to trust, per image and channel."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2 * dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, pooled_global: torch.Tensor, pooled_fused: torch.Tensor) -> torch.Tensor:
        """pooled global and fused vectors, [B, dim] each -> gate [B, dim] in (0, 1)."""
        return torch.sigmoid(self.fc2(self.act(self.fc1(torch.cat([pooled_global, pooled_fused], dim=-1)))))


class CRMSNetPreTrainedModel(CXRPreTrainedMixin, PreTrainedModel):
    config_class = CRMSNetConfig
    config: CRMSNetConfig
    base_model_prefix = "cr_msnet"
    _no_split_modules = ["CRMSNetModel"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, PMSCSA) and module.combine == "learned":
            init.ones_(module.channel_weight)
            init.ones_(module.spatial_weight)

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
        # The backbones are built without `config.*_backbone_weights`: their values are in the saved file.
        with loading_saved_weights():
            return super().from_pretrained(*args, **kwargs)


class CRMSNetModel(CRMSNetPreTrainedModel):
    """The two branches, PMS-CSA, cross-attention fusion and adaptive gate; returns the gated image vector."""

    def __init__(self, config: CRMSNetConfig) -> None:
        super().__init__(config)
        # With `config.*_backbone_weights`, timm loads them here (not when `from_pretrained` builds the model).
        self.global_backbone = mark_as_timm(
            create_backbone(
                config.global_backbone,
                config.global_backbone_weights,
                "CRMSNetConfig.global_backbone_weights",
                "CRMSNetConfig.global_backbone_kwargs",
                num_classes=0,
                global_pool="",
                in_chans=config.num_channels,
                img_size=config.image_size,
                drop_path_rate=config.drop_path_rate,
                **config.global_backbone_kwargs,
            )
        )
        self.local_backbone = mark_as_timm(
            create_backbone(
                config.local_backbone,
                config.local_backbone_weights,
                "CRMSNetConfig.local_backbone_weights",
                "CRMSNetConfig.local_backbone_kwargs",
                features_only=True,
                out_indices=(config.local_feature_index,),
                in_chans=config.num_channels,
                drop_path_rate=config.drop_path_rate,
                **config.local_backbone_kwargs,
            )
        )
        global_channels = self.global_backbone.num_features
        local_channels = self.local_backbone.feature_info.channels()[-1]
        pms = (config.pms_csa_reduction, config.pms_csa_kernel_sizes, config.pms_csa_combine)
        self.global_attention = PMSCSA(global_channels, *pms)
        self.local_attention = PMSCSA(local_channels, *pms)
        self.global_proj = nn.Linear(global_channels, config.fusion_dim)
        self.local_proj = nn.Linear(local_channels, config.fusion_dim)
        self.cross_attention = CrossAttention(config.fusion_dim, config.num_attention_heads, config.attention_dropout)
        self.reverse_cross_attention = (
            CrossAttention(config.fusion_dim, config.num_attention_heads, config.attention_dropout)
            if config.bidirectional_fusion
            else None
        )
        self.gate = AdaptiveGate(config.fusion_dim, config.gate_hidden_dim)
        self.norm = nn.LayerNorm(config.fusion_dim)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> CRMSNetModelOutput | tuple:
        """Encode a batch of radiographs into the gated image vector.

        Args:
            pixel_values (`torch.FloatTensor` [batch, num_channels, image_size, image_size]): radiographs as the
                image processor gives them (grey repeated to `num_channels`, resized, ImageNet-normalised).
            output_attentions (`bool`, *optional*, defaults to `False`; `config.output_attentions` is not read):
                also return the global-to-local attention weights (`cross_attentions`); without it the attention
                runs as fused `scaled_dot_product_attention` and no weights are formed.
            return_dict (`bool`, *optional*, defaults to `config.return_dict`): a `CRMSNetModelOutput`, or else
                the tuple of its non-None fields in field order.
            kwargs: accepted and ignored (extra batch keys from `Trainer` or a pipeline).

        Returns:
            `CRMSNetModelOutput`: `pooler_output` [batch, fusion_dim], `last_hidden_state` [batch, N_global,
            fusion_dim] (N_global = H_g * W_g tokens of the global map), `global_features` [batch, C_g, H_g, W_g],
            `local_features` [batch, C_l, H_l, W_l], `gate` [batch, fusion_dim] and, with `output_attentions`,
            `cross_attentions` [batch, num_attention_heads, N_global, N_local].

        Raises:
            `ValueError`: if `pixel_values` is not a tensor of shape [batch, num_channels, image_size, image_size]
                (`check_pixel_values`).
        """
        self.check_pixel_values(pixel_values)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        global_map = self.global_attention(self.global_backbone.forward_features(pixel_values))  # [B, Cg, h, w]
        local_map = self.local_attention(self.local_backbone(pixel_values)[-1])  # [B, Cl, 2h, 2w]
        global_tokens = self.global_proj(global_map.flatten(2).transpose(1, 2))  # [B, Ng, d]
        local_tokens = self.local_proj(local_map.flatten(2).transpose(1, 2))  # [B, Nl, d]
        fused_tokens, attention = self.cross_attention(global_tokens, local_tokens, bool(output_attentions))
        pooled_global = global_tokens.mean(dim=1)
        pooled_fused = fused_tokens.mean(dim=1)
        if self.reverse_cross_attention is not None:
            reverse_tokens, _ = self.reverse_cross_attention(local_tokens, global_tokens)
            pooled_fused = pooled_fused + reverse_tokens.mean(dim=1)
        gate = self.gate(pooled_global, pooled_fused)  # [B, d]
        pooled = self.norm(pooled_global + gate * pooled_fused)
        output = CRMSNetModelOutput(
            pooler_output=pooled,
            last_hidden_state=fused_tokens,
            global_features=global_map,
            local_features=local_map,
            gate=gate,
            cross_attentions=attention,
        )
        return output if return_dict else output.to_tuple()


class CRMSNetForImageClassification(MultiLabelHeadMixin, CRMSNetPreTrainedModel):
    """CR-MSNet with a multi-label head on the gated vector (`MultiLabelHeadMixin.forward`): logits, the loss when
    `labels` are given, the gate and, with `output_attentions=True`, the cross-attention weights."""

    output_class = CRMSNetImageClassifierOutput

    def __init__(self, config: CRMSNetConfig) -> None:
        super().__init__(config)
        self.cr_msnet = CRMSNetModel(config)
        self.add_multilabel_head(config.fusion_dim)
        self.post_init()


__all__ = ["CRMSNetForImageClassification", "CRMSNetModel", "CRMSNetPreTrainedModel"]
