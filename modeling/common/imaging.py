"""Reading radiograph pixels faithfully: 8/16-bit images, arrays, tensors and DICOM.

Everything here returns one grey-scale float32 array [H, W] with intensities in [0, 1], keeping the full
precision of 16-bit and DICOM data (nothing is squeezed through 8 bits). Anything that cannot be read that
way raises `ValueError` naming the input and the problem: a silent preprocessing mistake is the most common
way a chest X-ray model ends up predicting a constant.

This module is imported by the image processors, so it must stay usable as Hub remote code: only numpy,
Pillow and torch at import time; pydicom is imported where DICOM is read.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

# DICOM modalities that are projection radiographs (or secondary captures of them). Anything else (CT, MR,
# PET, ultrasound, structured reports ...) is refused rather than misread as a chest X-ray.
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "RG", "DR", "OT", ""})
_DICOM_SUFFIXES = (".dcm", ".dicom")
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, as Pillow's "L" conversion


def describe(source: Any) -> str:
    """A short name for an input, used in error messages."""
    if isinstance(source, (str, os.PathLike)):
        return f"'{os.fspath(source)}'"
    if isinstance(source, (bytes, bytearray)):
        return f"bytes input ({len(source)} bytes)"
    if isinstance(source, (np.ndarray, torch.Tensor)):
        return f"{type(source).__name__} of shape {tuple(source.shape)} and dtype {source.dtype}"
    if isinstance(source, Image.Image):
        return f"PIL image (mode {source.mode}, size {source.size})"
    return type(source).__name__


def is_dicom_bytes(data: bytes) -> bool:
    """DICOM Part 10 files carry the magic word 'DICM' after a 128-byte preamble."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def load_radiograph(source: Any, *, name: str | None = None) -> np.ndarray:
    """Read any supported input as a grey-scale float32 [H, W] array in [0, 1].

    Accepted: a path (PNG/JPEG/TIFF/... or DICOM), raw bytes, a `PIL.Image` (L, I;16, I, F, RGB, RGBA ...),
    a numpy array or torch tensor (2D, or with 1/3/4 channels; uint8/uint16 scaled by their bit depth,
    floats taken as already in [0, 1]), a `pydicom.Dataset`, or a `datasets` image dict
    (`{"bytes": ..., "path": ...}`). Colour images are converted to luminance (chest X-rays are grey).
    """
    name = name or describe(source)
    if isinstance(source, dict) and ("bytes" in source or "path" in source):
        data = source.get("bytes")
        return load_radiograph(data if data is not None else source["path"], name=name)
    if isinstance(source, (str, os.PathLike)):
        return _load_path(Path(source), name)
    if isinstance(source, (bytes, bytearray)):
        return _load_bytes(bytes(source), name)
    if isinstance(source, Image.Image):
        return _pil_to_unit_float(source, name)
    if isinstance(source, torch.Tensor):
        return array_to_unit_float(source.detach().cpu().numpy(), name, channels_first=True)
    if isinstance(source, np.ndarray):
        return array_to_unit_float(source, name, channels_first=None)
    if type(source).__name__ in ("Dataset", "FileDataset") and hasattr(source, "file_meta"):
        return dicom_to_unit_float(source, name)
    raise ValueError(
        f"{name}: unsupported input type; pass a path, bytes, PIL image, numpy array, torch tensor or pydicom Dataset"
    )


def _load_path(path: Path, name: str) -> np.ndarray:
    if not path.is_file():
        raise ValueError(f"{name}: no such file")
    data = path.read_bytes()
    if path.suffix.lower() in _DICOM_SUFFIXES and not is_dicom_bytes(data):
        # A .dcm without the Part 10 preamble: let pydicom try, it reads some raw data sets.
        return dicom_to_unit_float(_read_dicom(data, name, force=True), name)
    return _load_bytes(data, name)


def _load_bytes(data: bytes, name: str) -> np.ndarray:
    if not data:
        raise ValueError(f"{name}: empty input")
    if is_dicom_bytes(data):
        return dicom_to_unit_float(_read_dicom(data, name), name)
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"{name}: not a readable image or DICOM file ({error})") from error
    return _pil_to_unit_float(image, name)


def _pil_to_unit_float(image: Image.Image, name: str) -> np.ndarray:
    if image.mode in ("L", "RGB", "RGBA", "F") or image.mode.startswith("I"):
        array = np.asarray(image)
        if image.mode == "I":
            # 32-bit integer mode is how Pillow may open 16-bit PNGs: accept it only within 16 bits.
            if array.size and (array.min() < 0 or array.max() > 65535):
                raise ValueError(f"{name}: 32-bit integer pixels outside the 16-bit range are not supported")
            array = array.astype(np.uint16)
        return array_to_unit_float(array, name, channels_first=False)
    # Palette, 1-bit, LA, CMYK, YCbCr ...: Pillow's own luminance conversion is exact for these.
    return array_to_unit_float(np.asarray(image.convert("L")), name, channels_first=False)


