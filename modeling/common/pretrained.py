"""Behaviour every hf-cxr `PreTrainedModel` shares: remote-code auto_map and bit-exact reloading."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import initialization as init


def mark_as_timm(module: nn.Module) -> nn.Module:
    """Flag a timm backbone's modules so `_init_weights` leaves timm's own initialisation in place."""
    for submodule in module.modules():
        submodule._hf_cxr_timm_owned = True
    return module


class CXRPreTrainedMixin:
    """Mixed into each architecture's `PreTrainedModel` subclass (before `PreTrainedModel`)."""

    # Every hf-cxr model reads an image tensor (a radiograph, or MMCAF-Net's CT slab beside its clinical values)...
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    # ...and averages its loss over its own batch: the `**kwargs` of `forward` take no loss arguments (so `Trainer`
    # passes no `num_items_in_batch` and scales the loss for gradient accumulation itself).
    accepts_loss_kwargs = False
    # Activation checkpointing is timm's own inside each timm backbone (`_set_gradient_checkpointing`); an
    # architecture without one (MMCAF-Net) sets this False.
    supports_gradient_checkpointing = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Initialise the layers hf-cxr adds; timm backbones keep the initialisation timm gave them.

        `from_pretrained` builds the model on the meta device and calls this for every module whose tensors were
        not loaded, non-persistent buffers included (they are left uninitialised otherwise). A module that computes
        such buffers at construction (timm's attention index tables, the losses' class weights) rewrites them in
        `init_non_persistent_buffers()`, timm's name for that step.
        """
        if hasattr(module, "init_non_persistent_buffers"):
            module.init_non_persistent_buffers()
        if getattr(module, "_hf_cxr_timm_owned", False):
            return
        if isinstance(module, (nn.Conv2d, nn.Conv3d)):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm)):
            if module.weight is not None:
                init.ones_(module.weight)
                init.zeros_(module.bias)
            if getattr(module, "running_mean", None) is not None:
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)
                init.zeros_(module.num_batches_tracked)

    def _set_gradient_checkpointing(
        self, enable: bool = True, gradient_checkpointing_func: Any = None, **kwargs: Any
    ) -> None:
        """Switch timm's own checkpointing (`set_grad_checkpointing`) in every timm backbone (`mark_as_timm`):
        per stage or block as each timm model defines it (e.g. per dense layer in DenseNet-121). Each backbone also
        carries transformers' `gradient_checkpointing` flag, which `is_activation_checkpointing` (and PEFT) read."""
        for module in self.modules():
            if getattr(module, "_hf_cxr_timm_owned", False) and hasattr(module, "set_grad_checkpointing"):
                module.set_grad_checkpointing(enable)
                module.gradient_checkpointing = enable

    def check_pixel_values(self, pixel_values: Any) -> None:
        """Raise `ValueError` unless `pixel_values` is a tensor [batch, *config.pixel_values_shape] (a None there
        allows any size: MMCAF-Net's number of slices).

        Every architecture checks its input here, before the backbone: a radiograph at another size or channel
        count would otherwise fail deep inside timm (e.g. CoAtNet's relative position tables) or, for convolutional
        backbones, run at a resolution the model was not configured for.
        """
        expected = tuple(self.config.pixel_values_shape)
        if (
            isinstance(pixel_values, torch.Tensor)
            and pixel_values.ndim == len(expected) + 1
            and all(want is None or want == size for want, size in zip(expected, pixel_values.shape[1:], strict=True))
        ):
            return
        got = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
        dims = ", ".join("slices" if size is None else str(size) for size in expected)
        raise ValueError(
            f"pixel_values must be [batch, {dims}], got {got}; use the model's image processor "
            "(`AutoImageProcessor.from_pretrained` of this model), which gives that size"
        )

    def multilabel_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The configured loss (`self.criterion`, in float32) of [B, num_labels] logits against multi-hot labels
        [B, num_labels] (cast to float; entries equal to -100 are left out). Raises `ValueError` when the labels'
        shape is not the logits'."""
        if labels.shape != logits.shape:
            raise ValueError(
                f"labels must be multi-hot floats of shape {tuple(logits.shape)}, got {tuple(labels.shape)}"
            )
        return self.criterion(logits.float(), labels.float())

    def save_pretrained(self, save_directory: Any, *args: Any, **kwargs: Any) -> Any:
        # The auto_map written for remote code only names the class being saved; add the base model so that
        # `AutoModel.from_pretrained(repo, trust_remote_code=True)` also works for a saved classifier.
        if self._auto_class is not None:
            module = type(self).__module__.rsplit(".", 1)[-1]
            entry = {"AutoModel": f"{module}.{type(self.base_model).__name__}"}
            self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **entry}
            if self._auto_class == "AutoModelForImageClassification":
                # The "chest-x-ray-classification" pipeline as remote code too: pipeline_cxr.py is a relative
                # import of this file, so it is copied beside the model, and `custom_pipelines` names it, so that
                # `pipeline(task, model=repo, trust_remote_code=True)` runs without hf-cxr.
                from .pipeline_cxr import custom_pipelines_entry

                pipelines = getattr(self.config, "custom_pipelines", None) or {}
                self.config.custom_pipelines = {**pipelines, **custom_pipelines_entry()}
        return super().save_pretrained(save_directory, *args, **kwargs)

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
        # Weights come back as views into the safetensors file at arbitrary byte offsets; CPU kernels pick
        # different summation orders for unaligned memory, so logits would differ from the saved model in the
        # last bits. Owning freshly allocated (aligned) copies makes reloading bit-exact.
        model = super().from_pretrained(*args, **kwargs)
        loaded = model[0] if isinstance(model, tuple) else model
        with torch.no_grad():
            for tensor in [*loaded.parameters(), *loaded.buffers()]:
                tensor.data = tensor.data.clone()
        return model
