"""Reading radiograph pixels faithfully: 8/16-bit images, arrays, tensors and DICOM.

Everything here returns one grey-scale float32 array [H, W] with intensities in [0, 1], keeping the full
precision of 16-bit and DICOM data (nothing is squeezed through 8 bits). Anything that cannot be read that
way raises `ValueError` naming the input and the problem: a silent preprocessing mistake is the most common
way a chest X-ray model ends up predicting a constant.

This module is imported by the image processors and the CT reader, so it must stay usable as Hub remote code:
only numpy, Pillow and torch are imported. pydicom is needed only to read DICOM and is imported then, inside a
`try` block (`import_pydicom`): transformers' remote-code import check skips imports in `try` blocks, so a saved
model folder loads without pydicom, and reading a DICOM without it raises an `ImportError` naming the package.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

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
    a numpy array or torch tensor (2D, or with 1/3/4 channels), a `pydicom.Dataset`, or a `datasets` image dict
    (`{"bytes": ..., "path": ...}`). Colour images are converted to luminance (chest X-rays are grey).

    Intensity scale (`integer_scale`): uint8 pixels are divided by 255 and uint16 pixels by 65535, as are image
    files, whose bit depth the file records (an 8-bit JPEG, a 16-bit PNG). Other integer types (int16, int32,
    int64, uint32, an int64 tensor, a PIL mode "I" image) do not say their bit depth, so their values decide:
    all within 0..255 is 8-bit (/ 255), else all within 0..65535 is 16-bit (/ 65535); negative values or values
    above 65535 raise `ValueError`. Cast to uint8/uint16 to state the bit depth yourself (a 16-bit image whose
    brightest pixel is 255 or less would otherwise be read as 8-bit). Floats are taken as already in [0, 1].

    Orientation: a file, bytes or PIL image carrying an EXIF Orientation is turned upright (`upright`), as
    `transformers.image_utils.load_image` and the `datasets` Image feature do, so every path gives the same image.
    DICOM: see `dicom_to_unit_float`.

    Raises `ValueError` naming the input for anything that cannot be read this way: an unsupported input type, a
    path that is not a file, empty or undecodable bytes, an empty array, an unsupported pixel type or channel
    count, NaN or infinite values, floats outside [0, 1], integers whose bit depth cannot be told (negative or above
    65535), and a DICOM that `dicom_to_unit_float` refuses; `ImportError` when a DICOM is read without pydicom
    installed.
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
        return dicom_to_unit_float(read_dicom(data, name, force=True), name)
    return _load_bytes(data, name)


def _load_bytes(data: bytes, name: str) -> np.ndarray:
    if not data:
        raise ValueError(f"{name}: empty input")
    if is_dicom_bytes(data):
        return dicom_to_unit_float(read_dicom(data, name), name)
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except UnidentifiedImageError as error:  # PIL's message names only the in-memory buffer
        raise ValueError(f"{name}: not a readable image or DICOM file (no image format Pillow reads)") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"{name}: not a readable image or DICOM file ({error})") from error
    return _pil_to_unit_float(image, name)


def exif_orientation(image: Image.Image) -> int:
    """The image's EXIF Orientation (1-8; 1, stored upright, when absent or not a valid value)."""
    value = image.getexif().get(ExifTags.Base.Orientation)
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def upright(image: Image.Image) -> Image.Image:
    """`image` as it is meant to be displayed: its EXIF Orientation applied (Pillow's `exif_transpose`).

    What `transformers.image_utils.load_image` and the `datasets` Image feature do; the result carries no
    orientation any more, so applying this twice is harmless. An image without one is returned as it is.
    """
    return ImageOps.exif_transpose(image) if exif_orientation(image) != 1 else image


