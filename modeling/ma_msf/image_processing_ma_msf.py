"""MA-MSF image processor: 3-channel 224-px ImageNet-normalised input for the EfficientNetV2 backbone."""

from __future__ import annotations

from typing import Any

from .image_processing_cxr import IMAGENET_MEAN, IMAGENET_STD, CXRImageProcessor


class MAMSFImageProcessor(CXRImageProcessor):
    """`CXRImageProcessor` with MA-MSF's defaults: grey repeated to 3 channels, 224 px, ImageNet statistics."""

    def __init__(
        self,
        size: int | dict[str, int] | None = None,
        num_channels: int = 3,
        image_mean: Any = IMAGENET_MEAN,
        image_std: Any = IMAGENET_STD,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            size=size if size is not None else 224,
            num_channels=num_channels,
            image_mean=image_mean,
            image_std=image_std,
            **kwargs,
        )


__all__ = ["MAMSFImageProcessor"]
