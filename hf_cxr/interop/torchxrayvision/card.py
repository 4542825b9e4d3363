"""What a torchxrayvision model's card states beyond the generic fields of `hf_cxr.hub.render_model_card`:
`card_facts` gives an imported weight set's provenance, training datasets and their terms (and so the card's
licence), and a thresholds table saying which values are torchxrayvision's operating points.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hf_cxr.interop.torchxrayvision.weight_sets import (
    CITATION,
    HOMEPAGE,
    LICENCE,
    TORCHXRAYVISION_VERSION,
    TRAINING_DATASETS,
    TrainingDataset,
    WeightSet,
    weight_set,
)


@dataclass(frozen=True)
class CardFacts:
    """What a torchxrayvision model's card states beyond the generic fields (`hf_cxr.hub.render_model_card`)."""

    fields: dict[str, str]  # template fields, overriding the generic ones of the same name
    datasets: list[str]  # the card's `datasets` metadata (empty: the generic rule applies)
    license: str | None  # the card's default licence (None: the generic rule applies)
    license_name: str | None = None
    license_link: str | None = None


def card_facts(config: Mapping[str, Any], training_section: str, trained_further: bool) -> CardFacts:
    """The card facts of a saved torchxrayvision model (`config`: its config.json). For a model imported from a
    weight set: its provenance, training datasets and their terms, and a thresholds table saying which values are
    torchxrayvision's operating points. For one built fresh: the generic training and thresholds sections.
    `trained_further`: the folder records an hf-cxr training run (then its `training_section` is kept too)."""
    name = config.get("torchxrayvision_weights")
    architecture = {"densenet121": "DenseNet-121", "resnet50": "ResNet-50"}.get(config.get("architecture"), "")
    if not name:
        provenance = (
            f"This model has torchxrayvision's {architecture or 'classifier'} architecture but was not imported from "
            "torchxrayvision's released weights: it was built with hf-cxr (`torchxrayvision_weights` is unset in its "
            "config)."
        )
        return CardFacts({"provenance": provenance}, [], None)
    entry = weight_set(str(name))
    datasets = [TRAINING_DATASETS[key] for key in entry.datasets]
    provenance = (
        f"Converted by `hf-cxr import-torchxrayvision {entry.name}` from torchxrayvision's release file "
        f'`{entry.file_name}` ({entry.url}): the weights of `xrv.models.get_model("{entry.name}")`, converted to '
        f"safetensors without change except that the classifier keeps only the {len(entry.labels)} outputs this weight "
        f"set was trained on (torchxrayvision's other outputs are untrained). The weight-set facts (file, labels, "
        f"operating points, resolution) are those of torchxrayvision {TORCHXRAYVISION_VERSION}."
    )
    lines = [
        f"Trained by torchxrayvision's authors, not by hf-cxr, at {entry.input_resolution} px, on:",
        "",
        *[f"- {dataset.name} ({dataset.homepage})" for dataset in dict.fromkeys(datasets)],
        "",
        "torchxrayvision's public training script (`scripts/train_model.py`) holds out part of each dataset at "
        "random by image (not by patient), trains on the rest with random affine augmentation (rotation up to 45 "
        "degrees, translation 15 %, scale 0.85-1.15) and keeps the epoch with the best mean validation AUC. The "
        "release file does not record the exact data, views and splits of this weight set; the papers cited below "
        "describe them.",
    ]
    if trained_further:
        lines += ["", "After the import, this folder was trained further with hf-cxr:", "", training_section]
    restricted = [dataset for dataset in datasets if dataset.restricted]
    license_name = license_link = None
    licence = "apache-2.0"
    if restricted:
        licence = "other"
        license_name = "-".join(dict.fromkeys(_licence_slug(dataset) for dataset in restricted))
        license_link = restricted[0].homepage
    attribution = [
        f"- The weights: torchxrayvision ({HOMEPAGE}), {LICENCE}. Please cite: {CITATION}",
        *[f"- {dataset.name}: {dataset.terms}. Please cite: {dataset.citation}" for dataset in dict.fromkeys(datasets)],
    ]
    fields = {
        "provenance": provenance,
        "training_data": "\n".join(lines),
        "thresholds": _thresholds_table(config, entry),
        "data_attribution": "\n".join(attribution),
    }
    hub_names = list(dict.fromkeys(dataset.hub_name for dataset in datasets))
    return CardFacts(fields, hub_names, licence, license_name, license_link)


def _licence_slug(dataset: TrainingDataset) -> str:
    return "chexpert-research-use" if dataset.hub_name == "chexpert" else "physionet-credentialed-data-use"


def _thresholds_table(config: Mapping[str, Any], entry: WeightSet) -> str:
    """One row per finding: the stored threshold and whether it is torchxrayvision's operating point."""
    stored = config.get("decision_thresholds") or {}
    id2label = config.get("id2label") or {}
    labels = [id2label[key] for key in sorted(id2label, key=int)]
    operating = entry.thresholds
    rows = ["| finding | threshold | what it is |", "|---|---|---|"]
    for label in labels:
        xrv = operating.get(label)
        if label in stored:
            value = float(stored[label])
            same = xrv is not None and math.isclose(value, xrv, rel_tol=0, abs_tol=1e-9)
            what = (
                "torchxrayvision's operating point (`op_threshs`)"
                if same
                else (
                    "stored in the config; not torchxrayvision's operating point"
                    + (f" ({xrv:.4g})" if xrv is not None else "")
                )
            )
            rows.append(f"| {label} | {value:.4g} | {what} |")
        else:
            rows.append(f"| {label} | 0.5 | torchxrayvision has no operating point for it; 0.5 applies |")
    return "\n".join(rows)
