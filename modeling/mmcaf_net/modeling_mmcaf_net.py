"""MMCAF-Net: a 3D CT slab and 7 clinical values -> lung cancer histology (adenocarcinoma vs squamous by default).

Image: a PENet-family 3D ResNeXt-SE encoder gives three scales; a top-down pyramid (upsampling convs) mixes
coarse context into the finer scales, E3D-MSCA (`E3DMultiScaleConvAttention`, efficient 3D multi-scale
*convolutional* attention: 3D channel attention -> 3D spatial attention -> depthwise multi-scale fusion) refines
each scale, and a bottom-up pass merges the scales pairwise with the bidirectional feedback propagation unit
(BFPU); global max pooling and a linear map give a 24-d image embedding. Table: one KAN layer (B-splines plus a
SiLU base) maps 7 -> 24. Fusion: the paper's MSCA module (`MultiScaleCrossAttentionFusion`, multi-scale *cross*
attention), bidirectional image<->table cross attention at widths 24, 12, 6 (each scale reduces the previous
scale's output), merged coarse-to-fine by BSF. In code and config the two are kept apart by name: `e3d_msca*`
for the encoder's convolutional attention, `cross_attention*` for the fusion.

Written from the paper's text and hf-cxr's architecture notes; every choice the paper leaves open is a config
field or is stated in the docstring of the module that makes it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_mmcaf_net import FREEZABLE_PARTS, MMCAFNetConfig
from .losses import build_single_label_loss_from_config
from .pretrained import CXRPreTrainedMixin

# ----------------------------------------------------------------------------------------------- outputs


@dataclass
class MMCAFNetModelOutput(ModelOutput):
    """Embeddings of MMCAF-Net, for `pixel_values` [B, 1, D, H, W] (after "=": the paper preset's shapes on
    [B, 1, 12, 192, 192]).

    Args:
        fused_embedding (`torch.FloatTensor` [B, fused_dim]): the multi-scale cross-attention + BSF fusion of both
            modalities (fused_dim = embed_dim, or 2 * embed_dim with `bsf_mode="concat"`).
        image_embedding (`torch.FloatTensor` [B, embed_dim]): the image encoder's vector alone.
        table_embedding (`torch.FloatTensor` [B, embed_dim]): the KAN table encoder's vector alone.
        last_hidden_state (`torch.FloatTensor` [B, C3, D3, H3, W3]): the coarsest fused pyramid map f3 (C3 =
            encoder_widths[-1]; = [B, 1024, 2, 12, 12]), max-pooled into the image embedding.
        scale_embeddings (`tuple[torch.FloatTensor]`): per cross-attention scale, finest first, the fused vector
            f_s [B, d_s] with d_s in `config.cross_attention_dims` (24, 12, 6).
        hidden_states (`tuple[torch.FloatTensor]`, *optional*): with `output_hidden_states=True`, the stem's map
            [B, stem_channels, D1, H1, W1] (= [B, 64, 6, 48, 48]) and the three encoder stage maps c1, c2, c3
            [B, encoder_widths[i], D_i, H_i, W_i] (= 256 x 6 x 48 x 48, 512 x 3 x 24 x 24, 1024 x 2 x 12 x 12).
        pyramid_hidden_states (`tuple[torch.FloatTensor]`, *optional*): with `output_hidden_states=True`, the three
            fused pyramid maps f1, f2, f3 after the bottom-up pass, finest first, each of its stage map's shape.
        cross_attentions (`tuple[torch.FloatTensor]`, *optional*): with `output_attentions=True`, two tensors per
            cross-attention scale, finest first: image->table then table->image weights, each
            [B, heads_s, tokens, tokens] (heads_s = `cross_attention_num_heads[s]`, tokens =
            `cross_attention_tokens`; rows sum to 1).
    """

    fused_embedding: torch.FloatTensor | None = None
    image_embedding: torch.FloatTensor | None = None
    table_embedding: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
    scale_embeddings: tuple[torch.FloatTensor, ...] | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    pyramid_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class MMCAFNetCTClassifierOutput(ModelOutput):
    """Classification output: raw logits; a softmax over them gives the class probabilities.

    Args:
        loss (`torch.FloatTensor` scalar, *optional*): the configured single-label loss (`config.loss`, computed in
            float32), when `labels` are given.
        logits (`torch.FloatTensor` [B, num_labels]): logits of the head `config.classification_head` names.
        fused_embedding (`torch.FloatTensor` [B, fused_dim]): see `MMCAFNetModelOutput`.
        image_embedding (`torch.FloatTensor` [B, embed_dim]): see `MMCAFNetModelOutput`.
        table_embedding (`torch.FloatTensor` [B, embed_dim]): see `MMCAFNetModelOutput`.
        cross_attentions (`tuple[torch.FloatTensor]`, *optional*): with `output_attentions=True`, see
            `MMCAFNetModelOutput`.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    fused_embedding: torch.FloatTensor | None = None
    image_embedding: torch.FloatTensor | None = None
    table_embedding: torch.FloatTensor | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None


