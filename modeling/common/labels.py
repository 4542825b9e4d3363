"""Label sets of the chest-imaging datasets and the maps between them.

This file is the one place where finding names and their order are defined. It lives beside the models
(rather than only in `hf_cxr`) because a config's default `id2label` must be available to Hub remote code;
`hf_cxr.labels` re-exports it.
"""

from __future__ import annotations

# NIH ChestX-ray14, in the column order of NIH's tables and of every ChestX-ray14 paper's AUC table.
CHESTXRAY14_LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)

# The string NIH writes in `Finding Labels` for an image with none of the 14 findings.
CHESTXRAY14_NO_FINDING = "No Finding"

# Stanford CheXpert, in the column order of `train.csv`.
CHEXPERT_LABELS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)

# The 18 outputs of torchxrayvision's classifiers, in their order (each weight set trains a subset of them; its
# `densenet121-res224-chex` is the MXA paper's distillation teacher).
TORCHXRAYVISION_LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Consolidation",
    "Infiltration",
    "Pneumothorax",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Effusion",
    "Pneumonia",
    "Pleural_Thickening",
    "Cardiomegaly",
    "Nodule",
    "Mass",
    "Hernia",
    "Lung Lesion",
    "Fracture",
    "Lung Opacity",
    "Enlarged Cardiomediastinum",
)

# Findings that ChestX-ray14 and CheXpert both label with the same meaning. Cross-dataset evaluation (a
# ChestX-ray14 model scored on CheXpert) scores exactly these and nothing else.
CHESTXRAY14_TO_CHEXPERT: dict[str, str] = {
    "Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Effusion": "Pleural Effusion",
    "Pneumonia": "Pneumonia",
    "Pneumothorax": "Pneumothorax",
    "Consolidation": "Consolidation",
    "Edema": "Edema",
}

# Names that mean the same finding in different label sets (teacher -> student renaming). The second entry is
# a documented proxy, not an equivalence: pleural thickening is one kind of "Pleural Other".
FINDING_SYNONYMS: dict[str, str] = {
    "Effusion": "Pleural Effusion",
    "Pleural_Thickening": "Pleural Other",
}

LABEL_SETS: dict[str, tuple[str, ...]] = {
    "chestxray14": CHESTXRAY14_LABELS,
    "chexpert": CHEXPERT_LABELS,
    "torchxrayvision": TORCHXRAYVISION_LABELS,
}


def label_maps(labels: str | tuple[str, ...] | list[str]) -> tuple[dict[int, str], dict[str, int]]:
    """`(id2label, label2id)` for a list of finding names, in that order, or for the name of one of `LABEL_SETS`.
    Raises `ValueError` for a repeated name or a text that names no label set (a string is never split into
    letters)."""
    if isinstance(labels, str):
        if labels not in LABEL_SETS:
            raise ValueError(f"labels: {labels!r} names no label set; give a list of finding names or one of "
                             f"{sorted(LABEL_SETS)}")  # fmt: skip
        labels = LABEL_SETS[labels]
    if len(set(labels)) != len(labels):
        raise ValueError(f"finding names must be unique, got {list(labels)}")
    id2label = dict(enumerate(labels))
    return id2label, {name: index for index, name in id2label.items()}
