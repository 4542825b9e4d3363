"""Model cards: the installed templates (`hub_cards/model_<model_type>.md`, package `hf_cxr.hub_cards`), the
facts of the datasets a card names, and `render_model_card`, which fills a template with the sections of
`card_sections`, builds the metadata (`ModelCardData` with the `model-index` of `model_index`) and checks the card.
"""

from __future__ import annotations

import json
import os
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from hf_cxr.evaluation.report import read_metrics
from hf_cxr.hub.card_sections import (
    _compute_section,
    _looks_like_hub_id,
    _metrics_section,
    _read_record,
    _recipe_section,
    _thresholds_section,
    _training_data_section,
    _usage_notes,
)
from hf_cxr.hub.metadata import (
    HUB_TAGS,
    LIBRARY_NAME,
    NOT_A_MEDICAL_DEVICE,
    RECIPE_NAME,
    TRAINING_RECORD,
    check_card,
    pipeline_tag,
)
from hf_cxr.hub.model_index import eval_results
from hf_cxr.labels import LABEL_SETS
from hf_cxr.registry import ARCHITECTURES


def _default_training_data(model_type: str) -> str | None:
    """The dataset an architecture is trained on when its labels name no label set (e.g. histology classes)."""
    architecture = ARCHITECTURES.get(model_type)
    return architecture.default_training_data if architecture is not None else None


@dataclass(frozen=True)
class DatasetFacts:
    """What a card says about a dataset the model was trained or evaluated on."""

    name: str
    hub_id: str
    homepage: str
    citation: str
    licence: str


def _dataset_facts() -> dict[str, DatasetFacts]:
    from hf_cxr.data import chestxray14, chexpert, lung_pet_ct_dx

    return {
        "chestxray14": DatasetFacts(
            "NIH ChestX-ray14", "chestxray14", chestxray14.HOMEPAGE, chestxray14.CITATION, chestxray14.LICENSE
        ),
        "chexpert": DatasetFacts(
            "Stanford CheXpert", "chexpert", chexpert.HOMEPAGE, chexpert.CITATION, chexpert.LICENSE
        ),
        "lung_pet_ct_dx": DatasetFacts(
            "Lung-PET-CT-Dx (TCIA)",
            "lung_pet_ct_dx",
            lung_pet_ct_dx.HOMEPAGE,
            lung_pet_ct_dx.CITATION,
            lung_pet_ct_dx.LICENSE,
        ),
    }


def hub_cards_files() -> Any:
    """The installed `hub_cards/` templates (package `hf_cxr.hub_cards`), as an `importlib.resources` Traversable."""
    return resources.files("hf_cxr.hub_cards")


def model_card_template(model_type: str) -> str:
    """The prose template of one architecture's model card (`hub_cards/model_<model_type>.md`)."""
    template = hub_cards_files() / f"model_{model_type}.md"
    if not template.is_file():
        raise FileNotFoundError(
            f"no model card template for model_type {model_type!r} (hub_cards/model_{model_type}.md)"
        )
    return template.read_text(encoding="utf-8")


def label_set_name(labels: Sequence[str]) -> str | None:
    """`chestxray14` / `chexpert` when `labels` is that label set in that order, else None."""
    for name, names in LABEL_SETS.items():
        if list(labels) == list(names):
            return name
    return None


