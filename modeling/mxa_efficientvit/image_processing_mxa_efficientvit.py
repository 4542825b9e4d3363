"""MXA-EfficientViT image processor: one grey channel, 224 px, intensities in [-1024, 1024]."""

from __future__ import annotations

from .image_processing_cxr import CXRImageProcessor

# (x - 0.5) / (1 / 2048) = (x - 0.5) * 2048 maps [0, 1] to [-1024, 1024], the torchxrayvision convention the
# paper's distillation teacher (densenet121-res224-chex) was trained with; 1/2048 is exact in binary.
XRV_MEAN = 0.5
XRV_STD = 1.0 / 2048.0


class MXAEfficientViTImageProcessor(CXRImageProcessor):
    """`CXRImageProcessor` with MXA-EfficientViT's defaults: 1 channel, 224 px, no ImageNet statistics.

    The same pixels suit a torchxrayvision teacher, so a distillation run can feed one batch to both models.
    """

    default_num_channels = 1
    default_image_mean = (XRV_MEAN,)
    default_image_std = (XRV_STD,)


__all__ = ["MXAEfficientViTImageProcessor"]
