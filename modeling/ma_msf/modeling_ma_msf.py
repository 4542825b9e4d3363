"""MA-MSF: a Momentum-Anchored Multi-Scale Fusion network for long-tailed multi-label chest X-ray classification.

An EfficientNetV2-S (timm) is the online network. A copy of its final expansion block (`conv_head` + `bn2`; the
last stage too with `anchor_scope="last_stage"`) is the *anchor*: it gets no gradients and follows the online block
only by an exponential moving average, `update_anchor()`, called after every optimizer step. The online map h and
the anchor map z_ema are fused (concat or sum), passed through parallel 1x1/3x3/5x5 convolutions, concatenated,
mixed by a 1x1 convolution, pooled and classified. Built from the paper's description (no public code exists);
every choice the paper leaves open is an `MAMSFConfig` field.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from timm.models import checkpoint_seq
from torch import nn
from torch.func import functional_call
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .backbone_weights import create_backbone, loading_saved_weights
from .classifier_head import MultiLabelClassifierOutput, MultiLabelHeadMixin
from .configuration_ma_msf import MAMSFConfig
from .pretrained import CXRPreTrainedMixin, mark_as_timm


@dataclass
class MAMSFModelOutput(ModelOutput):
    """Features of MA-MSF.

    Args:
        pooler_output (`torch.FloatTensor` [B, fusion_dim]): the pooled fused vector fed to the classifier.
        last_hidden_state (`torch.FloatTensor` [B, fusion_dim, H/32, W/32]): the fused multi-scale map.
        online_features (`torch.FloatTensor` [B, C, H/32, W/32]): h, the online final expansion block's output.
        anchor_features (`torch.FloatTensor` [B, C, H/32, W/32]): z_ema, the momentum anchor's output.
    """

    pooler_output: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
    online_features: torch.FloatTensor | None = None
    anchor_features: torch.FloatTensor | None = None


@dataclass
class MAMSFImageClassifierOutput(MultiLabelClassifierOutput):
    """Classification output, the multi-label head's fields only: `loss` (*optional*, when `labels` are given) and
    `logits` [B, num_labels], raw (apply a sigmoid for per-finding probabilities); see `MultiLabelClassifierOutput`."""


def _peft_neutral(named: Iterable[tuple[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Name -> tensor with PEFT's `base_layer.` wrapping removed, so the online block and its anchor still pair up
    by name when a LoRA adapter wraps layers of both (each side's LoRA tensors then pair up too)."""
    return {name.replace("base_layer.", ""): tensor for name, tensor in named}


