"""MMCAF-Net processor: CT series + clinical record -> `pixel_values` [N, 1, D, H, W], `clinical_values` [N, 7].

Volume: a DICOM series folder, a list of DICOM files, a numpy/torch volume in HU [Z, H, W], or a Lung-PET-CT-Dx
dataset row (`volume`, `lesion_slice_range` and the raw clinical columns). Slices are ordered by position
(`ct.read_ct_series`), converted to HU with slope/intercept, windowed (lung window by default), cut into slabs of
`num_slices` slices (around the lesion when its slice range or annotation UIDs are given, else the centre, or
sliding slabs over the whole series), resized in-plane and centre-cropped, and padded with air (-1000 HU) when
the series is shorter than a slab. Clinical: `clinical.encode_clinical_values` with the statistics stored in this
processor (saved in `preprocessor_config.json`); missing values get the fill value and are reported.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature

from .clinical import (
    AGE_RANGE,
    CLINICAL_FEATURE_NAMES,
    STAGE_MAX,
    UNKNOWN_VALUE_RULES,
    WEIGHT_RANGE_KG,
    encode_clinical_values,
    normalize_clinical_keys,
)
from .ct import read_ct_series, read_series_header

logger = logging.getLogger(__name__)

SLICE_SELECTIONS = ("lesion", "center", "sliding")
AIR_HU = -1000.0
_DICOM_SUFFIXES = (".dcm", ".dicom")


def _size_dict(size: int | Mapping[str, int]) -> dict[str, int]:
    if isinstance(size, Mapping):
        return {"height": int(size["height"]), "width": int(size["width"])}
    return {"height": int(size), "width": int(size)}


def _is_path(item: Any) -> bool:
    return isinstance(item, (str, os.PathLike))


def slab_starts(num_total: int, num_slices: int, mode: str, lesion: Sequence[int] | None, stride: int) -> list[int]:
    """First slice index of each slab (negative or past the end where the series is padded with air).

    `lesion` (first, last) centres one slab on the lesion; otherwise `center` centres one slab on the series
    and `sliding` steps by `stride` from the first slice, the last slab ending at the last slice.
    """
    if num_total <= num_slices:
        return [-((num_slices - num_total) // 2)]  # one slab, air split between both ends
    last_start = num_total - num_slices
    if mode == "sliding" and lesion is None:
        starts = list(range(0, last_start + 1, stride))
        return starts if starts[-1] == last_start else [*starts, last_start]
    centre = (lesion[0] + lesion[1]) / 2 if lesion is not None else (num_total - 1) / 2
    start = math.floor(centre - (num_slices - 1) / 2 + 0.5)
    return [min(max(start, 0), last_start)]


class MMCAFNetProcessor(BaseImageProcessor):
    r"""Turns CT series and clinical records into MMCAF-Net inputs; owns every preprocessing step.

    Args:
        num_slices (`int`, defaults to 12): slices per slab (the model's depth D).
        size (`int` or `dict`, defaults to 192): in-plane output size after the centre crop.
        resize_size (`int`, *optional*): the shorter side is first resized to this (bilinear, antialiased, in HU);
            defaults to the crop size (a 512x512 slice is then simply resized to 192x192, as in the paper).
        num_channels (`int`, defaults to 1): must be 1.
        window_level, window_width (`float`, defaults to -600 and 1500): HU window mapped to [0, 1] (lung window;
            mediastinum would be 40/400).
        image_mean, image_std (`float`, defaults to 0.5): `(x - mean) / std` after windowing ([0, 1] -> [-1, 1]).
        slice_selection (`str`, defaults to `"lesion"`): `lesion` (one slab centred on the lesion slice range when
            given, else on the series centre; the slab selection the paper trains on), `center`, or `sliding` (slabs
            every `slab_stride` slices over the whole series; the pipeline takes the max over them).
        slab_stride (`int`, *optional*): sliding-slab step; defaults to `num_slices` (no overlap).
        clinical_age_range, clinical_weight_range (`list[float]`, defaults (20, 100) years and (30, 130) kg): ranges
            mapped linearly to [-1, 1]; `fit_clinical_statistics` sets them from a training split.
        clinical_stage_max (`dict`, defaults T 4, N 3, M 1): highest stage number of each TNM part.
        clinical_fill_values (`list[float]`, defaults to zeros): the value a missing feature gets (0 is the centre
            of every range; `fit_clinical_statistics` sets the training-split means). The output
            `clinical_mask` is 0 there, and `clinical_missing` names the features.
        clinical_unknown (`str`, defaults to `"error"`): a value that cannot be read ("T9", "maybe") raises
            `ValueError` (`"error"`) or is filled like a missing one and listed in `clinical_unknown` (`"missing"`).

    Output (`BatchFeature`): `pixel_values` float32 [N, 1, D, H, W], `clinical_values` float32 [N, 7],
    `clinical_mask` [N, 7], `series_index` int64 [N] (which input each slab comes from), `slab_start` int64
    [N] (first slice; negative when padded), and per input `clinical_missing` / `clinical_unknown` name lists.
    """

    model_input_names = ["pixel_values", "clinical_values"]

    def __init__(
        self,
        num_slices: int = 12,
        size: int | Mapping[str, int] = 192,
        resize_size: int | None = None,
        num_channels: int = 1,
        window_level: float = -600.0,
        window_width: float = 1500.0,
        image_mean: float = 0.5,
        image_std: float = 0.5,
        slice_selection: str = "lesion",
        slab_stride: int | None = None,
        clinical_age_range: Sequence[float] = AGE_RANGE,
        clinical_weight_range: Sequence[float] = WEIGHT_RANGE_KG,
        clinical_stage_max: Mapping[str, int] | None = None,
        clinical_fill_values: Sequence[float] | None = None,
        clinical_unknown: str = "error",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_slices = int(num_slices)
        self.size = _size_dict(size)
        self.resize_size = int(resize_size) if resize_size is not None else None
        self.num_channels = int(num_channels)
        self.window_level = float(window_level)
        self.window_width = float(window_width)
        self.image_mean = float(image_mean)
        self.image_std = float(image_std)
        self.slice_selection = slice_selection
        self.slab_stride = int(slab_stride) if slab_stride is not None else None
        self.clinical_age_range = [float(value) for value in clinical_age_range]
        self.clinical_weight_range = [float(value) for value in clinical_weight_range]
        self.clinical_stage_max = {**STAGE_MAX, **dict(clinical_stage_max or {})}
        fill = clinical_fill_values if clinical_fill_values is not None else [0.0] * len(CLINICAL_FEATURE_NAMES)
        self.clinical_fill_values = [float(value) for value in fill]
        self.clinical_unknown = clinical_unknown
        self._check()

    def _check(self) -> None:
        if self.num_channels != 1:
            raise ValueError(f"num_channels must be 1 (one CT channel), got {self.num_channels}")
        if self.slice_selection not in SLICE_SELECTIONS:
            raise ValueError(f"slice_selection must be one of {SLICE_SELECTIONS}, got {self.slice_selection!r}")
        if self.clinical_unknown not in UNKNOWN_VALUE_RULES:
            raise ValueError(f"clinical_unknown must be one of {UNKNOWN_VALUE_RULES}, got {self.clinical_unknown!r}")
        if len(self.clinical_fill_values) != len(CLINICAL_FEATURE_NAMES):
            raise ValueError(f"clinical_fill_values needs {len(CLINICAL_FEATURE_NAMES)} values")
        if self.window_width <= 0 or self.image_std <= 0 or self.num_slices < 1:
            raise ValueError("window_width, image_std and num_slices must be positive")
        if self.resize_size is not None and self.resize_size < max(self.size.values()):
            raise ValueError(f"resize_size ({self.resize_size}) must be at least the crop size {self.size}")

    # ------------------------------------------------------------------------------------------ volumes

    def read_dicom_series(self, files: Sequence[str | os.PathLike], where: str) -> tuple[np.ndarray, list[str]]:
        """DICOM files of one CT series -> (HU volume int16 [Z, H, W] sorted by position, SOPInstanceUIDs).

        Raises `ValueError` naming `where` for no files, mixed series, no CT slices (listing the modalities found)
        or inconsistent slice sizes; naming the file for one pydicom cannot read and, as `ct.read_ct_series` does,
        for a slice without ImagePositionPatient, two slices at one position, or pixel data that is missing or cannot
        be decoded; `ImportError` without pydicom.
        """
        if not files:
            raise ValueError(f"'{where}': no DICOM files (*.dcm), so no CT slices")
        headers = {str(path): read_series_header(path) for path in files}
        series = sorted({header.series_instance_uid for header in headers.values()})
        if len(series) > 1:
            raise ValueError(
                f"'{where}': mixed series, {len(series)} SeriesInstanceUIDs in one input ({series}); "
                "pass the folder or files of one series"
            )
        ct_files = [
            path for path, header in headers.items() if header.modality == "CT" and "LOCALIZER" not in header.image_type
        ]
        if not ct_files:
            modalities = sorted({header.modality or "unknown" for header in headers.values()})
            raise ValueError(f"'{where}': no CT slices (modalities found: {modalities})")
        sizes = sorted({(headers[path].rows, headers[path].columns) for path in ct_files})
        if len(sizes) > 1:
            raise ValueError(f"'{where}': inconsistent slice sizes {sizes} in one series")
        volume = read_ct_series(ct_files)  # sorted by position, HU; names the file whose pixels cannot be read
        return volume.hu, volume.sop_instance_uids

    def _load_volume(self, item: Any, index: int) -> tuple[np.ndarray, list[str] | None]:
        """One series input -> (HU volume [Z, H, W], SOPInstanceUIDs or None)."""
        if _is_path(item):
            path = Path(item)
            if path.is_dir():
                files = sorted(str(f) for f in path.iterdir() if f.is_file() and f.suffix.lower() in _DICOM_SUFFIXES)
                return self.read_dicom_series(files, str(path))
            if path.is_file():
                return self.read_dicom_series([str(path)], str(path))
            raise ValueError(f"'{path}': no such DICOM folder or file")
        if isinstance(item, (list, tuple)) and item and all(_is_path(entry) for entry in item):
            return self.read_dicom_series([str(entry) for entry in item], f"series {index} ({len(item)} files)")
        if isinstance(item, torch.Tensor):
            item = item.detach().cpu().numpy()
        if isinstance(item, (list, tuple)):
            item = np.asarray(item)
        if isinstance(item, np.ndarray):
            if item.ndim != 3 or not np.issubdtype(item.dtype, np.number):
                raise ValueError(f"series {index}: a volume must be numeric [slices, height, width], got {item.shape}")
            if item.size and item.min() >= 0.0 and item.max() <= 1.0:
                raise ValueError(
                    f"series {index}: values lie in [0, 1]; the processor expects Hounsfield units (air about -1000)"
                )
            return item, None
        raise ValueError(f"series {index}: unsupported input {type(item).__name__}")

    def _resize(self, volume: torch.Tensor) -> torch.Tensor:
        """[D, H, W] float -> [D, crop_h, crop_w]: shorter side to `resize_size`, then centre crop."""
        crop_h, crop_w = self.size["height"], self.size["width"]
        target = self.resize_size if self.resize_size is not None else max(crop_h, crop_w)
        height, width = volume.shape[1:]
        scale = target / min(height, width)
        new_h, new_w = max(round(height * scale), crop_h), max(round(width * scale), crop_w)
        if (new_h, new_w) != (height, width):
            volume = F.interpolate(volume[None], size=(new_h, new_w), mode="bilinear", antialias=True)[0]
        top, left = (new_h - crop_h) // 2, (new_w - crop_w) // 2
        return volume[:, top : top + crop_h, left : left + crop_w]

    def volume_slabs(
        self,
        hu: np.ndarray,
        lesion: Sequence[int] | None = None,
        slice_selection: str | None = None,
        slab_stride: int | None = None,
    ) -> tuple[torch.Tensor, list[int]]:
        """HU volume [Z, H, W] -> (slabs float32 [N, 1, D, size, size] normalised, their first slice indices).
        Raises `ValueError` for a `slice_selection` (given, or the processor's) not in `SLICE_SELECTIONS`."""
        mode = slice_selection or self.slice_selection
        if mode not in SLICE_SELECTIONS:
            raise ValueError(f"slice_selection must be one of {SLICE_SELECTIONS}, got {mode!r}")
        stride = slab_stride or self.slab_stride or self.num_slices
        lesion = lesion if mode == "lesion" else None
        starts = slab_starts(hu.shape[0], self.num_slices, mode, lesion, stride)
        volume = torch.from_numpy(np.ascontiguousarray(hu, dtype=np.float32))
        slabs = []
        for start in starts:
            picked = volume[max(start, 0) : start + self.num_slices]
            before = max(-start, 0)
            after = self.num_slices - before - picked.shape[0]
            picked = F.pad(picked, (0, 0, 0, 0, before, after), value=AIR_HU)  # air above and below
            resized = self._resize(picked)
            low = self.window_level - self.window_width / 2
            unit = ((resized - low) / self.window_width).clamp_(0.0, 1.0)
            slabs.append(((unit - self.image_mean) / self.image_std)[None])
        return torch.stack(slabs), starts

    @staticmethod
    def lesion_range_from_uids(sop_instance_uids: Sequence[str], annotated: Iterable[str]) -> tuple[int, int] | None:
        """(first, last) sorted slice index of the annotated SOPInstanceUIDs (the archive's XML file names)."""
        position = {uid: index for index, uid in enumerate(sop_instance_uids)}
        indices = [position[uid] for uid in annotated if uid in position]
        return (min(indices), max(indices)) if indices else None

    # ------------------------------------------------------------------------------------------ clinical

    def encode_clinical(self, raw: Mapping[str, Any], where: str = "clinical record") -> Any:
        """Raw clinical values (any accepted key spelling) -> `ClinicalEncoding` with this processor's statistics.
        With `clinical_unknown="error"`, raises `ValueError` naming `where` for a present value that cannot be read
        (`clinical.encode_clinical_values`)."""
        return encode_clinical_values(
            raw,
            where,
            age_range=self.clinical_age_range,
            weight_range=self.clinical_weight_range,
            stage_max=self.clinical_stage_max,
            fill_values=self.clinical_fill_values,
            unknown=self.clinical_unknown,
        )

    def fit_clinical_statistics(self, records: Iterable[Mapping[str, Any]]) -> MMCAFNetProcessor:
        """Set the age/weight ranges (min, max) and the fill values (means) from a training split's raw records.

        Records are dicts with the raw clinical values (dataset rows work). Returns self; `save_pretrained` then
        stores the statistics in `preprocessor_config.json`. With `clinical_unknown="error"`, raises `ValueError` as
        `encode_clinical` does for a value that cannot be read, naming it `training record <index>`; the age and
        weight ranges may already have been set then.
        """
        texts = [normalize_clinical_keys(record) for record in records]
        for name, attribute in (("age", "clinical_age_range"), ("weight", "clinical_weight_range")):
            numbers = []
            for text in texts:
                try:
                    numbers.append(float(text[name].lower().removesuffix("kg").removesuffix("y").strip()))
                except ValueError:
                    continue
            if len(set(numbers)) >= 2:
                setattr(self, attribute, [min(numbers), max(numbers)])
        self.clinical_fill_values = [0.0] * len(CLINICAL_FEATURE_NAMES)
        encodings = [self.encode_clinical(text, f"training record {index}") for index, text in enumerate(texts)]
        values = np.array([encoding.values for encoding in encodings], dtype=np.float64).reshape(-1, 7)
        mask = np.array([encoding.mask for encoding in encodings], dtype=np.float64).reshape(-1, 7)
        observed = mask.sum(axis=0)
        means = (values * mask).sum(axis=0) / np.maximum(observed, 1)
        self.clinical_fill_values = [float(mean) if count else 0.0 for mean, count in zip(means, observed, strict=True)]
        return self

    def _clinical_for(self, clinical: Any, index: int) -> tuple[list[float], list[float], list[str], list[str]]:
        """One clinical input -> (values, mask, missing names, unknown names)."""
        if clinical is None:
            raise ValueError(
                f"series {index}: no clinical values; pass `clinical` (a dict with sex, age, weight, T/N/M stage and "
                "smoking history, or 7 encoded values)"
            )
        if isinstance(clinical, Mapping):
            encoding = self.encode_clinical(clinical, f"clinical record {index}")
            return list(encoding.values), list(encoding.mask), encoding.missing, encoding.unknown
        values = np.asarray(clinical.detach().cpu() if isinstance(clinical, torch.Tensor) else clinical, dtype=float)
        if values.shape != (len(CLINICAL_FEATURE_NAMES),) or np.abs(values).max() > 1.0 or np.isnan(values).any():
            raise ValueError(f"series {index}: encoded clinical values must be 7 numbers in [-1, 1], got {values}")
        return values.tolist(), [1.0] * len(values), [], []

    # ------------------------------------------------------------------------------------------ entry point

    def __call__(self, series: Any = None, **kwargs: Any) -> BatchFeature:
        """Same as `preprocess`; `images=` is accepted as another name for `series`."""
        if series is None:
            series = kwargs.pop("images", None)
        return self.preprocess(series, **kwargs)

    @staticmethod
    def _as_batch(series: Any) -> list[Any]:
        """One input or a batch of inputs -> list of inputs (a list of DICOM file paths is one series)."""
        if isinstance(series, (str, os.PathLike, Mapping)):
            return [series]
        if isinstance(series, (np.ndarray, torch.Tensor)):
            return list(series) if series.ndim == 4 else [series]
        if isinstance(series, (list, tuple)):
            if series and all(_is_path(item) and Path(item).is_file() for item in series):
                return [list(series)]
            return list(series)
        return [series]

    def preprocess(
        self,
        series: Any,
        clinical: Any = None,
        lesion_slice_range: Any = None,
        annotations: Any = None,
        slice_selection: str | None = None,
        slab_stride: int | None = None,
        return_tensors: str | None = "pt",
        **kwargs: Any,
    ) -> BatchFeature:
        """Process one series or a batch (see the class docstring for what a series can be).

        `clinical`, `lesion_slice_range` ((first, last) sorted slice index) and `annotations` (a folder of the
        archive's XMLs, named by SOPInstanceUID, or a list of annotated UIDs) are one per series, or a list with one
        entry per series; dataset rows and `{"series": ..., "clinical": ...}` dicts carry their own.

        Raises `TypeError` for a keyword argument it does not take. Raises `ValueError` when, for several series,
        `clinical`, `lesion_slice_range` or `annotations` is given but not as a list with one entry per series; for
        a `slice_selection` not in `SLICE_SELECTIONS` or a `return_tensors` other than "pt", "np" or None; and,
        naming the series by its index: a dict with neither `volume` nor `series`; a path that is no DICOM folder or
        file; a volume that is not numeric [slices, height, width], or lies in [0, 1] (not Hounsfield units); an
        input of another type; a DICOM series `read_dicom_series` refuses; `annotations` for a volume given as an
        array (no UIDs); no clinical values, encoded values that are not 7 numbers in [-1, 1], or (with
        `clinical_unknown="error"`) a raw value that cannot be read. `ImportError` for DICOM input without pydicom.
        """
        if kwargs:
            raise TypeError(f"unexpected arguments {sorted(kwargs)}")
        items = self._as_batch(series)

        def per_item(value: Any, name: str) -> list[Any]:
            if value is None or len(items) == 1:
                return [value] * len(items)
            if isinstance(value, (list, tuple)) and len(value) == len(items):
                return list(value)
            raise ValueError(f"{name} needs one entry per series ({len(items)} series)")

        clinical_list = per_item(clinical, "clinical")
        lesion_list = per_item(lesion_slice_range, "lesion_slice_range")
        annotation_list = per_item(annotations, "annotations")

        pixel_values, clinical_values, clinical_mask, series_index, starts = [], [], [], [], []
        missing_report, unknown_report = [], []
        for index, item in enumerate(items):
            item_clinical, lesion, item_annotations = clinical_list[index], lesion_list[index], annotation_list[index]
            if isinstance(item, Mapping):
                row = item
                if "volume" in row:
                    item = row["volume"]
                elif "series" in row:
                    item = row["series"]
                else:
                    raise ValueError(f"series {index}: a dict needs 'volume' (dataset row) or 'series' (path/files)")
                if item_clinical is None:
                    item_clinical = row.get("clinical")
                    if item_clinical is None and "sex" in row:  # a dataset row's raw clinical columns
                        item_clinical = {key: row[key] for key in row if key not in ("volume", "series")}
                lesion = lesion if lesion is not None else row.get("lesion_slice_range")
                item_annotations = item_annotations if item_annotations is not None else row.get("annotations")
            hu, uids = self._load_volume(item, index)
            if lesion is not None:
                lesion = [int(value) for value in np.asarray(lesion).reshape(-1)]
                lesion = None if min(lesion) < 0 else (lesion[0], lesion[1])  # the converter writes [-1, -1]
            if lesion is None and item_annotations is not None:
                if uids is None:
                    raise ValueError(f"series {index}: annotations need DICOM input (UIDs); pass lesion_slice_range")
                if _is_path(item_annotations):
                    item_annotations = [path.stem for path in Path(item_annotations).glob("*.xml")]
                lesion = self.lesion_range_from_uids(uids, item_annotations)
            slabs, slab_first = self.volume_slabs(hu, lesion, slice_selection, slab_stride)
            values, mask, missing, unknown = self._clinical_for(item_clinical, index)
            if missing or unknown:
                logger.warning(
                    "series %d: clinical %s filled with %s (missing: %s, unreadable: %s)",
                    index,
                    missing + unknown,
                    [self.clinical_fill_values[CLINICAL_FEATURE_NAMES.index(n)] for n in missing + unknown],
                    missing,
                    unknown,
                )
            pixel_values.append(slabs)
            count = slabs.shape[0]
            clinical_values.append(torch.tensor([values] * count, dtype=torch.float32))
            clinical_mask.append(torch.tensor([mask] * count, dtype=torch.float32))
            series_index.append(torch.full((count,), index, dtype=torch.long))
            starts.append(torch.tensor(slab_first, dtype=torch.long))
            missing_report.append(missing)
            unknown_report.append(unknown)
        data: dict[str, Any] = {
            "pixel_values": torch.cat(pixel_values),
            "clinical_values": torch.cat(clinical_values),
            "clinical_mask": torch.cat(clinical_mask),
            "series_index": torch.cat(series_index),
            "slab_start": torch.cat(starts),
        }
        if return_tensors == "np":
            data = {key: value.numpy() for key, value in data.items()}
        elif return_tensors not in ("pt", None):
            raise ValueError(f"return_tensors must be 'pt' or 'np', got {return_tensors!r}")
        data["clinical_missing"] = missing_report
        data["clinical_unknown"] = unknown_report
        return BatchFeature(data=data, tensor_type=None)


__all__ = ["MMCAFNetProcessor", "slab_starts"]
