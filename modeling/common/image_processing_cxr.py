"""The image processor shared by the 2D chest X-ray models; each model subclasses it with its own defaults.

It owns all preprocessing, so a model never sees a wrongly scaled image: any supported input (see
`imaging.load_radiograph`) becomes grey-scale [0, 1] at full precision, is resized (in float, after the
bit depth is known), repeated to the model's channel count and normalised.
Output: `pixel_values` float32 [B, C, H, W].
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature

from .imaging import array_to_unit_float, describe, load_radiograph

RESIZE_MODES = ("stretch", "pad", "center_crop")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _as_size_dict(size: int | Sequence[int] | dict[str, int]) -> dict[str, int]:
    if isinstance(size, int):
        return {"height": size, "width": size}
    if isinstance(size, dict):
        if "height" in size and "width" in size:
            return {"height": int(size["height"]), "width": int(size["width"])}
        if "shortest_edge" in size:
            return {"height": int(size["shortest_edge"]), "width": int(size["shortest_edge"])}
        raise ValueError(f"size must have 'height' and 'width', got {size}")
    height, width = size
    return {"height": int(height), "width": int(width)}


def resize_grey(image: torch.Tensor, height: int, width: int, mode: str) -> torch.Tensor:
    """Resize a grey image [H, W] (float) to [height, width] by stretching, letterboxing or centre-cropping.

    Bilinear with antialiasing, so downsampling a 1024-px radiograph does not alias fine structure. Raises
    `ValueError` when `mode` is not one of `RESIZE_MODES` (`stretch`, `pad`, `center_crop`).
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {mode!r}")
    in_height, in_width = image.shape
    if mode == "stretch":
        new_height, new_width = height, width
    else:
        pick = min if mode == "pad" else max
        scale = pick(height / in_height, width / in_width)
        new_height, new_width = max(round(in_height * scale), 1), max(round(in_width * scale), 1)
    if (new_height, new_width) != (in_height, in_width):
        image = F.interpolate(
            image[None, None], size=(new_height, new_width), mode="bilinear", antialias=True, align_corners=False
        )[0, 0].clamp_(0.0, 1.0)
    if mode == "pad":
        top, left = (height - new_height) // 2, (width - new_width) // 2
        image = F.pad(image, (left, width - new_width - left, top, height - new_height - top), value=0.0)
    elif mode == "center_crop":
        top, left = (new_height - height) // 2, (new_width - width) // 2
        image = image[top : top + height, left : left + width]
    return image