def _pil_to_unit_float(image: Image.Image, name: str) -> np.ndarray:
    # A PNG holds at most 16 bits per grey sample; Pillow versions that open 16-bit PNGs as 32-bit mode "I" lose
    # that fact in the dtype, so it is taken from the file (the transposed copy below no longer knows its format).
    sixteen_bit_file = image.mode == "I" and image.format == "PNG"
    image = upright(image)
    if image.mode in ("L", "RGB", "RGBA", "F") or image.mode.startswith("I"):
        array = np.asarray(image)
        if sixteen_bit_file and array.size and array.min() >= 0 and array.max() <= 65535:
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
    their bit depth (`integer_scale`); when False, integer pixels must already be 0 or 1. Floats must lie in
    [0, 1]. Raises `ValueError` naming `name` for empty, non-numeric, non-finite or out-of-range pixels and for
    unsupported shapes.
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
        grey = array.astype(np.float32) / float(integer_scale(array, name))
    else:
        grey = array.astype(np.float32)
    low, high = float(grey.min()), float(grey.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(
            f"{name}: float intensities must lie in [0, 1], got [{low:.4g}, {high:.4g}]; pass uint8/uint16 "
            "pixels, or scale the array yourself (for 8-bit data stored as float, divide by 255)"
        )
    return grey


def integer_scale(array: np.ndarray, name: str) -> int:
    """The value that is white in an integer image: 255 (8-bit) or 65535 (16-bit).

    uint8 and uint16 state their bit depth. Other integer types do not (8-bit pixels often arrive as int64 after
    a `torch`/`datasets` conversion), so the values decide: all within 0..255 is 8-bit, else all within 0..65535
    is 16-bit. Raises `ValueError` naming `name` for negative values and for values above 65535.
    """
    if array.dtype.kind == "u" and array.dtype.itemsize in (1, 2):  # any byte order
        return 255 if array.dtype.itemsize == 1 else 65535
    low, high = int(array.min()), int(array.max())
    if low < 0:
        raise ValueError(
            f"{name}: negative integer pixels (minimum {low}, dtype {array.dtype}); convert signed data to [0, 1] "
            "floats first"
        )
    if high <= 255:
        return 255
    if high <= 65535:
        return 65535
    raise ValueError(
        f"{name}: integer pixels up to {high} (dtype {array.dtype}) exceed 65535, so their bit depth is unknown; "
        "scale them to [0, 1] floats first"
    )


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


def import_pydicom() -> Any:
    """Import pydicom (with `pydicom.pixels`), which only DICOM reading needs; returns the module.

    The import sits in a `try` block on purpose: transformers' remote-code loader refuses a module whose imports
    outside `try` blocks are missing, and a saved model folder must load without pydicom. Raises `ImportError`
    naming the package when it is not installed.
    """
    try:
        import pydicom
        import pydicom.errors
        import pydicom.pixels
    except ImportError as error:
        raise ImportError(
            "reading DICOM needs the pydicom package, which is not installed: pip install pydicom"
        ) from error
    return pydicom


def read_dicom(
    source: str | os.PathLike | bytes, name: str, *, force: bool = False, stop_before_pixels: bool = False
) -> Any:
    """Read a DICOM data set from a path or bytes with pydicom (pixels are decoded by `decode_dicom_pixels`).

    `force` reads files without the Part 10 preamble; `stop_before_pixels` reads the header only. Raises
    `ValueError` naming `name` for a file pydicom cannot parse, `ImportError` without pydicom.
    """
    pydicom = import_pydicom()
    handle = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    unreadable = (pydicom.errors.InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError, AttributeError)
    try:
        return pydicom.dcmread(handle, force=force, stop_before_pixels=stop_before_pixels)
    except unreadable as error:
        raise ValueError(f"{name}: corrupt or unreadable DICOM ({error})") from error


def decode_dicom_pixels(dataset: Any, name: str) -> np.ndarray:
    """The stored values of a single-frame DICOM image: a 2D array (pydicom's `pixel_array`).

    Raises `ValueError` naming `name` when the data set has no pixel data, the data cannot be decoded
    (truncated, or a compression no installed decoder handles), or it is not one 2D frame.
    """
    if "PixelData" not in dataset:
        raise ValueError(f"{name}: DICOM has no pixel data (not an image)")
    try:
        stored = dataset.pixel_array
    except Exception as error:  # pydicom raises many types for truncated or compressed data
        raise ValueError(f"{name}: cannot decode DICOM pixel data ({error})") from error
    if stored.ndim != 2:
        raise ValueError(f"{name}: DICOM pixel data has shape {stored.shape}, expected one 2D image")
    return stored


def modality_values(dataset: Any, name: str) -> np.ndarray:
    """A DICOM image's pixels after the Modality LUT (HU for CT), with pydicom's `apply_modality_lut`; float64.

    A Modality LUT Sequence is used when its first item has a LUTDescriptor and LUTData, else Rescale Slope and
    Intercept. Present-but-empty attributes fall back as the standard's defaults do: an empty or absent slope
    is 1 and an empty or absent intercept 0 (the identity when both are), and a LUT sequence without items or
    with an empty first item is skipped. Raises `ValueError` naming `name` and the attribute for a LUT item with
    only one of LUTDescriptor/LUTData, a Rescale Slope of 0, or a LUT pydicom cannot apply; see
    `decode_dicom_pixels` for the pixel errors.
    """
    pydicom = import_pydicom()
    stored = decode_dicom_pixels(dataset, name)
    view = _lut_view(pydicom, dataset)
    item = _lut_item(dataset, "ModalityLUTSequence", name)
    if item is not None:
        view.ModalityLUTSequence = [item]
    else:
        slope = _first_number(dataset, "RescaleSlope", name)
        intercept = _first_number(dataset, "RescaleIntercept", name)
        if slope is not None or intercept is not None:
            view.RescaleSlope = slope if slope is not None else 1
            view.RescaleIntercept = intercept if intercept is not None else 0
            if float(view.RescaleSlope) == 0:
                raise ValueError(f"{name}: RescaleSlope is 0, which maps every pixel to one value")
    try:
        values = pydicom.pixels.apply_modality_lut(stored, view)
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as error:
        raise ValueError(f"{name}: cannot apply the Modality LUT ({error})") from error
    return np.asarray(values, dtype=np.float64)


def dicom_to_unit_float(dataset: Any, name: str) -> np.ndarray:
    """A radiograph DICOM data set to grey-scale float32 [H, W] in [0, 1], as a DICOM viewer shows it.

    pydicom applies the Modality LUT or Rescale Slope/Intercept (`modality_values`), then the first VOI
    transform (`pydicom.pixels.apply_voi_lut`): the VOI LUT Sequence (output divided by the maximum of the LUT's
    bit depth, LUTDescriptor's third value), else the first window WindowCenter/WindowWidth with its VOI LUT
    Function (LINEAR when absent or empty, LINEAR_EXACT or SIGMOID), evaluated on the output range [0, 1].
    Without a VOI transform the range of the modality values is stretched to [0, 1]. MONOCHROME1 (white = low
    values) is inverted. Present-but-empty VOI attributes: a VOI LUT Sequence without items or with an empty
    first item falls through to the window, and an empty WindowCenter and WindowWidth to no VOI transform.

    Raises `ValueError` naming `name` for a DICOM that is not one grey radiograph frame (other modalities,
    multi-frame, colour, no or undecodable pixels), for a window with only one of WindowCenter/WindowWidth or
    one pydicom refuses (a LINEAR width below 1, an unknown VOI LUT Function), and for malformed LUTs;
    `ImportError` without pydicom.
    """
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
    photometric = str(dataset.get("PhotometricInterpretation") or "MONOCHROME2").upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"{name}: photometric interpretation {photometric} is not a grey-scale radiograph")
    grey = _voi_unit_range(modality_values(dataset, name), dataset, name)
    grey = np.clip(grey, 0.0, 1.0).astype(np.float32)
    return 1.0 - grey if photometric == "MONOCHROME1" else grey


