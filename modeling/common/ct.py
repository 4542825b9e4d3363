"""Reading a CT series (a folder of DICOM slices) as a volume in Hounsfield units.

Used by the Lung-PET-CT-Dx converter and by 3D model processors at inference, so it follows the remote-code
rule of this folder: numpy (and, through `imaging`, torch and Pillow) at import time; pydicom is imported (by
`imaging.import_pydicom`, which names the package when it is missing) only when a series is read. Reading,
decoding and the modality transform are the radiograph reader's (`imaging.read_dicom`,
`imaging.modality_values`: pydicom's `apply_modality_lut`), so both readers name the file and treat empty
attributes the same way.

Slices are ordered by their position along the slice normal (ImagePositionPatient projected on the cross
product of the ImageOrientationPatient row and column vectors; for axial series that is the z coordinate),
never by file name or InstanceNumber, which archives do not keep consistent.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .imaging import modality_values, read_dicom

HU_MIN, HU_MAX = -32768, 32767  # int16 storage range


@dataclass
class CTVolume:
    """A CT series in HU: `hu` is int16 [Z, H, W] with Z sorted by ascending slice position (mm)."""

    hu: np.ndarray
    positions: list[float]
    slice_spacing: float
    pixel_spacing: tuple[float, float]
    slice_thickness: float | None
    sop_instance_uids: list[str]
    files: list[str]
    series_instance_uid: str
    series_description: str


@dataclass(frozen=True)
class SeriesHeader:
    """What the header of a series' first slice says, read without pixels (to decide whether to convert it)."""

    modality: str
    rows: int
    columns: int
    series_instance_uid: str
    series_description: str
    image_type: tuple[str, ...]


def _dcmread(path: str | os.PathLike, stop_before_pixels: bool = False) -> Any:
    return read_dicom(path, f"'{path}'", stop_before_pixels=stop_before_pixels)


def read_series_header(path: str | os.PathLike) -> SeriesHeader:
    """The modality, matrix size and series identity of one slice, without decoding pixels. Raises `ValueError`
    naming `path` for a file pydicom cannot read (`imaging.read_dicom`), `ImportError` without pydicom."""
    dataset = _dcmread(path, stop_before_pixels=True)
    return SeriesHeader(
        modality=str(dataset.get("Modality", "") or "").upper(),
        rows=int(dataset.get("Rows", 0) or 0),
        columns=int(dataset.get("Columns", 0) or 0),
        series_instance_uid=str(dataset.get("SeriesInstanceUID", "") or ""),
        series_description=str(dataset.get("SeriesDescription", "") or ""),
        image_type=tuple(str(value).upper() for value in (dataset.get("ImageType") or ())),
    )


def slice_position(dataset: Any, name: str) -> float:
    """A slice's position (mm) along the series' normal; for axial slices, ImagePositionPatient z.

    Raises `ValueError` naming `name` when the slice has no ImagePositionPatient (or not 3 values).
    """
    position = dataset.get("ImagePositionPatient")
    if position is None or len(position) != 3:
        raise ValueError(f"{name}: no ImagePositionPatient, cannot place the slice in the volume")
    orientation = dataset.get("ImageOrientationPatient")
    if orientation is None or len(orientation) != 6:
        return float(position[2])
    normal = np.cross(np.asarray(orientation[:3], dtype=np.float64), np.asarray(orientation[3:], dtype=np.float64))
    return float(np.dot(normal, np.asarray(position, dtype=np.float64)))


def slice_to_hu(dataset: Any, name: str) -> np.ndarray:
    """One slice's stored pixels -> HU as int16 [H, W], rounded and clipped to the int16 range.

    The Modality LUT of the slice with pydicom's `apply_modality_lut` (RescaleSlope * stored + RescaleIntercept
    for CT; an empty slope or intercept is the identity's 1 or 0). Raises `ValueError` naming `name` for pixel
    data that is missing, cannot be decoded or is not one 2D slice (`imaging.modality_values`).
    """
    hu = modality_values(dataset, name)
    return np.clip(np.rint(hu), HU_MIN, HU_MAX).astype(np.int16)


def read_ct_series(files: Sequence[str | os.PathLike]) -> CTVolume:
    """Read the slices of one CT series into a `CTVolume` (sorted by position, in HU, int16).

    Raises `ValueError` when `files` is empty, and naming the file for an unreadable slice (`imaging.read_dicom`),
    a slice without ImagePositionPatient, a slice of another series or size, two slices at the same position, and
    pixel data that is missing, cannot be decoded or is not one 2D slice (`slice_to_hu`); `ImportError` without
    pydicom.
    """
    if not files:
        raise ValueError("no DICOM files given")
    slices = []
    for path in files:
        name = f"'{path}'"
        dataset = _dcmread(path)
        slices.append((slice_position(dataset, name), str(path), dataset))
    slices.sort(key=lambda entry: entry[0])
    first = slices[0][2]
    series_uid = str(first.get("SeriesInstanceUID", "") or "")
    shape = (int(first.Rows), int(first.Columns))
    hu = np.empty((len(slices), *shape), dtype=np.int16)
    for index, (position, path, dataset) in enumerate(slices):
        name = f"'{path}'"
        if str(dataset.get("SeriesInstanceUID", "") or "") != series_uid:
            raise ValueError(f"{name}: belongs to series {dataset.get('SeriesInstanceUID')}, not {series_uid}")
        if (int(dataset.Rows), int(dataset.Columns)) != shape:
            raise ValueError(f"{name}: slice size {dataset.Rows}x{dataset.Columns} differs from {shape}")
        if index and np.isclose(position, slices[index - 1][0]):
            raise ValueError(f"{name}: same position ({position} mm) as '{slices[index - 1][1]}'")
        hu[index] = slice_to_hu(dataset, name)
    positions = [entry[0] for entry in slices]
    spacing = float(np.median(np.diff(positions))) if len(positions) > 1 else float(first.get("SliceThickness", 0) or 0)
    pixel_spacing = first.get("PixelSpacing") or (0.0, 0.0)
    thickness = first.get("SliceThickness")
    return CTVolume(
        hu=hu,
        positions=positions,
        slice_spacing=spacing,
        pixel_spacing=(float(pixel_spacing[0]), float(pixel_spacing[1])),
        slice_thickness=float(thickness) if thickness not in (None, "") else None,
        sop_instance_uids=[str(entry[2].get("SOPInstanceUID", "")) for entry in slices],
        files=[entry[1] for entry in slices],
        series_instance_uid=series_uid,
        series_description=str(first.get("SeriesDescription", "") or ""),
    )


def read_ct_folder(folder: str | os.PathLike) -> CTVolume:
    """`read_ct_series` on every `*.dcm` file in a folder (names with spaces are fine).

    Raises `ValueError` when the folder holds no `.dcm` file, and as `read_ct_series` does; `FileNotFoundError`
    (from `Path.iterdir`) when the folder does not exist.
    """
    files = sorted(str(path) for path in Path(folder).iterdir() if path.suffix.lower() == ".dcm")
    if not files:
        raise ValueError(f"'{folder}': no .dcm files")
    return read_ct_series(files)