def render_model_card(
    model_dir: str | os.PathLike[str],
    repo_id: str,
    report: Mapping[str, Any] | str | os.PathLike[str] | None = None,
    recipe: str | os.PathLike[str] | None = None,
    training_dataset: str | None = None,
    dataset_id: str | None = None,
    license: str | None = None,
    training_metrics: str | os.PathLike[str] | None = None,
) -> ModelCard:
    """The model card of a saved model folder: metadata from the config and the evaluation report, prose from
    the architecture's template. `report` is a report folder or its `metrics.json` document; `training_metrics`
    is train.py's `metrics.json` (default: the one in `model_dir`), for the compute section."""
    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    model_type = config["model_type"]
    labels = [config["id2label"][key] for key in sorted(config["id2label"], key=int)]
    facts = _dataset_facts()
    document = read_metrics(report) if isinstance(report, (str, os.PathLike)) else report
    recipe_path = Path(recipe) if recipe is not None else model_dir / RECIPE_NAME
    recipe_text = recipe_path.read_text(encoding="utf-8") if recipe_path.is_file() else None
    recorded = _read_record(Path(training_metrics or model_dir / TRAINING_RECORD))
    run_dataset = ((recorded.get("run") or {}).get("dataset") or {}).get("name")

    trained_on = training_dataset or run_dataset or label_set_name(labels) or _default_training_data(model_type)
    train_facts = facts.get(trained_on or "")
    evaluated, eval_id, eval_name = "", None, ""
    if document is not None:
        evaluated = label_set_name(document.get("dataset_labels", [])) or (
            (document.get("dataset_conversion") or {}).get("name") or ""
        )
        eval_id = dataset_id or (
            document["dataset"] if _looks_like_hub_id(document["dataset"]) else evaluated or "local"
        )
        eval_name = facts[evaluated].name if evaluated in facts else eval_id
    training_section = _training_data_section(labels, trained_on, train_facts, recorded)
    imported = _imported_card_facts(model_type, config, training_section, recorded)
    datasets_meta = [name for name in (*(imported.datasets or [trained_on]), eval_id) if name]
    if license is None:
        license = imported.license or ("other" if trained_on == "chexpert" else "apache-2.0")
    extra = {}
    if license == "other" and imported.license_name:
        extra = {"license_name": imported.license_name, "license_link": imported.license_link}
    elif license == "other":
        extra = {
            "license_name": "chexpert-research-use" if trained_on == "chexpert" else "other",
            "license_link": facts["chexpert"].homepage if trained_on == "chexpert" else "LICENSE",
        }
    results = eval_results(document, eval_id, eval_name) if document is not None else []
    card_data = ModelCardData(
        license=license,
        library_name=LIBRARY_NAME,
        pipeline_tag=pipeline_tag(model_type),
        tags=[*HUB_TAGS, model_type, "hf-cxr"],
        datasets=list(dict.fromkeys(datasets_meta)) or None,
        metrics=sorted({result.metric_type for result in results}) or ["roc_auc"],
        eval_results=results or None,
        model_name=repo_id,
        **extra,
    )
    if train_facts is not None:
        attribution = f"- {train_facts.name}: {train_facts.licence}. Please cite: {train_facts.citation}"
    else:
        attribution = "- Training data: see the dataset's own licence and citation."
    if evaluated in facts and evaluated != trained_on:
        other = facts[evaluated]
        attribution += f"\n- {other.name} (evaluation): {other.licence}. Please cite: {other.citation}"
    fields = {
        "repo_id": repo_id,
        "research_use": NOT_A_MEDICAL_DEVICE,
        "labels": ", ".join(labels),
        "num_labels": len(labels),
        "image_size": config.get("image_size", "the config's"),
        "num_channels": config.get("num_channels", "the config's"),
        "training_data": training_section,
        "recipe": _recipe_section(recipe_text, "supplied" if recipe is not None else "folder", recorded),
        "compute": _compute_section(model_dir, recorded),
        "evaluation": _metrics_section(document, eval_name),
        "thresholds": _thresholds_section(config, labels, document),
        "usage_notes": _usage_notes(config, model_dir),
        "data_attribution": attribution,
        **imported.fields,
    }
    body = string.Template(model_card_template(model_type)).substitute(fields)
    card = ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body.lstrip()}")
    check_card(card)
    return card


def _imported_card_facts(
    model_type: str, config: Mapping[str, Any], training_section: str, recorded: Mapping[str, Any]
) -> Any:
    """Facts only the architecture knows: for `torchxrayvision`, the weight set a folder was imported from (its
    provenance, training datasets and their terms, torchxrayvision's operating points;
    `hf_cxr.interop.torchxrayvision.card_facts`). Other architectures: none (`datasets`/`license` empty, no fields)."""
    from hf_cxr.interop.torchxrayvision import CardFacts, card_facts

    if model_type != "torchxrayvision":
        return CardFacts({}, [], None)
    return card_facts(config, training_section, trained_further=bool(recorded.get("run")))
