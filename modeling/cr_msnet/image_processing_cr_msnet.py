"""CR-MSNet image processor: 3-channel 224-px ImageNet-normalised input for the timm backbones."""

from .image_processing_cxr import CXRImageProcessor


class CRMSNetImageProcessor(CXRImageProcessor):
    """`CXRImageProcessor` with CR-MSNet's defaults: grey repeated to 3 channels, 224 px, ImageNet statistics
    (what the CoAtNet and ResNet backbones expect)."""


__all__ = ["CRMSNetImageProcessor"]