def array_to_unit_float(
    array: np.ndarray, name: str, *, channels_first: bool | None, rescale: bool = True
) -> np.ndarray:
    """Validate an image array and bring it to grey-scale float32 [H, W] in [0, 1].

    `channels_first`: True for torch's [C, H, W], False for [H, W, C], None to decide from the shape
    (channels-last when the last axis has 1, 3 or 4 entries). `rescale`: divide integers by the maximum of
    their bit depth; when False, integer pixels must already be 0 or 1.
    """
    if array.size == 0 or 0 in array.shape:
        raise ValueError(f"{name}: empty image (shape {tuple(array.shape)})")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"{name}: unsupported pixel type {array.dtype}")
    array = _to_grey(array, name, channels_first)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError(f"{name}: contains NaN or infinite values")
        grey = array.astype(np.float32)
    elif rescale:
        if array.min() < 0:
            raise ValueError(f"{name}: negative integer pixels; convert signed data to [0, 1] floats first")
        grey = array.astype(np.float32) / float(_bit_depth_max(array))
    else:
        grey = array.astype(np.float32)
    low, high = float(grey.min()), float(grey.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(
            f"{name}: float intensities must lie in [0, 1], got [{low:.4g}, {high:.4g}]; pass uint8/uint16 "
            "pixels, or scale the array yourself (for 8-bit data stored as float, divide by 255)"
        )
    return grey


def _bit_depth_max(array: np.ndarray) -> int:
    if array.dtype == np.uint8 or array.dtype == np.int8:
        return 255
    if array.max() <= 65535:
        return 65535
    raise ValueError(f"integer pixels above 65535 (dtype {array.dtype}) have no known bit depth")


def _to_grey(array: np.ndarray, name: str, channels_first: bool | None) -> np.ndarray:
    if array.ndim == 2:
        return array
    if array.ndim != 3:
        raise ValueError(f"{name}: expected a 2D image or one with a channel axis, got shape {array.shape}")
    if channels_first is None:
        channels_first = array.shape[-1] not in (1, 3, 4) and array.shape[0] in (1, 3, 4)
    if channels_first:
        array = np.moveaxis(array, 0, -1)
    channels = array.shape[-1]
    if channels not in (1, 3, 4):
        raise ValueError(f"{name}: unsupported number of channels {channels} (expected 1, 3 or 4)")
    if channels == 1:
        return array[..., 0]
    rgb = array[..., :3]  # RGBA: the alpha channel carries no intensity
    if (rgb == rgb[..., :1]).all():
        return rgb[..., 0]
    if not np.isfinite(rgb).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    grey = rgb.astype(np.float32) @ _LUMA_WEIGHTS
    return np.round(grey).astype(array.dtype) if np.issubdtype(array.dtype, np.integer) else grey


def _read_dicom(data: bytes, name: str, force: bool = False) -> Any:
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError as error:  # pragma: no cover - pydicom is a dependency of hf-cxr
        raise ImportError("reading DICOM needs pydicom: pip install pydicom") from error
    try:
        return pydicom.dcmread(io.BytesIO(data), force=force)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{name}: corrupt or unreadable DICOM ({error})") from error


def dicom_to_unit_float(dataset: Any, name: str) -> np.ndarray:
    """A radiograph DICOM data set to grey-scale [0, 1].

    Applies Rescale Slope/Intercept, then the VOI LUT or the first window (WindowCenter/WindowWidth, the
    DICOM linear function), else the stored range; MONOCHROME1 (white = low values) is inverted.
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    if "PixelData" not in dataset:
        raise ValueError(f"{name}: DICOM has no pixel data (not an image)")
    modality = str(dataset.get("Modality", "") or "").upper()
    if modality not in RADIOGRAPH_MODALITIES:
        raise ValueError(
            f"{name}: DICOM modality {modality} is not a projection radiograph "
            f"(accepted: {', '.join(sorted(m for m in RADIOGRAPH_MODALITIES if m))})"
        )
    if int(dataset.get("NumberOfFrames", 1) or 1) > 1:
        raise ValueError(f"{name}: multi-frame DICOM ({dataset.NumberOfFrames} frames) is not a single radiograph")
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"{name}: photometric interpretation {photometric} is not a grey-scale radiograph")
    try:
        stored = dataset.pixel_array
    except Exception as error:  # pydicom raises many types for truncated or compressed data
        raise ValueError(f"{name}: cannot decode DICOM pixel data ({error})") from error
    if stored.ndim != 2:
        raise ValueError(f"{name}: DICOM pixel data has shape {stored.shape}, expected a 2D image")
    values = np.asarray(apply_modality_lut(stored, dataset), dtype=np.float64)
    if "VOILUTSequence" in dataset:
        lut_item = dataset.VOILUTSequence[0]
        out_bits = int(lut_item.LUTDescriptor[2])
        grey = np.asarray(apply_voi_lut(values, dataset), dtype=np.float64) / float(2**out_bits - 1)
    elif "WindowCenter" in dataset and "WindowWidth" in dataset:
        center = float(_first(dataset.WindowCenter))
        width = max(float(_first(dataset.WindowWidth)), 1.0)
        grey = (values - (center - 0.5)) / (width - 1.0 if width > 1.0 else 1.0) + 0.5
    else:
        low, high = values.min(), values.max()
        grey = (values - low) / (high - low) if high > low else np.zeros_like(values)
    grey = np.clip(grey, 0.0, 1.0).astype(np.float32)
    return 1.0 - grey if photometric == "MONOCHROME1" else grey


def _first(value: Any) -> Any:
    """DICOM multi-valued elements (several windows) come as sequences: the first is the default."""
    return value[0] if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else value