# ----------------------------------------------------------------------------------------- image encoder


def conv3d(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int | Sequence[int] = 1,
    groups: int = 1,
    bias: bool = False,
    separable: bool = False,
) -> nn.Module:
    """A same-padded Conv3d, or (separable) a depthwise k x k x k conv followed by a pointwise 1x1x1 conv."""
    padding = kernel_size // 2
    if not separable or kernel_size == 1:
        return nn.Conv3d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=bias)
    return nn.Sequential(
        nn.Conv3d(in_channels, in_channels, kernel_size, stride, padding, groups=in_channels, bias=False),
        nn.Conv3d(in_channels, out_channels, 1, bias=bias),
    )


class ConvNormAct3D(nn.Sequential):
    """Conv3d (same padding; optionally depthwise-separable) -> BatchNorm3d -> ReLU (or no activation)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int | Sequence[int] = 1,
        groups: int = 1,
        activation: bool = True,
        separable: bool = False,
    ) -> None:
        super().__init__()
        self.conv = conv3d(in_channels, out_channels, kernel_size, stride, groups, separable=separable)
        self.norm = nn.BatchNorm3d(out_channels)
        self.act = nn.ReLU(inplace=True) if activation else nn.Identity()


class SqueezeExcitation3D(nn.Module):
    """Per-channel gates from the globally averaged volume: [B, C, D, H, W] -> same shape."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.fc1 = nn.Conv3d(channels, hidden, 1)
        self.fc2 = nn.Conv3d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, D, H, W] -> [B, C, D, H, W], each channel scaled by its gate in (0, 1)."""
        gate = self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3, 4), keepdim=True))))  # [B, C, 1, 1, 1]
        return x * torch.sigmoid(gate)


class ResNeXtSEBottleneck3D(nn.Module):
    """PENet-style bottleneck: 1x1x1 -> grouped 3x3x3 (stride) -> 1x1x1, squeeze-excitation, residual."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, cardinality: int, ratio: float, se_reduction: int
    ) -> None:
        super().__init__()
        middle = int(out_channels * ratio)
        self.conv1 = ConvNormAct3D(in_channels, middle, 1)
        self.conv2 = ConvNormAct3D(middle, middle, 3, stride=stride, groups=cardinality)
        self.conv3 = ConvNormAct3D(middle, out_channels, 1, activation=False)
        self.se = SqueezeExcitation3D(out_channels, se_reduction)
        needs_projection = stride != 1 or in_channels != out_channels
        self.shortcut = (
            ConvNormAct3D(in_channels, out_channels, 1, stride=stride, activation=False)
            if needs_projection
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C_in, D, H, W] -> [B, C_out, ceil(D / stride), ceil(H / stride), ceil(W / stride)]:
        ReLU(SE(bottleneck(x)) + shortcut(x))."""
        out = self.se(self.conv3(self.conv2(self.conv1(x))))
        return F.relu(out + self.shortcut(x))


class ChannelAttention3D(nn.Module):
    """E3D-MSCA CAB: sigmoid(MLP(avgpool x) + MLP(maxpool x)) re-weights channels (shared MLP, reduction r)."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(
            nn.Conv3d(channels, hidden, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv3d(hidden, channels, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, D, H, W] -> [B, C, D, H, W], each channel scaled by its weight in (0, 1)."""
        average = self.mlp(x.mean(dim=(2, 3, 4), keepdim=True))  # [B, C, 1, 1, 1]
        maximum = self.mlp(x.amax(dim=(2, 3, 4), keepdim=True))
        return x * torch.sigmoid(average + maximum)


class SpatialAttention3D(nn.Module):
    """E3D-MSCA SAB: a k x k x k conv over the channel mean and max gives one gate per voxel."""

    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, D, H, W] -> [B, C, D, H, W], each voxel scaled by a gate [B, 1, D, H, W] in (0, 1)."""
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)  # [B, 2, D, H, W]
        return x * torch.sigmoid(self.conv(pooled))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[B, C, ...] with C = groups * k: interleave the groups' channels (ShuffleNet)."""
    batch, channels = x.shape[:2]
    return x.view(batch, groups, channels // groups, *x.shape[2:]).transpose(1, 2).reshape_as(x)


class DepthwiseMultiScaleFusion3D(nn.Module):
    """E3D-MSCA DCFB: 1x1x1 expand, parallel depthwise k = 1/3/5 convs summed, channel shuffle, 1x1x1 project, residual.

    The depthwise branches see several neighbourhood sizes per channel at little cost (small lesions need the
    small ones). The shuffle interleaves gcd(expanded, C) groups before the projection.
    """

    def __init__(self, channels: int, expansion: int, kernel_sizes: Sequence[int]) -> None:
        super().__init__()
        hidden = channels * expansion
        self.expand = ConvNormAct3D(channels, hidden, 1)
        self.branches = nn.ModuleList(ConvNormAct3D(hidden, hidden, k, groups=hidden) for k in kernel_sizes)
        self.shuffle_groups = math.gcd(hidden, channels)
        self.project = ConvNormAct3D(hidden, channels, 1, activation=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, D, H, W] -> [B, C, D, H, W]: x + project(shuffle(sum of the depthwise branches on the
        [B, expansion * C, D, H, W] expansion))."""
        hidden = self.expand(x)  # [B, eC, D, H, W]
        hidden = torch.stack([branch(hidden) for branch in self.branches]).sum(dim=0)
        return x + self.project(channel_shuffle(hidden, self.shuffle_groups))


class E3DMultiScaleConvAttention(nn.Module):
    """E3D-MSCA, efficient 3D multi-scale *convolutional* attention (the image encoder's, one per pyramid scale):
    DCFB(SAB(CAB(x))), shape-preserving. Not the multi-scale *cross* attention of the fusion
    (`MultiScaleCrossAttentionFusion`), which the paper calls MSCA."""

    def __init__(self, channels: int, config: MMCAFNetConfig) -> None:
        super().__init__()
        self.channel_attention = ChannelAttention3D(channels, config.e3d_msca_reduction)
        self.spatial_attention = SpatialAttention3D(config.e3d_msca_spatial_kernel_size)
        self.multiscale_fusion = DepthwiseMultiScaleFusion3D(channels, config.dcfb_expansion, config.dcfb_kernel_sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, D, H, W] -> the same shape."""
        return self.multiscale_fusion(self.spatial_attention(self.channel_attention(x)))


class UpConv3D(nn.Module):
    """Top-down step: trilinear upsampling to the finer scale's size, then a 3x3x3 conv to its width."""

    def __init__(self, in_channels: int, out_channels: int, separable: bool) -> None:
        super().__init__()
        self.conv = ConvNormAct3D(in_channels, out_channels, 3, separable=separable)

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """x [B, C_in, d, h, w] and the finer scale's `size` (D, H, W) -> [B, C_out, D, H, W]."""
        return self.conv(F.interpolate(x, size=tuple(size), mode="trilinear", align_corners=False))


class DownConv3D(nn.Module):
    """Bottom-up step: a stride-2 3x3x3 conv to the coarser scale's width (the encoder's own downsampling)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, separable: bool) -> None:
        super().__init__()
        self.conv = ConvNormAct3D(in_channels, out_channels, 3, stride=stride, separable=separable)

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """x [B, C_in, D, H, W] and the coarser scale's `size` (d, h, w) -> [B, C_out, d, h, w] (the strided conv's
        output, resized trilinearly when its size is not already `size`)."""
        x = self.conv(x)
        if tuple(x.shape[2:]) != tuple(size):  # only for odd strides/sizes; the encoder uses the same formula
            x = F.interpolate(x, size=tuple(size), mode="trilinear", align_corners=False)
        return x


class BFPU(nn.Module):
    """Bidirectional feedback propagation unit (Chen et al. 2024) merging two scales of equal width C.

    A = sigmoid(conv3(a) * conv3(b)); out = [a + A a, b + A b] (2C, as the paper's Eq. 2), then a 1x1x1 conv
    back to C so that the next bottom-up step and the 1024 -> 24 projection keep the encoder's widths.
    """

    def __init__(self, channels: int, separable: bool) -> None:
        super().__init__()
        self.conv_a = conv3d(channels, channels, 3, bias=True, separable=separable)
        self.conv_b = conv3d(channels, channels, 3, bias=True, separable=separable)
        self.project = ConvNormAct3D(2 * channels, channels, 1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """a, b [B, C, D, H, W] (the same shape) -> [B, C, D, H, W]."""
        gate = torch.sigmoid(self.conv_a(a) * self.conv_b(b))  # [B, C, D, H, W]
        return self.project(torch.cat([a + gate * a, b + gate * b], dim=1))


class MMCAFNetImageEncoder(nn.Module):
    """Efficient 3D multi-scale PENet: [B, 1, D, H, W] -> image embedding [B, embed_dim] and its feature maps.

    Paper preset on [B, 1, 12, 192, 192]: stem -> [B, 64, 6, 48, 48]; stages c1 [B, 256, 6, 48, 48],
    c2 [B, 512, 3, 24, 24], c3 [B, 1024, 2, 12, 12]. Top-down: p3 = c3, p2 = c2 + up(p3), p1 = c1 + up(p2);
    m_i = E3D-MSCA(p_i). Bottom-up: f1 = m1, f2 = BFPU(m2, down(f1)), f3 = BFPU(m3, down(f2)); the embedding is
    Linear(C3 -> embed_dim) of the global max of f3.
    """

    def __init__(self, config: MMCAFNetConfig) -> None:
        super().__init__()
        widths, depths, strides = config.encoder_widths, config.encoder_depths, config.encoder_strides
        self.stem = nn.Sequential(
            nn.Conv3d(config.num_channels, config.stem_channels, 7, stride=(1, 2, 2), padding=3, bias=False),
            nn.BatchNorm3d(config.stem_channels),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(3, stride=2, padding=1),
        )
        stages = []
        in_channels = config.stem_channels
        for width, depth, stride in zip(widths, depths, strides, strict=True):
            blocks = [
                ResNeXtSEBottleneck3D(
                    in_channels if index == 0 else width,
                    width,
                    stride if index == 0 else 1,
                    config.cardinality,
                    config.bottleneck_ratio,
                    config.se_reduction,
                )
                for index in range(depth)
            ]
            stages.append(nn.Sequential(*blocks))
            in_channels = width
        self.stages = nn.ModuleList(stages)
        # top_down[i] brings scale i + 1 to scale i; bottom_up[i] / bfpu[i] bring scale i to scale i + 1.
        separable = config.pyramid_separable_convs
        self.top_down = nn.ModuleList(UpConv3D(widths[i + 1], widths[i], separable) for i in range(2))
        self.e3d_msca = nn.ModuleList(E3DMultiScaleConvAttention(width, config) for width in widths)
        self.bottom_up = nn.ModuleList(
            DownConv3D(widths[i], widths[i + 1], strides[i + 1], separable) for i in range(2)
        )
        self.bfpu = nn.ModuleList(BFPU(widths[i + 1], separable) for i in range(2))
        self.dropout = nn.Dropout(config.image_dropout)
        self.projection = nn.Linear(widths[-1], config.embed_dim)

    def forward(
        self, pixel_values: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """`pixel_values` [B, 1, D, H, W] -> (embedding [B, embed_dim], (stem, c1, c2, c3), (f1, f2, f3)).

        The stage maps c_i and the fused maps f_i are [B, encoder_widths[i], D_i, H_i, W_i]; see the class
        docstring for the paper preset's sizes. Unchecked: `MMCAFNetModel.forward` checks the input.
        """
        stem = self.stem(pixel_values)
        stage_maps = []
        hidden = stem
        for stage in self.stages:
            hidden = stage(hidden)
            stage_maps.append(hidden)
        c1, c2, c3 = stage_maps
        p3 = c3
        p2 = c2 + self.top_down[1](p3, c2.shape[2:])
        p1 = c1 + self.top_down[0](p2, c1.shape[2:])
        m1, m2, m3 = (attention(p) for attention, p in zip(self.e3d_msca, (p1, p2, p3), strict=True))
        f1 = m1
        f2 = self.bfpu[0](m2, self.bottom_up[0](f1, m2.shape[2:]))
        f3 = self.bfpu[1](m3, self.bottom_up[1](f2, m3.shape[2:]))
        pooled = f3.amax(dim=(2, 3, 4))  # global max pool: [B, C3]
        embedding = self.projection(self.dropout(pooled))  # [B, embed_dim]
        return embedding, (stem, c1, c2, c3), (f1, f2, f3)


# ----------------------------------------------------------------------------------------- table encoder


class KANLayer(nn.Module):
    """Kolmogorov-Arnold layer: y_o = sum_i w_oi SiLU(x_i) + sum_i sum_m c_oim B_m(x_i).

    B_m are the `grid_size + spline_order` B-splines of order `spline_order` on a uniform grid over `grid_range`
    (extended by `spline_order` knots on each side, so they sum to 1 everywhere on the range); evaluated with
    the Cox-de Boor recursion. Inputs outside the range get no spline term, only the SiLU base.
    """

    def __init__(
        self, in_features: int, out_features: int, grid_size: int, spline_order: int, grid_range: Sequence[float]
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.grid_size, self.spline_order = grid_size, spline_order
        self.grid_range = (float(grid_range[0]), float(grid_range[1]))
        self.register_buffer("knots", self.make_knots())  # [grid_size + 2 * spline_order + 1]
        self.base_weight = nn.Parameter(torch.empty(out_features, in_features))
        self.spline_weight = nn.Parameter(torch.empty(out_features, in_features, grid_size + spline_order))
        self.reset_parameters()

    def make_knots(self) -> torch.Tensor:
        low, high = self.grid_range
        step = (high - low) / self.grid_size
        positions = torch.arange(-self.spline_order, self.grid_size + self.spline_order + 1, dtype=torch.float32)
        return low + step * positions

    def reset_parameters(self) -> None:
        init.kaiming_uniform_(self.base_weight, a=math.sqrt(5))
        init.normal_(self.spline_weight, std=0.1 / self.grid_size)

    def b_splines(self, x: torch.Tensor) -> torch.Tensor:
        """[..., in] -> basis values [..., in, grid_size + spline_order]."""
        knots = self.knots.to(x.dtype)
        x = x.unsqueeze(-1)
        bases = ((x >= knots[:-1]) & (x < knots[1:])).to(x.dtype)  # order 0: [..., in, n_knots - 1]
        for order in range(1, self.spline_order + 1):
            left = (x - knots[: -(order + 1)]) / (knots[order:-1] - knots[: -(order + 1)])
            right = (knots[order + 1 :] - x) / (knots[order + 1 :] - knots[1:-order])
            bases = left * bases[..., :-1] + right * bases[..., 1:]
        return bases

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, in_features] -> [B, out_features]."""
        base = F.linear(F.silu(x), self.base_weight)  # [B, out]
        spline = torch.einsum("bim,oim->bo", self.b_splines(x), self.spline_weight)  # [B, out]
        return base + spline


# ----------------------------------------------------------------------------------------- fusion


class TokenCrossAttention(nn.Module):
    """Multi-head cross attention between two d-vectors, each split into `tokens` tokens of d / tokens.

    Q' = Q W_q, K' = K W_k, V' = V W_v (token width in and out), per head softmax(Q_h K_h^T / sqrt(c)) V_h;
    returns query + attention output (residual), [B, d], and the weights [B, heads, tokens, tokens].
    """

    def __init__(self, dim: int, tokens: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.tokens, self.heads = tokens, heads
        token_dim = dim // tokens
        self.head_dim = token_dim // heads
        self.q_proj = nn.Linear(token_dim, token_dim)
        self.k_proj = nn.Linear(token_dim, token_dim)
        self.v_proj = nn.Linear(token_dim, token_dim)
        self.dropout = nn.Dropout(dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        return x.view(batch, self.tokens, self.heads, self.head_dim).transpose(1, 2)  # [B, H, T, c]

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """query, context [B, dim] -> (query + attended context [B, dim], weights [B, heads, tokens, tokens])."""
        batch, dim = query.shape
        q = self._split(self.q_proj(query.view(batch, self.tokens, -1)))
        k = self._split(self.k_proj(context.view(batch, self.tokens, -1)))
        v = self._split(self.v_proj(context.view(batch, self.tokens, -1)))
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.head_dim), dim=-1)  # [B, H, T, T]
        attended = (self.dropout(weights) @ v).transpose(1, 2).reshape(batch, dim)
        return query + attended, weights


class CrossAttentionScale(nn.Module):
    """One scale of the multi-scale cross attention: the image vector queries the table vector and the table
    queries the image, in parallel."""

    def __init__(self, dim: int, tokens: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.image_to_table = TokenCrossAttention(dim, tokens, heads, dropout)
        self.table_to_image = TokenCrossAttention(dim, tokens, heads, dropout)

    def forward(self, image: torch.Tensor, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        """image, table [B, dim] -> (attended image [B, dim], attended table [B, dim], (image->table weights,
        table->image weights), each [B, heads, tokens, tokens])."""
        new_image, image_weights = self.image_to_table(image, table)
        new_table, table_weights = self.table_to_image(table, image)
        return new_image, new_table, (image_weights, table_weights)


class BidirectionalScaleFusion(nn.Module):
    """BSF: x = W1 a, y = W2 b (common width), s = softmax(x * y) over dimensions; x + x s + y + y s (or concat).

    The product marks the dimensions both scales agree on; the softmax down-weights uncertain ones.
    """

    def __init__(self, dim_a: int, dim_b: int, out_dim: int, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.proj_a = nn.Linear(dim_a, out_dim)
        self.proj_b = nn.Linear(dim_b, out_dim)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """a [B, dim_a], b [B, dim_b] -> [B, out_dim] (`sum`) or [B, 2 * out_dim] (`concat`)."""
        x, y = self.proj_a(a), self.proj_b(b)  # [B, out_dim]
        importance = torch.softmax(x * y, dim=-1)
        if self.mode == "concat":
            return torch.cat([x + x * importance, y + y * importance], dim=-1)  # [B, 2 out_dim]
        return x + x * importance + y + y * importance


class MultiScaleCrossAttentionFusion(nn.Module):
    """Multi-scale cross attention (the paper's MSCA fusion) + BSF: image and table vectors [B, 24] -> fused
    vector [B, fused_dim].

    Scale 0 takes the encoders' vectors; scale s > 0 takes Linear reductions (24 -> 12 -> 6, "inverted pyramid")
    of scale s - 1's *attended* vectors, which couples the scales. Each scale's pair is summed into one vector
    f_s; BSF merges them coarse to fine: h = f_2, h = BSF(h, f_1), h = BSF(h, f_0).
    """

    def __init__(self, config: MMCAFNetConfig) -> None:
        super().__init__()
        dims = config.cross_attention_dims
        self.reduce_image = nn.ModuleList(nn.Linear(dims[s - 1], dims[s]) for s in range(1, len(dims)))
        self.reduce_table = nn.ModuleList(nn.Linear(dims[s - 1], dims[s]) for s in range(1, len(dims)))
        self.scales = nn.ModuleList(
            CrossAttentionScale(dim, config.cross_attention_tokens, heads, config.cross_attention_dropout)
            for dim, heads in zip(dims, config.cross_attention_num_heads, strict=True)
        )
        factor = 2 if config.bsf_mode == "concat" else 1
        bsf = []
        width = dims[-1]
        for scale in range(len(dims) - 2, -1, -1):
            bsf.append(BidirectionalScaleFusion(width, dims[scale], dims[scale], config.bsf_mode))
            width = dims[scale] * factor
        self.bsf = nn.ModuleList(bsf)

    def forward(self, image: torch.Tensor, table: torch.Tensor) -> tuple[torch.Tensor, tuple, tuple]:
        """image, table [B, embed_dim] -> (fused [B, fused_dim], per-scale vectors f_s [B, d_s] finest first,
        per-scale (image->table, table->image) weight pairs, each [B, heads_s, tokens, tokens])."""
        fused_scales, weights = [], []
        for scale, block in enumerate(self.scales):
            if scale > 0:
                image, table = self.reduce_image[scale - 1](image), self.reduce_table[scale - 1](table)
            image, table, scale_weights = block(image, table)
            fused_scales.append(image + table)  # [B, d_s]
            weights.append(scale_weights)
        hidden = fused_scales[-1]
        for step, bsf in enumerate(self.bsf):
            hidden = bsf(hidden, fused_scales[len(fused_scales) - 2 - step])
        return hidden, tuple(fused_scales), tuple(weights)


# ----------------------------------------------------------------------------------------- models


class MMCAFNetPreTrainedModel(CXRPreTrainedMixin, PreTrainedModel):
    config_class = MMCAFNetConfig
    config: MMCAFNetConfig
    base_model_prefix = "mmcaf_net"
    supports_gradient_checkpointing = False
    _no_split_modules = ["MMCAFNetImageEncoder"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, KANLayer):
            init.copy_(module.knots, module.make_knots())
            module.reset_parameters()

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
        # The weight loader re-creates parameters with requires_grad=True: re-apply the config's frozen parts.
        model = super().from_pretrained(*args, **kwargs)
        loaded = model[0] if isinstance(model, tuple) else model
        for module in loaded.modules():
            if isinstance(module, MMCAFNetModel):
                module.set_frozen_parts(loaded.config.frozen_parts)
        return model

    def set_frozen_parts(self, parts: Sequence[str]) -> None:
        """Freeze exactly `parts` (of `image_encoder`, `table_encoder`, `fusion`) and keep them in eval mode.

        The paper's schedule: train the image encoder (`classification_head="image"`), then the fusion with the
        encoders frozen (`set_frozen_parts(["image_encoder", "table_encoder"])`). Saved in `config.frozen_parts`.
        Raises `ValueError` for a part not in `FREEZABLE_PARTS`.
        """
        for module in self.modules():
            if isinstance(module, MMCAFNetModel):
                module._apply_frozen_parts(parts)
        self.config.frozen_parts = list(parts)


class MMCAFNetModel(MMCAFNetPreTrainedModel):
    """Image encoder, KAN table encoder and multi-scale cross-attention/BSF fusion; returns the fused, image-only and
    table-only vectors."""

    def __init__(self, config: MMCAFNetConfig) -> None:
        super().__init__(config)
        self.image_encoder = MMCAFNetImageEncoder(config)
        self.table_encoder = KANLayer(
            config.num_clinical_features,
            config.embed_dim,
            config.kan_grid_size,
            config.kan_spline_order,
            config.kan_grid_range,
        )
        self.fusion = MultiScaleCrossAttentionFusion(config)
        self.post_init()
        self._apply_frozen_parts(config.frozen_parts)

    def _apply_frozen_parts(self, parts: Sequence[str]) -> None:
        unknown = sorted(set(parts) - set(FREEZABLE_PARTS))
        if unknown:
            raise ValueError(f"unknown parts {unknown}; choose from {FREEZABLE_PARTS}")
        self.config.frozen_parts = list(parts)
        for name in FREEZABLE_PARTS:
            getattr(self, name).requires_grad_(name not in parts)
        self.train(self.training)

    def train(self, mode: bool = True) -> MMCAFNetModel:
        """Like `nn.Module.train`, but frozen parts stay in eval mode (BatchNorm statistics and dropout fixed)."""
        super().train(mode)
        for name in self.config.frozen_parts:
            getattr(self, name).train(False)
        return self

    def forward(
        self,
        pixel_values: torch.Tensor,
        clinical_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> MMCAFNetModelOutput | tuple:
        """Encode a batch of CT slabs and clinical vectors: image, table and fused embeddings.

        Args:
            pixel_values (`torch.FloatTensor` [batch, 1, slices, image_size, image_size]): CT slabs as
                `MMCAFNetProcessor` gives them (HU windowed to [0, 1], then `(x - image_mean) / image_std`, [-1, 1]
                by default). Any number of slices is accepted (`config.num_slices`, 12, is what the recipe trains
                on).
            clinical_values (`torch.FloatTensor` [batch, num_clinical_features]): the 7 clinical features (sex, age,
                weight, T, N, M stage, smoking) encoded in [-1, 1] by the processor (missing ones filled); cast to
                the image embedding's dtype.
            output_hidden_states (`bool`, *optional*, defaults to `config.output_hidden_states`): also return the
                encoder's stage maps (`hidden_states`) and the fused pyramid maps (`pyramid_hidden_states`).
            output_attentions (`bool`, *optional*, defaults to `config.output_attentions`): also return the
                cross-attention weights of every scale (`cross_attentions`).
            return_dict (`bool`, *optional*, defaults to `config.return_dict`): a `MMCAFNetModelOutput`, or else the
                tuple of its non-None fields in field order.
            kwargs: accepted and ignored (extra batch keys such as `clinical_mask` or `series_index`).

        Returns:
            `MMCAFNetModelOutput`: `fused_embedding` [batch, fused_dim], `image_embedding` and `table_embedding`
            [batch, embed_dim], `last_hidden_state` [batch, C3, D3, H3, W3], `scale_embeddings` (one [batch, d_s]
            per scale) and the optional maps and weights; see `MMCAFNetModelOutput` for each shape.

        Raises:
            `ValueError`: if `pixel_values` is not a tensor of shape [batch, 1, slices, image_size, image_size]
                (`check_pixel_values`), or if `clinical_values` is None or not of shape
                [batch, num_clinical_features].
        """
        self.check_pixel_values(pixel_values)
        expected = (pixel_values.shape[0], self.config.num_clinical_features)
        if clinical_values is None or tuple(clinical_values.shape) != expected:
            shape = None if clinical_values is None else tuple(clinical_values.shape)
            raise ValueError(f"clinical_values must be {list(expected)} (encoded in [-1, 1]), got {shape}")
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        image_embedding, stage_maps, pyramid_maps = self.image_encoder(pixel_values)
        table_embedding = self.table_encoder(clinical_values.to(image_embedding.dtype))
        fused, scale_embeddings, weights = self.fusion(image_embedding, table_embedding)
        output = MMCAFNetModelOutput(
            fused_embedding=fused,
            image_embedding=image_embedding,
            table_embedding=table_embedding,
            last_hidden_state=pyramid_maps[-1],
            scale_embeddings=scale_embeddings,
            hidden_states=stage_maps if output_hidden_states else None,
            pyramid_hidden_states=pyramid_maps if output_hidden_states else None,
            cross_attentions=tuple(w for pair in weights for w in pair) if output_attentions else None,
        )
        return output if return_dict else output.to_tuple()


class MMCAFNetForCTClassification(MMCAFNetPreTrainedModel):
    """MMCAF-Net with softmax heads on the fused (default), image and table vectors; logits and a focal loss.

    `config.classification_head` picks which head's logits are returned (and trained): the image head for the
    first stage of the paper's schedule, the fused head afterwards.
    """

    def __init__(self, config: MMCAFNetConfig) -> None:
        super().__init__(config)
        self.mmcaf_net = MMCAFNetModel(config)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.fused_dim, config.num_labels)
        self.image_classifier = nn.Linear(config.embed_dim, config.num_labels)
        self.table_classifier = nn.Linear(config.embed_dim, config.num_labels)
        self.criterion = build_single_label_loss_from_config(config)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        clinical_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> MMCAFNetCTClassifierOutput | tuple:
        """Classify a batch of CT slabs with their clinical vectors: one softmax over `num_labels` classes.

        Args:
            pixel_values (`torch.FloatTensor` [batch, 1, slices, image_size, image_size]): CT slabs as
                `MMCAFNetProcessor` gives them (see `MMCAFNetModel.forward`).
            clinical_values (`torch.FloatTensor` [batch, num_clinical_features]): encoded clinical features in
                [-1, 1] (see `MMCAFNetModel.forward`).
            labels (`torch.LongTensor` [batch], *optional*): class indices into `config.id2label` (any integer
                tensor of `batch` elements, e.g. [batch, 1], is flattened); a label equal to -100 is left out of
                the loss. Not multi-hot: MMCAF-Net is single-label.
            output_attentions (`bool`, *optional*, defaults to `config.output_attentions`): also return
                `cross_attentions`.
            return_dict (`bool`, *optional*, defaults to `config.return_dict`): a `MMCAFNetCTClassifierOutput`, or
                else the tuple of its non-None fields in field order.
            kwargs: accepted and ignored (`output_hidden_states` included: this output carries no maps; call
                `model.mmcaf_net` for them).

        Returns:
            `MMCAFNetCTClassifierOutput`: `logits` [batch, num_labels] of the head `config.classification_head`
            names (`fused`, `image` or `table`), the three embeddings, `cross_attentions` with
            `output_attentions`, and `loss` (a scalar, `config.loss` in float32) when `labels` are given.

        Raises:
            `ValueError`: if `labels` is floating point or does not hold one label per slab, and as
                `MMCAFNetModel.forward` does (wrong `pixel_values` or `clinical_values` shape).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        features = self.mmcaf_net(pixel_values, clinical_values, output_attentions=output_attentions, return_dict=True)
        head = self.config.classification_head
        if head == "image":
            logits = self.image_classifier(self.dropout(features.image_embedding))
        elif head == "table":
            logits = self.table_classifier(self.dropout(features.table_embedding))
        else:
            logits = self.classifier(self.dropout(features.fused_embedding))  # [B, num_labels]
        loss = None
        if labels is not None:
            labels = labels.reshape(-1)
            if labels.shape[0] != logits.shape[0] or labels.is_floating_point():
                raise ValueError(
                    f"labels must be class indices (int) of shape [{logits.shape[0]}], got {labels.dtype} "
                    f"{tuple(labels.shape)}"
                )
            loss = self.criterion(logits.float(), labels)
        output = MMCAFNetCTClassifierOutput(
            loss=loss,
            logits=logits,
            fused_embedding=features.fused_embedding,
            image_embedding=features.image_embedding,
            table_embedding=features.table_embedding,
            cross_attentions=features.cross_attentions,
        )
        return output if return_dict else output.to_tuple()


__all__ = [
    "BFPU",
    "E3DMultiScaleConvAttention",
    "KANLayer",
    "MMCAFNetCTClassifierOutput",
    "MMCAFNetForCTClassification",
    "MMCAFNetImageEncoder",
    "MMCAFNetModel",
    "MMCAFNetModelOutput",
    "MMCAFNetPreTrainedModel",
    "MultiScaleCrossAttentionFusion",
]
