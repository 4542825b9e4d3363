"""MXA-EfficientViT image processor: one grey channel, 224 px, intensities in [-1024, 1024]."""

from __future__ import annotations

from typing import Any

from .image_processing_cxr import CXRImageProcessor

# (x - 0.5) / (1 / 2048) = (x - 0.5) * 2048 maps [0, 1] to [-1024, 1024], the torchxrayvision convention the
# paper's distillation teacher (densenet121-res224-chex) was trained with; 1/2048 is exact in binary.
XRV_MEAN = 0.5
XRV_STD = 1.0 / 2048.0


class MXAEfficientViTImageProcessor(CXRImageProcessor):
    """`CXRImageProcessor` with MXA-EfficientViT's defaults: 1 channel, 224 px, no ImageNet statistics.

    The same pixels suit a torchxrayvision teacher, so a distillation run can feed one batch to both models.
    """

    def __init__(
        self,
        size: int | dict[str, int] | None = None,
        num_channels: int = 1,
        image_mean: Any = XRV_MEAN,
        image_std: Any = XRV_STD,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            size=size if size is not None else 224,
            num_channels=num_channels,
            image_mean=image_mean,
            image_std=image_std,
            **kwargs,
        )


__all__ = ["MXAEfficientViTImageProcessor"]
