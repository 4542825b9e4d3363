"""How converted radiographs are stored: resized once at conversion (integer box reduction, then Lanczos), encoded
as PNG (the portable default) or raw uncompressed files (`--image-format raw`, faster to read), 16-bit kept."""

from __future__ import annotations

import io
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from hf_cxr.data._common import BadFileError, DatasetSource, render_card, size_category, skipped_section
from hf_cxr.imaging import exif_orientation, load_radiograph

# `image_format` of a conversion. Both store the `image` column as `datasets.Image()`, so every reader (`datasets`,
# the processors, `eval_transform`/`train_transform`, `hf-cxr evaluate`) decodes either without being told:
# "png" is the portable column (PNG, or JPEG for resized JPEG sources); "raw" stores uncompressed image files
# (binary PGM for 8-bit pixels, uncompressed TIFF for 16-bit ones), which Pillow decodes with a memory copy.
IMAGE_FORMATS = ("png", "raw")
IMAGE_FORMAT_DESCRIPTIONS = {
    "png": (
        "PNG files (8-bit, or 16-bit where the source was 16-bit; resized JPEG sources stay JPEG, quality 95; a "
        "file that needed neither resizing nor turning upright is stored as it was)"
    ),
    "raw": (
        "uncompressed image files (`--image-format raw`): binary PGM for 8-bit pixels, uncompressed TIFF for "
        "16-bit ones; larger on disk than PNG, several times faster to decode, read by the same `datasets.Image` "
        "feature"
    ),
}
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I"})
# PNG writing: zlib level 1 with run-length strategy (`zlib.Z_RLE`): about as fast as storing, smaller than zlib's
# default (level 6) on radiographs (97 against 103 KiB for a 512-px NIH image).
PNG_OPTIONS = {"compress_level": 1, "compress_type": zlib.Z_RLE}
JPEG_QUALITY = 95


@dataclass(frozen=True)
class StoredImage:
    """An image file as it goes into the `Image` feature, with the (upright) size it had on disk, in pixels."""

    data: bytes
    original_width: int
    original_height: int
    width: int
    height: int


def resized_size(width: int, height: int, image_size: int | None) -> tuple[int, int]:
    """The stored size in pixels: shorter side `image_size`, aspect ratio kept, never enlarged."""
    if image_size is None or min(width, height) <= image_size:
        return width, height
    scale = image_size / min(width, height)
    return max(round(width * scale), 1), max(round(height * scale), 1)


def check_image_format(image_format: str) -> str:
    """`image_format` if it is one of `IMAGE_FORMATS`. Raises `ValueError` otherwise."""
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    return image_format


def check_storage_options(image_size: int | None, image_format: str) -> None:
    """A radiograph converter's storage arguments, checked before anything is read. Raises `ValueError` unless
    `image_size` is None or a positive number of pixels and `image_format` is one of `IMAGE_FORMATS`."""
    if image_size is not None and image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    check_image_format(image_format)