def _voi_unit_range(values: np.ndarray, dataset: Any, name: str) -> np.ndarray:
    """Modality values -> [0, 1] through the data set's first VOI transform (see `dicom_to_unit_float`)."""
    pydicom = import_pydicom()
    view = _lut_view(pydicom, dataset)
    item = _lut_item(dataset, "VOILUTSequence", name)
    if item is not None:
        entries, first, bits = (int(value) for value in item.LUTDescriptor)
        entries = entries or 65536  # PS3.3 C.11.2.1.1: 0 means 2**16 entries
        view.VOILUTSequence = [item]
        # A LUT is indexed by integer values; pydicom maps values outside its input range to the first or last
        # entry, which clamping here does without pydicom's cast of such values to the LUT's unsigned type.
        indices = np.clip(np.rint(values), first, first + entries - 1).astype(np.int64)
        try:
            output = pydicom.pixels.apply_voi_lut(indices, view)
        except (ValueError, TypeError, AttributeError, KeyError, IndexError, NotImplementedError) as error:
            raise ValueError(f"{name}: cannot apply the VOI LUT Sequence ({error})") from error
        return np.asarray(output, dtype=np.float64) / float(2**bits - 1)
    center = _first_number(dataset, "WindowCenter", name)
    width = _first_number(dataset, "WindowWidth", name)
    if center is None and width is None:
        low, high = values.min(), values.max()
        return (values - low) / (high - low) if high > low else np.zeros_like(values)
    if center is None or width is None:
        empty, given = ("WindowCenter", "WindowWidth") if center is None else ("WindowWidth", "WindowCenter")
        raise ValueError(f"{name}: {empty} is empty but {given} has a value; a window needs both")
    # pydicom scales the window's output to [y_min, y_max] = [0, 2**BitsStored - 1] of an unsigned image without
    # a modality transform (applied above already): BitsStored 1 makes that exactly [0, 1].
    view.PhotometricInterpretation = "MONOCHROME2"
    view.PixelRepresentation = 0
    view.BitsStored = 1
    view.WindowCenter, view.WindowWidth = center, width
    function = dataset.get("VOILUTFunction")
    if function:
        view.VOILUTFunction = str(function)
    try:
        return np.asarray(pydicom.pixels.apply_voi_lut(values, view), dtype=np.float64)
    except (ValueError, TypeError, AttributeError) as error:
        raise ValueError(f"{name}: cannot apply the window ({error})") from error


