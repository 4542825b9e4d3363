"""What every card of hf-cxr declares to the Hub: the metadata values (tags, pipeline tag, library, the
not-a-medical-device statement), the names of the upload folder's record files, and `check_card`, the offline check
of a card's metadata (what the Hub's validator and `model-index` parser need).
"""

from __future__ import annotations

import math
from typing import Any

from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results

from hf_cxr.registry import is_ct_model

HUB_TAGS = ("medical", "radiology", "chest-x-ray", "multi-label-classification")
PIPELINE_TAG = "image-classification"
# A CT model (MMCAF-Net) reads a CT slab and a clinical table: no Hub widget or stock pipeline task fits it (it is
# hf-cxr's `ct-clinical-classification` pipeline), so its card says "other" rather than promising an image widget.
CT_PIPELINE_TAG = "other"
LIBRARY_NAME = "transformers"
TASK_NAME = "Multi-label chest X-ray classification"
EVALUATION_FOLDER = "evaluation"
RECIPE_NAME = "recipe.yaml"
TRAINING_RECORD = "metrics.json"  # train.py's record of the run (best checkpoint, `run`, `training`)
CARD_METRICS = ("roc_auc", "average_precision", "f1")
NOT_A_MEDICAL_DEVICE = (
    "Research use only. This model is not a medical device: it has not been cleared or approved by any "
    "regulator, and it must not be used for diagnosis, triage or any other clinical decision."
)


def pipeline_tag(model_type: str) -> str:
    """The card's `pipeline_tag`: the Hub widget and task the architecture fits."""
    return CT_PIPELINE_TAG if is_ct_model(model_type) else PIPELINE_TAG


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def check_card(card: ModelCard) -> None:
    """Offline checks of the card's metadata (what the Hub's validator and model-index parser need).

    Raises `ValueError` listing every problem. `ModelCard.validate` asks the Hub; this needs no network.
    """
    reparsed = ModelCard(str(card))  # the YAML header must round-trip
    data = reparsed.data.to_dict()
    problems = []
    if not data.get("license"):
        problems.append("no license")
    if data.get("license") == "other" and not (data.get("license_name") and data.get("license_link")):
        problems.append("license 'other' needs license_name and license_link")
    if data.get("library_name") != LIBRARY_NAME:
        problems.append(f"library_name is {data.get('library_name')!r}, expected {LIBRARY_NAME!r}")
    model_types = [tag for tag in data.get("tags") or [] if is_ct_model(tag)]
    expected = pipeline_tag(model_types[0]) if model_types else PIPELINE_TAG
    if data.get("pipeline_tag") != expected:
        problems.append(f"pipeline_tag is {data.get('pipeline_tag')!r}, expected {expected!r}")
    missing_tags = sorted(set(HUB_TAGS) - set(data.get("tags") or []))
    if missing_tags:
        problems.append(f"missing tags {missing_tags}")
    if not data.get("datasets"):
        problems.append("no datasets")
    if "model-index" in data:
        try:
            _, results = model_index_to_eval_results(data["model-index"])
        except (KeyError, TypeError, ValueError) as error:
            problems.append(f"model-index does not parse: {error}")
        else:
            for result in results:
                if not _finite(result.metric_value):
                    problems.append(f"non-finite metric value {result.metric_name}: {result.metric_value}")
            used = {result.metric_type for result in results}
            if not used <= set(data.get("metrics") or []):
                problems.append(f"metrics {sorted(used)} of model-index not all listed in `metrics`")
    if NOT_A_MEDICAL_DEVICE not in reparsed.text:
        problems.append("the not-a-medical-device statement is missing")
    if problems:
        raise ValueError("model card problems: " + "; ".join(problems))
