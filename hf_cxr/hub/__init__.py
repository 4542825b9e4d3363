"""Model cards and Hub publishing: the exact folder `hf-cxr push` uploads, its card, and the upload.

The card's metadata (licence, library, pipeline tag, tags, datasets, metrics, `model-index` with per-finding
ROC-AUC and bootstrap intervals) is built with `huggingface_hub.ModelCardData`/`EvalResult`; the prose comes
from `hub_cards/model_<model_type>.md` (installed as `hf_cxr.hub_cards`). The upload is `HfApi.create_repo`
plus one `HfApi.upload_folder` of the assembled folder, so what `--dry-run` writes is what would be uploaded.

Every fact the card states about training comes from what the run recorded: train.py's `metrics.json` (`run`:
preset, input size, dataset, its conversion settings and row counts, command line; `training`: the steps run per
stage, compute) and the resolved `recipe.yaml`. A fact that was not recorded is said to be unrecorded, never
filled in from a template or a recipe file. Evaluation numbers reach `model-index` only under the rule of
`hf_cxr.evaluation.report.model_index_exclusions` (large enough splits and findings); the prose says which did not.

The package by job: `metadata` (the card's metadata values and `check_card`), `model_index` (evaluation numbers as
`model-index` entries), `card_sections` (the card's prose sections, from the run's records), `cards`
(`render_model_card`: templates and the whole card), `push` (the upload folder and `push_model`) and `cache`
(`add_to_cache`: a folder in the local Hugging Face cache under its future repo id).
"""

from __future__ import annotations

from hf_cxr.hub.cache import add_to_cache
from hf_cxr.hub.card_sections import CXR_PIPELINE_TASK, PRESET_WORDS, REMOTE_CODE_IMPORTS
from hf_cxr.hub.cards import DatasetFacts, hub_cards_files, label_set_name, model_card_template, render_model_card
from hf_cxr.hub.metadata import (
    CARD_METRICS,
    CT_PIPELINE_TAG,
    EVALUATION_FOLDER,
    HUB_TAGS,
    LIBRARY_NAME,
    NOT_A_MEDICAL_DEVICE,
    PIPELINE_TAG,
    RECIPE_NAME,
    TASK_NAME,
    TRAINING_RECORD,
    check_card,
    pipeline_tag,
)
from hf_cxr.hub.model_index import CT_EVALUATION, eval_results
from hf_cxr.hub.push import MODEL_FILES, MODEL_SUFFIXES, PushResult, assemble_upload_folder, push_model

__all__ = [
    "CARD_METRICS",
    "CT_EVALUATION",
    "CT_PIPELINE_TAG",
    "CXR_PIPELINE_TASK",
    "EVALUATION_FOLDER",
    "HUB_TAGS",
    "LIBRARY_NAME",
    "MODEL_FILES",
    "MODEL_SUFFIXES",
    "NOT_A_MEDICAL_DEVICE",
    "PIPELINE_TAG",
    "PRESET_WORDS",
    "RECIPE_NAME",
    "REMOTE_CODE_IMPORTS",
    "TASK_NAME",
    "TRAINING_RECORD",
    "DatasetFacts",
    "PushResult",
    "add_to_cache",
    "assemble_upload_folder",
    "check_card",
    "eval_results",
    "hub_cards_files",
    "label_set_name",
    "model_card_template",
    "pipeline_tag",
    "push_model",
    "render_model_card",
]