def _lut_view(pydicom: Any, dataset: Any) -> Any:
    """An empty data set with `dataset`'s encoding, holding only the attributes one pydicom LUT function is to
    see (cleaned of empty values); `dataset` itself is never modified (pydicom's functions write to theirs)."""
    view = pydicom.Dataset()
    file_meta = getattr(dataset, "file_meta", None)
    if file_meta is not None:
        view.file_meta = file_meta  # the byte order of OW LUT data
    view.set_original_encoding(*dataset.original_encoding)
    return view


def _lut_item(dataset: Any, keyword: str, name: str) -> Any:
    """The first item of a LUT sequence, or None when the sequence is absent, has no items or an empty first item.

    Raises `ValueError` naming `name` and the attribute when the item has only one of LUTDescriptor/LUTData, or a
    LUTDescriptor without three values.
    """
    sequence = dataset.get(keyword)
    if not sequence:
        return None
    item = sequence[0]
    descriptor, data = item.get("LUTDescriptor"), item.get("LUTData")
    descriptor = None if descriptor is None or len(descriptor) == 0 else descriptor
    data = None if data is None or len(data) == 0 else data
    if descriptor is None and data is None:
        return None
    if descriptor is None or data is None:
        empty, given = ("LUTDescriptor", "LUTData") if descriptor is None else ("LUTData", "LUTDescriptor")
        raise ValueError(f"{name}: the {keyword} item has {given} but its {empty} is empty")
    if len(descriptor) != 3:
        raise ValueError(f"{name}: the {keyword} item's LUTDescriptor has {len(descriptor)} values, expected 3")
    return item


def _first_number(dataset: Any, keyword: str, name: str) -> Any:
    """The first value of a numeric attribute (several windows come as a list; the first is the default), or None
    when the attribute is absent or empty. Returned as pydicom holds it (a DS value keeps its text);
    `ValueError` naming `name` and `keyword` when it is not a number."""
    value = dataset.get(keyword)
    if _is_multi_value(value):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return None
    try:
        float(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name}: {keyword} {value!r} is not a number") from error
    return value


def _is_multi_value(value: Any) -> bool:
    return isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue"