class CXRImageProcessor(BaseImageProcessor):
    r"""Chest X-ray image processor.

    Inputs (one, or a batch: a list, tuple, `datasets` column or 4D array/tensor): paths, bytes, PIL images,
    numpy arrays, torch tensors, DICOM (files or `pydicom.Dataset`; needs pydicom) and `datasets` image dicts,
    read by `imaging.load_radiograph` (EXIF orientation applied, so a path, its bytes, its PIL image and its
    `datasets` row give the same pixels). `ValueError` names the input and its place in the batch for anything
    that cannot be read faithfully.

    Args:
        size (`dict[str, int]`, defaults to the model's, e.g. `{"height": 224, "width": 224}`): output size.
        resize_mode (`str`, defaults to `"stretch"`): `"stretch"` resizes to `size` directly (what the papers
            did; ChestX-ray14 images are square), `"pad"` keeps the aspect ratio and pads with black,
            `"center_crop"` keeps the aspect ratio and crops the centre.
        num_channels (`int`, defaults to the model's, e.g. 3): the grey image is repeated to this many channels.
        do_rescale (`bool`, defaults to `True`): integer pixels are divided by their bit depth's maximum
            (255 for 8-bit, 65535 for 16-bit). uint8/uint16 arrays and image files state their bit depth; other
            integer types (int32/int64 arrays and tensors, PIL mode "I") are 8-bit when every value is within
            0..255, else 16-bit when within 0..65535, else refused (`imaging.integer_scale`). Floats are never
            rescaled and must lie in [0, 1]; with `do_rescale=False` integer pixels must already be 0 or 1.
        do_normalize (`bool`, defaults to `True`): apply `(x - image_mean) / image_std` per channel.
        image_mean, image_std (`list[float]`, default the model's, e.g. ImageNet's): per-channel statistics (one
            value is repeated to every channel).

    Raises:
        `ValueError`: at construction (and in `preprocess`, for the values it is given) for a `resize_mode` not in
            `RESIZE_MODES`, `num_channels` other than 1 or 3, an `image_mean`/`image_std` of neither 1 nor
            `num_channels` values, a non-positive `image_std`, or a `size` dict without height and width.
    """

    model_input_names = ["pixel_values"]
    # Each model's processor subclass sets its own defaults here (what its backbone expects).
    default_size: int = 224
    default_num_channels: int = 3
    default_image_mean: tuple[float, ...] = IMAGENET_MEAN
    default_image_std: tuple[float, ...] = IMAGENET_STD

    def __init__(
        self,
        size: int | dict[str, int] | None = None,
        resize_mode: str = "stretch",
        num_channels: int | None = None,
        do_rescale: bool = True,
        do_normalize: bool = True,
        image_mean: Sequence[float] | float | None = None,
        image_std: Sequence[float] | float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.size = _as_size_dict(size if size is not None else self.default_size)
        self.resize_mode = resize_mode
        self.num_channels = num_channels if num_channels is not None else self.default_num_channels
        self.do_rescale = do_rescale
        self.do_normalize = do_normalize
        image_mean = image_mean if image_mean is not None else self.default_image_mean
        image_std = image_std if image_std is not None else self.default_image_std
        self.image_mean = list(image_mean) if isinstance(image_mean, Sequence) else [float(image_mean)]
        self.image_std = list(image_std) if isinstance(image_std, Sequence) else [float(image_std)]
        self._check(self.resize_mode, self.num_channels, self.image_mean, self.image_std)

    @staticmethod
    def _check(resize_mode: str, num_channels: int, mean: list[float], std: list[float]) -> None:
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
        if num_channels not in (1, 3):
            raise ValueError(f"num_channels must be 1 or 3, got {num_channels}")
        for field, values in (("image_mean", mean), ("image_std", std)):
            if len(values) not in (1, num_channels):
                raise ValueError(f"{field} needs 1 or {num_channels} values, got {values}")
        if any(s <= 0 for s in std):
            raise ValueError(f"image_std must be positive, got {std}")

    def to_grey(self, image: Any, index: int, do_rescale: bool) -> np.ndarray:
        """One input -> grey float32 [H, W] in [0, 1]; errors name the input and its place in the batch. Raises
        `ValueError` as `imaging.load_radiograph` does (or, for an array or tensor with `do_rescale=False`, as
        `imaging.array_to_unit_float` does), and `ImportError` for a DICOM without pydicom."""
        name = f"image {index} ({describe(image)})"
        if isinstance(image, np.ndarray) and not do_rescale:
            return array_to_unit_float(image, name, channels_first=None, rescale=False)
        if isinstance(image, torch.Tensor) and not do_rescale:
            return array_to_unit_float(image.detach().cpu().numpy(), name, channels_first=True, rescale=False)
        return load_radiograph(image, name=name)

    def preprocess(
        self,
        images: Any,
        size: int | dict[str, int] | None = None,
        resize_mode: str | None = None,
        num_channels: int | None = None,
        do_rescale: bool | None = None,
        do_normalize: bool | None = None,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        return_tensors: str | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Turn one input or a batch (a sequence, or a 4D array/tensor) into `pixel_values` float32 [B, C, H, W]
        (numpy without `return_tensors`, torch with `"pt"`).

        Raises `TypeError` for a keyword argument it does not take; `ValueError` for an empty batch, for invalid
        settings (see the class docstring), and for an input `imaging.load_radiograph` cannot read (naming the
        input and its place in the batch); `ImportError` for a DICOM without pydicom installed.
        """
        if kwargs:
            raise TypeError(f"{type(self).__name__}.preprocess got unexpected arguments {sorted(kwargs)}")
        size = _as_size_dict(size) if size is not None else self.size
        resize_mode = resize_mode or self.resize_mode
        num_channels = num_channels or self.num_channels
        do_rescale = self.do_rescale if do_rescale is None else do_rescale
        do_normalize = self.do_normalize if do_normalize is None else do_normalize
        mean = list(image_mean) if image_mean is not None else self.image_mean
        std = list(image_std) if image_std is not None else self.image_std
        self._check(resize_mode, num_channels, mean, std)

        grey = self.grey_pixel_values(images, size=size, resize_mode=resize_mode, do_rescale=do_rescale)
        pixel_values = self.normalize_grey(grey, num_channels, do_normalize, mean, std)
        data = {"pixel_values": pixel_values if return_tensors == "pt" else pixel_values.numpy()}
        return BatchFeature(data=data, tensor_type=None)

    def grey_pixel_values(
        self,
        images: Any,
        size: int | dict[str, int] | None = None,
        resize_mode: str | None = None,
        do_rescale: bool | None = None,
    ) -> torch.Tensor:
        """The first half of `preprocess`: the inputs read as grey and resized, float32 [B, 1, H, W] in [0, 1]
        (what training augments before `normalize_grey`). Raises `ValueError` as `preprocess` does."""
        size = _as_size_dict(size) if size is not None else self.size
        resize_mode = resize_mode or self.resize_mode
        do_rescale = self.do_rescale if do_rescale is None else do_rescale
        batch = _as_batch(images)
        if not batch:
            raise ValueError("no images given")
        grey = torch.empty(len(batch), 1, size["height"], size["width"], dtype=torch.float32)
        for index, image in enumerate(batch):
            pixels = torch.from_numpy(np.ascontiguousarray(self.to_grey(image, index, do_rescale)))
            grey[index, 0] = resize_grey(pixels, size["height"], size["width"], resize_mode)
        return grey

    def normalize_grey(
        self,
        grey: torch.Tensor,
        num_channels: int | None = None,
        do_normalize: bool | None = None,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
    ) -> torch.Tensor:
        """The second half of `preprocess`: grey [B, 1, H, W] in [0, 1] (on any device) repeated to `num_channels`
        and, with `do_normalize`, normalised per channel, `(x - mean) / std`, in one multiply-add: float32
        [B, C, H, W]. Arguments left None take the processor's."""
        num_channels = num_channels or self.num_channels
        if not (self.do_normalize if do_normalize is None else do_normalize):
            return grey.expand(-1, num_channels, -1, -1).contiguous()
        mean = torch.tensor(list(image_mean or self.image_mean), dtype=torch.float32, device=grey.device)
        std = torch.tensor(list(image_std or self.image_std), dtype=torch.float32, device=grey.device)
        scale, shift = (1.0 / std).expand(num_channels), (-mean / std).expand(num_channels)
        return torch.addcmul(shift.view(1, -1, 1, 1), grey, scale.view(1, -1, 1, 1))

    def __call__(self, images: Any, **kwargs: Any) -> BatchFeature:
        return self.preprocess(images, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output.pop("_valid_kwargs_names", None)
        return output


def _as_batch(images: Any) -> list[Any]:
    """One input, or a batch: any sequence of inputs (list, tuple, a `datasets` column such as `ds["image"]`)
    or a 4D array/tensor [B, ...] -> a list of single inputs. Text and bytes are one input (a path, a file)."""
    if isinstance(images, Sequence) and not isinstance(images, (str, bytes, bytearray)):
        return list(images)
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        return list(images)
    return [images]