class MomentumAnchor(nn.Module):
    """A slowly moving copy of the online network's last layers: theta_a <- m * theta_a + (1 - m) * theta_online.

    It owns its tensors (a deep copy: safetensors refuses shared storage), its parameters never require or receive
    gradients, and it is always in eval mode: its BatchNorm normalises with the running statistics copied from the
    online block at each update, never with the current batch (a teacher-like branch whose output must not depend
    on batch composition, and whose statistics must not drift between updates).
    """

    def __init__(self, online_layers: nn.Sequential) -> None:
        super().__init__()
        self.layers = copy.deepcopy(online_layers)
        self.layers.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> MomentumAnchor:
        """Stays in eval mode whatever `model.train()` asks (see the class docstring)."""
        return super().train(False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The anchor's copy of the online layers on `hidden_states` [B, C_in, h, w] (the trunk's output) ->
        z_ema [B, C, h, w], with detached weights and BatchNorm in eval mode."""
        # Detached weights: no gradient can reach the anchor even if someone sets requires_grad on it, while the
        # gradient with respect to the input still flows back into the shared trunk.
        weights = {name: param.detach() for name, param in self.layers.named_parameters()}
        return functional_call(self.layers, weights, (hidden_states,))

    @torch.no_grad()
    def update(self, online_layers: nn.Module, momentum: float) -> None:
        """One EMA step towards `online_layers` (same structure as the anchor), BN buffers copied. Raises
        `RuntimeError` when an anchor parameter has no online counterpart of the same name (a missing buffer raises
        `KeyError`); parameters updated before the mismatch keep their new values."""
        if momentum == 1.0:
            return  # a frozen anchor: neither weights nor statistics move
        online_params = _peft_neutral(online_layers.named_parameters())
        online_buffers = _peft_neutral(online_layers.named_buffers())
        for name, anchor_param in _peft_neutral(self.layers.named_parameters()).items():
            if name not in online_params:
                raise RuntimeError(f"the online block has no parameter {name!r} to update the momentum anchor from")
            source = online_params[name].detach().to(anchor_param.dtype)
            anchor_param.mul_(momentum).add_(source, alpha=1.0 - momentum)
        for name, anchor_buffer in _peft_neutral(self.layers.named_buffers()).items():
            anchor_buffer.copy_(online_buffers[name])
        self._sync_buffers()

    def _sync_buffers(self) -> None:
        """Under torch.distributed every process copies rank 0's BN statistics, as DDP's own buffer broadcast does.

        The EMA of the weights is already identical everywhere (it is computed from all-reduced weights), but each
        process's online running statistics saw only its own batches; without this the anchors would differ.
        """
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return
        buffers = [buffer for buffer in self.layers.buffers() if buffer.is_floating_point()]
        if not buffers:
            return
        flat = torch.cat([buffer.reshape(-1) for buffer in buffers])
        dist.broadcast(flat, src=0)
        offset = 0
        for buffer in buffers:
            buffer.copy_(flat[offset : offset + buffer.numel()].view_as(buffer))
            offset += buffer.numel()


def zero_init_residual_branches(backbone: nn.Module) -> None:
    """Zero the scale of the last BatchNorm in each block of a timm EfficientNet whose output is added to its input
    (`has_skip`), so the block starts as the identity and a deep randomly initialised network trains like a shallow
    one at first (Goyal et al., 2017; timm's ResNets do the same with `zero_init_last`). Raises `ValueError` when
    such a block has no `BatchNorm2d` to zero (set `MAMSFConfig.zero_init_residual=False` for that backbone)."""
    for block in backbone.modules():
        if getattr(block, "has_skip", False):
            norms = [module for module in block.modules() if isinstance(module, nn.BatchNorm2d)]
            if not norms:
                raise ValueError(f"MAMSFConfig.zero_init_residual: the residual block {type(block).__name__} has no "
                                 "BatchNorm2d to zero; set zero_init_residual=False for this backbone")  # fmt: skip
            nn.init.zeros_(norms[-1].weight)  # timm's BatchNormAct2d is a BatchNorm2d


class ConvNormAct(nn.Module):
    """k x k convolution (same padding) -> BatchNorm -> SiLU, the unit of the multi-scale fusion."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.norm = nn.BatchNorm2d(out_channels)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C_in, h, w] -> [B, C_out, h, w] (stride 1; same padding, as `fusion_kernels` are odd)."""
        return self.act(self.norm(self.conv(x)))


class MultiScaleFusion(nn.Module):
    """Parallel convolutions of several kernel sizes (1/3/5) over the fused map, concatenated and mixed by a 1x1.

    [B, C_in, h, w] -> [B, out_channels, h, w]: each kernel size sees a different neighbourhood of the same
    positions, so small and extended findings both contribute.
    """

    def __init__(self, in_channels: int, kernel_sizes: list[int], branch_channels: int, out_channels: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList(ConvNormAct(in_channels, branch_channels, k) for k in kernel_sizes)
        self.project = ConvNormAct(branch_channels * len(kernel_sizes), out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C_in, h, w] -> [B, out_channels, h, w]: the branches' [B, branch_channels, h, w] maps concatenated,
        then mixed by the 1x1 `ConvNormAct`."""
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


class MAMSFPreTrainedModel(CXRPreTrainedMixin, PreTrainedModel):
    config_class = MAMSFConfig
    config: MAMSFConfig
    base_model_prefix = "ma_msf"
    _no_split_modules = ["MAMSFModel"]

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
        # The weight loader re-creates every float parameter with requires_grad=True; the anchor must stay frozen
        # (else an optimizer or DDP would count it among the trained parameters). The backbone is built without
        # `config.backbone_weights`: its values are in the saved file.
        with loading_saved_weights():
            model = super().from_pretrained(*args, **kwargs)
        loaded = model[0] if isinstance(model, tuple) else model
        for module in loaded.modules():
            if isinstance(module, MomentumAnchor):
                module.requires_grad_(False)
        return model

    def update_anchor(self, momentum: float | None = None) -> None:
        """theta_a <- m * theta_a + (1 - m) * theta_online with m = `momentum` or `config.anchor_momentum`, BN
        buffers copied. Call after every optimizer step (`hf_cxr.callbacks.AnchorUpdateCallback` does it for
        Trainer). Under torch.distributed call it on every process: it broadcasts rank 0's BN statistics. Raises
        `RuntimeError` when an anchor parameter has no online counterpart of the same name (e.g. a PEFT adapter on
        the anchor's layers but not on the online block's)."""
        for module in self.modules():
            if isinstance(module, MAMSFModel):
                module._update_anchor(self.config.anchor_momentum if momentum is None else float(momentum))


class MAMSFModel(MAMSFPreTrainedModel):
    """The online EfficientNet, its momentum anchor and the multi-scale fusion; returns the pooled fused vector."""

    def __init__(self, config: MAMSFConfig) -> None:
        super().__init__(config)
        # With `config.backbone_weights`, timm loads them here (not when `from_pretrained` builds the model).
        self.backbone = mark_as_timm(
            create_backbone(
                config.backbone,
                config.backbone_weights,
                "MAMSFConfig.backbone_weights",
                "MAMSFConfig.backbone_kwargs",
                num_classes=0,
                global_pool="",
                in_chans=config.num_channels,
                drop_path_rate=config.drop_path_rate,
                **config.backbone_kwargs,
            )
        )
        for name in ("conv_stem", "bn1", "blocks", "conv_head", "bn2"):
            if not hasattr(self.backbone, name):
                raise ValueError(f"MAMSFConfig.backbone must be a timm EfficientNet-family model; {name!r} is missing")
        # Random initialisation only: loaded weights are kept (and a saved model's are loaded over it anyway).
        if config.zero_init_residual and not config.backbone_weights:  # before the anchor copies the last stage
            zero_init_residual_branches(self.backbone)
        # The anchor starts as a copy of the online block, pretrained or not (as update_anchor(momentum=0.0) would).
        self.anchor = MomentumAnchor(self._online_head())
        channels = self.backbone.num_features
        fusion_in = 2 * channels if config.fusion == "concat" else channels
        self.fusion = MultiScaleFusion(
            fusion_in, config.fusion_kernels, config.fusion_branch_channels, config.fusion_dim
        )
        self.post_init()

    def _online_head(self) -> nn.Sequential:
        """The online layers the anchor mirrors, as a view over the backbone's own modules (nothing is copied)."""
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        if self.config.anchor_scope == "last_stage":
            layers["last_stage"] = self.backbone.blocks[-1]
        layers["conv_head"] = self.backbone.conv_head
        layers["bn2"] = self.backbone.bn2
        return nn.Sequential(layers)

    def _run_blocks(self, blocks: nn.Sequential, x: torch.Tensor, stages: bool) -> torch.Tensor:
        """Run `blocks` (a sequence of stages, or one stage's blocks), checkpointing each block when timm's
        gradient checkpointing is on."""
        if self.backbone.grad_checkpointing and torch.is_grad_enabled() and len(blocks) > 0:
            return checkpoint_seq(blocks, x, flatten=stages)
        return blocks(x)

    def _update_anchor(self, momentum: float) -> None:
        self.anchor.update(self._online_head(), momentum)

    def forward(
        self,
        pixel_values: torch.Tensor,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MAMSFModelOutput | tuple:
        """Encode a batch of radiographs: the online map h, the momentum anchor's map z_ema and their fusion.

        Args:
            pixel_values (`torch.FloatTensor` [batch, num_channels, image_size, image_size]): radiographs as the
                image processor gives them (grey repeated to `num_channels`, resized, ImageNet-normalised).
            return_dict (`bool`, *optional*, defaults to `config.return_dict`): a `MAMSFModelOutput`, or else the
                tuple of its fields in field order.
            kwargs: accepted and ignored (extra batch keys from `Trainer` or a pipeline).

        Returns:
            `MAMSFModelOutput`: `pooler_output` [batch, fusion_dim], `last_hidden_state` [batch, fusion_dim, h, w],
            `online_features` and `anchor_features` [batch, C, h, w], with C the backbone's `num_features` and
            h, w the backbone's stride-32 grid (image_size / 32). The anchor receives no gradient; with
            `config.anchor_stop_gradient` none flows through it into the trunk either.

        Raises:
            `ValueError`: if `pixel_values` is not a tensor of shape [batch, num_channels, image_size, image_size]
                (`check_pixel_values`).
        """
        self.check_pixel_values(pixel_values)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        backbone = self.backbone
        last_stage = self.config.anchor_scope == "last_stage"
        trunk_blocks = backbone.blocks[:-1] if last_stage else backbone.blocks
        hidden = self._run_blocks(trunk_blocks, backbone.bn1(backbone.conv_stem(pixel_values)), stages=True)
        online = self._run_blocks(backbone.blocks[-1], hidden, stages=False) if last_stage else hidden
        online = backbone.bn2(backbone.conv_head(online))  # h: [B, C, H/32, W/32]
        anchored = self.anchor(hidden.detach() if self.config.anchor_stop_gradient else hidden)  # z_ema
        fused = torch.cat([online, anchored], dim=1) if self.config.fusion == "concat" else online + anchored
        fused = self.fusion(fused)  # [B, fusion_dim, H/32, W/32]
        output = MAMSFModelOutput(
            pooler_output=fused.mean(dim=(2, 3)),
            last_hidden_state=fused,
            online_features=online,
            anchor_features=anchored,
        )
        return output if return_dict else output.to_tuple()


class MAMSFForImageClassification(MultiLabelHeadMixin, MAMSFPreTrainedModel):
    """MA-MSF with a multi-label head on the fused vector (`MultiLabelHeadMixin.forward`): logits, and the loss when
    `labels` are given.

    Training does not move the momentum anchor: call `update_anchor()` after each optimizer step
    (`hf_cxr.callbacks.AnchorUpdateCallback` does it for `Trainer`).
    """

    output_class = MAMSFImageClassifierOutput

    def __init__(self, config: MAMSFConfig) -> None:
        super().__init__(config)
        self.ma_msf = MAMSFModel(config)
        self.add_multilabel_head(config.fusion_dim)
        self.post_init()


__all__ = ["MAMSFForImageClassification", "MAMSFModel", "MAMSFPreTrainedModel", "MomentumAnchor"]
