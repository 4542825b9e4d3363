"""Reading radiograph pixels (defined once, in `hf_cxr.modeling.common.imaging`, for the processors)."""

from hf_cxr.modeling.common.imaging import (
    RADIOGRAPH_MODALITIES,
    array_to_unit_float,
    decode_dicom_pixels,
    dicom_to_unit_float,
    exif_orientation,
    integer_scale,
    is_dicom_bytes,
    load_radiograph,
    modality_values,
    read_dicom,
    upright,
)

__all__ = [
    "RADIOGRAPH_MODALITIES",
    "array_to_unit_float",
    "decode_dicom_pixels",
    "dicom_to_unit_float",
    "exif_orientation",
    "integer_scale",
    "is_dicom_bytes",
    "load_radiograph",
    "modality_values",
    "read_dicom",
    "upright",
]
