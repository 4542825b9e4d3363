"""MA-MSF image processor: 3-channel 224-px ImageNet-normalised input for the EfficientNetV2 backbone."""

from .image_processing_cxr import CXRImageProcessor


class MAMSFImageProcessor(CXRImageProcessor):
    """`CXRImageProcessor` with MA-MSF's defaults: grey repeated to 3 channels, 224 px, ImageNet statistics."""


__all__ = ["MAMSFImageProcessor"]
