"""Finding names and the maps between label sets (defined once, in `hf_cxr.modeling.common.labels`)."""

from hf_cxr.modeling.common.labels import (
    CHESTXRAY14_LABELS,
    CHESTXRAY14_NO_FINDING,
    CHESTXRAY14_TO_CHEXPERT,
    CHEXPERT_LABELS,
    FINDING_SYNONYMS,
    LABEL_SETS,
    TORCHXRAYVISION_LABELS,
    label_maps,
)

__all__ = [
    "CHESTXRAY14_LABELS",
    "CHESTXRAY14_NO_FINDING",
    "CHESTXRAY14_TO_CHEXPERT",
    "CHEXPERT_LABELS",
    "FINDING_SYNONYMS",
    "LABEL_SETS",
    "TORCHXRAYVISION_LABELS",
    "label_maps",
]
