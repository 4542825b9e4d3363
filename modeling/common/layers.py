"""Attention blocks shared by the 2D models (CR-MSNet's PMS-CSA, MXA's CBAM block, fusion cross-attention).

Written once here and carried into each model folder as a same-folder module, so that every saved model
works as Hub remote code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ChannelAttention(nn.Module):
    """CBAM channel attention: avg- and max-pooled descriptors through one shared MLP, summed, sigmoid.

    [B, C, H, W] -> weights [B, C, 1, 1] in (0, 1).
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, H, W] -> channel weights [B, C, 1, 1] in (0, 1) (not applied to x)."""
        avg = self.fc2(self.act(self.fc1(F.adaptive_avg_pool2d(x, 1))))
        peak = self.fc2(self.act(self.fc1(F.adaptive_max_pool2d(x, 1))))
        return torch.sigmoid(avg + peak)


class SpatialAttention(nn.Module):
    """Spatial attention over the channel mean and max maps, at one or several kernel sizes (summed).

    CBAM uses a single 7x7 kernel; PMS-CSA uses parallel 3/5/7 kernels to see lesions of several sizes.
    [B, C, H, W] -> weights [B, 1, H, W] in (0, 1). Raises `ValueError` at construction when `kernel_sizes` is
    empty or holds an even size.
    """

    def __init__(self, kernel_sizes: tuple[int, ...] = (7,)) -> None:
        super().__init__()
        if not kernel_sizes or any(k % 2 == 0 for k in kernel_sizes):
            raise ValueError(f"spatial attention kernel sizes must be odd, got {kernel_sizes}")
        self.convs = nn.ModuleList(nn.Conv2d(2, 1, kernel_size=k, padding=k // 2) for k in kernel_sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, H, W] -> spatial weights [B, 1, H, W] in (0, 1) (not applied to x)."""
        descriptor = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(sum(conv(descriptor) for conv in self.convs))


class CrossAttention(nn.Module):
    """Multi-head attention in which one token set queries another (pre-norm, residual on the queries).

    queries [B, Nq, D], context [B, Nk, D] -> ([B, Nq, D], attention weights [B, heads, Nq, Nk] or None).
    Projections are plain `nn.Linear` layers named q_proj/k_proj/v_proj/out_proj so PEFT can target them. Raises
    `ValueError` at construction when `dim` is not divisible by `num_heads`. The weights are returned only with
    `return_weights=True` (otherwise fused `scaled_dot_product_attention` runs).
    """

    def __init__(self, dim: int, num_heads: int = 8, attention_dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"cross-attention dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attention_dropout = attention_dropout
        self.norm_query = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(dim)
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def _heads(self, tokens: torch.Tensor) -> torch.Tensor:  # [B, N, D] -> [B, heads, N, head_dim]
        batch, length, _ = tokens.shape
        return tokens.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self, queries: torch.Tensor, context: torch.Tensor, return_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """queries [B, Nq, D], context [B, Nk, D] -> (queries + attended context [B, Nq, D], weights
        [B, heads, Nq, Nk] with `return_weights`, else None)."""
        q = self._heads(self.q_proj(self.norm_query(queries)))
        normed_context = self.norm_context(context)
        k = self._heads(self.k_proj(normed_context))
        v = self._heads(self.v_proj(normed_context))
        dropout = self.attention_dropout if self.training else 0.0
        weights = None
        if return_weights:
            weights = torch.softmax((q @ k.transpose(-2, -1)) * self.head_dim**-0.5, dim=-1)
            attended = F.dropout(weights, p=dropout, training=self.training) @ v
        else:
            attended = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        attended = attended.transpose(1, 2).reshape(queries.shape)
        return queries + self.out_proj(attended), weights
