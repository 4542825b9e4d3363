"""Image processor of the torchxrayvision classifiers: torchxrayvision's preprocessing on hf-cxr's faithful reader.

torchxrayvision's documented pipeline: the image as grey, intensities scaled to [-1024, 1024]
(`xrv.utils.normalize(img, maxval)`: (2 x / maxval - 1) * 1024), the centre square cropped on the long side
(`XRayCenterCrop`), then resized to the weight set's resolution (`XRayResizer`, 224 or 512 px). Here: the input is
read at full precision and scaled to [0, 1] (`CXRImageProcessor`, 8- and 16-bit and DICOM alike), centre-cropped
and resized (`resize_mode="center_crop"`: antialiased bilinear resize of the short side, then the centre crop), and
(x - 0.5) * 2048 gives [-1024, 1024]. The pixels differ from torchxrayvision's by its resampling (scikit-image's
Gaussian-prefiltered bilinear resize) only; on a square input of the model's size they are the same.
"""

from __future__ import annotations

from typing import Any

from .image_processing_cxr import CXRImageProcessor

# (x - 0.5) / (1 / 2048) maps [0, 1] to [-1024, 1024], torchxrayvision's intensity range; 1/2048 is exact in binary.
XRV_MEAN = 0.5
XRV_STD = 1.0 / 2048.0


class TorchXRayVisionImageProcessor(CXRImageProcessor):
    """`CXRImageProcessor` with torchxrayvision's defaults: 1 channel, [-1024, 1024], centre crop, 224 px (512 px for
    the ResNet-50: the size is the config's `image_size`, which `hf_cxr.build_image_processor` and the importer pass).

    Takes the arguments of `CXRImageProcessor`; `resize_mode` defaults to `"center_crop"` (torchxrayvision crops the
    long side) instead of `"stretch"`. Output: `pixel_values` float32 [B, 1, size, size] in [-1024, 1024].
    """

    default_num_channels = 1
    default_image_mean = (XRV_MEAN,)
    default_image_std = (XRV_STD,)

    def __init__(
        self, size: int | dict[str, int] | None = None, resize_mode: str = "center_crop", **kwargs: Any
    ) -> None:
        super().__init__(size=size, resize_mode=resize_mode, **kwargs)


__all__ = ["TorchXRayVisionImageProcessor"]
