"""Reading radiograph pixels (defined once, in `hf_cxr.modeling.common.imaging`, for the processors)."""

from hf_cxr.modeling.common.imaging import (
    RADIOGRAPH_MODALITIES,
    array_to_unit_float,
    dicom_to_unit_float,
    is_dicom_bytes,
    load_radiograph,
)

__all__ = [
    "RADIOGRAPH_MODALITIES",
    "array_to_unit_float",
    "dicom_to_unit_float",
    "is_dicom_bytes",
    "load_radiograph",
]