def downsize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`image` (Pillow mode L or F) resized to `size` (width, height; no larger than the image): first an exact
    integer box average (`Image.reduce(k)`, k the largest integer factor that keeps both sides >= `size`), then a
    Lanczos resample to the exact size when one is still needed. For a 1024-px image stored at 512 px that is a
    2 x 2 average and nothing else. Mode F (float) keeps 16-bit precision throughout."""
    width, height = size
    factor = min(image.width // width, image.height // height)
    if factor > 1:
        image = image.reduce(factor)
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    return image


def encode_pixels(image: Image.Image, image_format: str, jpeg: bool = False) -> bytes:
    """An 8-bit (mode L) or 16-bit (mode I;16) grey image as the bytes of an image file: PNG (`PNG_OPTIONS`) for
    "png", or JPEG (quality `JPEG_QUALITY`) when `jpeg` is set and the image is 8-bit; binary PGM (8-bit) or
    uncompressed TIFF (16-bit) for "raw"."""
    buffer = io.BytesIO()
    if image_format == "raw":
        image.save(buffer, format="PPM" if image.mode == "L" else "TIFF")
    elif jpeg and image.mode == "L":
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    else:
        image.save(buffer, format="PNG", **PNG_OPTIONS)
    return buffer.getvalue()


def encode_grey(grey: np.ndarray, image_format: str = "raw") -> bytes:
    """A grey float image [H, W] in [0, 1] as a 16-bit image file (`encode_pixels`; values rounded to 1/65535):
    how images made as arrays (the benchmarks' simulated findings) are stored for `hf_cxr.training.train`, which
    reads an `Image` column. Raises `ValueError` for an image that is not 2D or has values outside [0, 1]."""
    pixels = np.asarray(grey, dtype=np.float32)
    if pixels.ndim != 2 or not np.isfinite(pixels).all() or pixels.min() < 0.0 or pixels.max() > 1.0:
        raise ValueError(f"encode_grey: expects a 2D image with values in [0, 1], got shape {pixels.shape}")
    sixteen_bit = Image.fromarray(np.round(pixels * 65535.0).astype(np.uint16))
    return encode_pixels(sixteen_bit, check_image_format(image_format))


def _open_image(data: bytes, name: str, image_size: int | None) -> tuple[Image.Image, int, tuple[int, int]]:
    """Decode an image file: (the image as stored, its EXIF Orientation, its upright size). An 8-bit grey JPEG that
    will be downsized is decoded with DCT scaling (`Image.draft`) to the smallest power-of-two reduction that is
    still at least the stored size. Raises `ValueError` naming `name` for anything Pillow cannot read completely."""
    try:
        image = Image.open(io.BytesIO(data))
        stored_width, stored_height = image.size
        orientation = 1
        if image.format == "JPEG":
            orientation = exif_orientation(image)  # JPEG's EXIF is read with the header
            turned = orientation >= 5  # orientations 5-8 swap width and height
            upright_size = (stored_height, stored_width) if turned else (stored_width, stored_height)
            target = resized_size(*upright_size, image_size)
            if image.mode == "L" and target != upright_size:
                image.draft("L", (target[1], target[0]) if turned else target)
        image.load()
        if image.format != "JPEG":
            orientation = exif_orientation(image)  # a PNG may carry its eXIf chunk after the pixels
    except UnidentifiedImageError as error:  # Pillow's message names only the in-memory buffer
        raise ValueError(f"{name}: not a readable image file (no image format Pillow reads)") from error
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"{name}: not a readable image file ({error})") from error
    upright_size = (stored_height, stored_width) if orientation >= 5 else (stored_width, stored_height)
    return image, orientation, upright_size


def encode_radiograph(path: Path, image_size: int | None, image_format: str = "png") -> StoredImage:
    """Read a radiograph file and return the image file to store, shorter side `image_size` px (None: unchanged).

    Pixels are stored upright: an EXIF Orientation is applied, as every `datasets`, transformers and hf-cxr
    decoder applies it, so the stored pixels are what the image shows whatever reads them later;
    `original_width`/`original_height` are that displayed (upright) size, in pixels.

    Resizing (`downsize`): an exact integer box average by the largest factor that keeps the image at least the
    stored size, then a Lanczos resample to the exact size. 8-bit grey sources (Pillow mode L) are resized in 8-bit
    integer arithmetic, and an 8-bit grey JPEG is first decoded at a reduced scale (`Image.draft`, DCT scaling, a
    power of two that keeps it at least the stored size). Every other source (16-bit, colour, palette, ...) is read at
    full precision (`load_radiograph`: float32 grey in [0, 1]), resized in float and written back at its bit depth:
    a 16-bit source stays 16-bit.

    Tolerance against the earlier conversion (the whole image resized with Lanczos in float), in 8-bit levels: mean
    absolute difference at most 1 and 99.9 % of pixels within 12 levels (measured on real NIH PNGs, see
    `docs/benchmarks.md`: mean 0.34 for 1024 px stored at 512, 0.40-0.56 at 224-256 px, 0.85 for 256 px stored at
    64). The box average is a little softer than Lanczos, whose sharpening lobes it lacks; the largest differences
    (up to about 90 levels, a few pixels per image) sit on one-pixel high-contrast edges such as burned-in letters.

    `image_format` (`IMAGE_FORMATS`): "png" writes PNG (`PNG_OPTIONS`) at the source's bit depth; a resized JPEG
    source stays JPEG (quality 95) so the output is not several times larger than the input; a file that needs
    neither resizing nor turning is stored byte for byte. "raw" always writes an uncompressed file (`encode_pixels`).

    Raises `ValueError` naming the file for anything that cannot be read completely (corrupt, truncated, not an
    image) and `OSError` when the file cannot be opened.
    """
    check_image_format(image_format)
    name = f"'{path}'"
    data = path.read_bytes()
    image, orientation, (width, height) = _open_image(data, name, image_size)
    new_size = resized_size(width, height, image_size)
    resize = new_size != (width, height)
    if not resize and orientation == 1 and image_format == "png":
        return StoredImage(data, width, height, width, height)
    jpeg = resize and image.format == "JPEG"
    if image.mode == "L":  # 8-bit grey: integer arithmetic
        upright_image = ImageOps.exif_transpose(image) if orientation != 1 else image
        pixels = downsize(upright_image, new_size) if resize else upright_image
        return StoredImage(encode_pixels(pixels, image_format, jpeg), width, height, *new_size)
    sixteen_bit = image.mode in _SIXTEEN_BIT_MODES
    grey = load_radiograph(image, name=name)  # float32 in [0, 1], upright
    if resize:
        grey = np.asarray(downsize(Image.fromarray(grey), new_size), dtype=np.float32)
    top = 65535 if sixteen_bit else 255
    pixels = np.clip(np.rint(grey * top), 0, top).astype(np.uint16 if sixteen_bit else np.uint8)
    return StoredImage(encode_pixels(Image.fromarray(pixels), image_format, jpeg), width, height, *new_size)


def stored_image(path: Path, image_size: int | None, image_format: str) -> StoredImage:
    """`encode_radiograph`, with a file that cannot be read raised as `BadFileError` (which the conversion reports,
    or skips and lists under `skip_bad`). Raises `BadFileError` (a `ValueError`) naming `path` for every
    `ValueError` or `OSError` of `encode_radiograph`: a missing, corrupt, truncated or non-image file, and also an
    `image_format` not in `IMAGE_FORMATS` (check it first with `check_image_format`)."""
    try:
        return encode_radiograph(path, image_size, image_format)
    except (ValueError, OSError) as error:
        raise BadFileError(path, str(error).removeprefix(f"'{path}': ")) from error


def image_storage_text(image_size: int | None, image_format: str) -> str:
    """The card's sentence on how the images are stored."""
    size = f"shorter side at most {image_size} px" if image_size else "at their original size"
    return f"Images are stored {size}, as {IMAGE_FORMAT_DESCRIPTIONS[image_format]}."


def storage_summary(settings: Mapping[str, Any]) -> str:
    """How a conversion stored its images, for its console summary: e.g. `shorter side at most 224 px, raw`."""
    size = f"shorter side at most {settings['image_size']} px" if settings["image_size"] else "original size"
    return f"{size}, {settings['image_format']}"


def print_conversion_summary(
    title: str, settings: Mapping[str, Any], table: str, skipped: Sequence[Mapping[str, str]], *details: str
) -> None:
    """A radiograph conversion's console summary: `TITLE conversion (how the images were stored, details):` over
    the counts table, then how many unreadable files were skipped, if any."""
    print(f"{title} conversion ({', '.join([storage_summary(settings), *details])}):\n{table}")
    if skipped:
        print(f"skipped {len(skipped)} unreadable files (listed in the card)")


def add_storage_section(card: str, text: str) -> str:
    """`card` with the image storage stated: the card templates may place it (`$image_storage`); otherwise it is
    appended as its own section."""
    return card if text in card else card.rstrip("\n") + f"\n\n## Image storage\n\n{text}\n"


def render_image_dataset_card(
    source: DatasetSource, template_name: str, fallback: str, settings: Mapping[str, Any], total: int,
    skipped: Sequence[Mapping[str, str]], labels: Sequence[str], **fields: Any,
) -> str:  # fmt: skip
    """A converted radiograph dataset's card: `fields` plus what every such card states (image count and size
    category, stored size and format, skipped files, the label names, the source's provenance), with the storage
    section added."""
    storage = image_storage_text(settings["image_size"], settings["image_format"])
    card = render_card(template_name, fallback, total_images=total, size_category=size_category(total),
                       image_size=settings["image_size"] or "original", image_storage=storage,
                       skipped_section=skipped_section(skipped), labels=", ".join(f"`{name}`" for name in labels),
                       **source.card_fields(), **fields)  # fmt: skip
    return add_storage_section(card, storage)
