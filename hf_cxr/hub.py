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
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import string
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.repocard_data import model_index_to_eval_results
from safetensors import safe_open

from hf_cxr.evaluation.report import (
    MODEL_INDEX_MIN_CASES,
    MODEL_INDEX_MIN_IMAGES,
    REPORT_FILES,
    describe_bootstrap,
    describe_conversion,
    describe_splits,
    describe_thresholds,
    model_index_exclusions,
    read_metrics,
    threshold_cell,
)
from hf_cxr.evaluation.scores import CHOSEN_BY_YOUDEN, FALLBACK
from hf_cxr.labels import LABEL_SETS
from hf_cxr.registry import ARCHITECTURES, is_ct_model

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
# What a preset is, in the card's words (any other preset: "not the paper's configuration").
PRESET_WORDS = {
    "paper": "the configuration the paper describes",
    "tiny": "hf-cxr's tiny configuration for tests and demos, far smaller than the paper's; not the paper's model",
}
# What hf-cxr's remote code imports, for the card's "How to use" (the `.py` files of the repository).
REMOTE_CODE_IMPORTS = "torch, timm, transformers (with its dependency huggingface_hub), safetensors, numpy and Pillow"
CXR_PIPELINE_TASK = "chest-x-ray-classification"
CARD_METRICS = ("roc_auc", "average_precision", "f1")
NOT_A_MEDICAL_DEVICE = (
    "Research use only. This model is not a medical device: it has not been cleared or approved by any "
    "regulator, and it must not be used for diagnosis, triage or any other clinical decision."
)
# Files of a saved model folder that belong on the Hub (plus every top-level *.py: the remote code).
MODEL_FILES = ("config.json", "preprocessor_config.json", "processor_config.json")
MODEL_SUFFIXES = (".safetensors", ".safetensors.index.json", ".py")


def _default_training_data(model_type: str) -> str | None:
    """The dataset an architecture is trained on when its labels name no label set (e.g. histology classes)."""
    architecture = ARCHITECTURES.get(model_type)
    return architecture.default_training_data if architecture is not None else None


def pipeline_tag(model_type: str) -> str:
    """The card's `pipeline_tag`: the Hub widget and task the architecture fits."""
    return CT_PIPELINE_TAG if is_ct_model(model_type) else PIPELINE_TAG


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


def _looks_like_hub_id(value: str) -> bool:
    return value.count("/") == 1 and not os.path.isabs(value) and not Path(value).exists()


# `metrics.json` of a per-patient CT evaluation (`hf_cxr.evaluation.single_label`) says so in this field.
CT_EVALUATION = "single_label_ct"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _eval_dataset(document: Mapping[str, Any], dataset_name: str) -> tuple[str, str | None, dict[str, Any]]:
    """(dataset name, config, args) of `model-index` entries: the split protocol is part of the dataset's identity,
    so a seeded random split is never published under the bare name of the dataset's official benchmark."""
    settings = (document.get("dataset_conversion") or {}).get("settings") or {}
    protocol = settings.get("split_protocol")
    name = dataset_name
    if protocol == "random_patient":
        name = f"{dataset_name} (seeded random patient split, seed {settings.get('seed')}; not the official lists)"
    count = {"num_patients": document.get("num_patients")}
    count.update({"num_images": document["num_images"]} if "num_images" in document else {})
    return name, protocol, count


def eval_results(document: Mapping[str, Any], dataset_id: str, dataset_name: str) -> list[EvalResult]:
    """`model-index` entries: macro/micro ROC-AUC, macro AP, macro F1 at the report's thresholds, and per finding
    ROC-AUC, each with its bootstrap interval in `args` (undefined numbers are left out, never written as 0).

    What `model_index_exclusions` rules out (a pipeline-check split, a finding with too few cases) is left out."""
    split_excluded, findings_excluded = model_index_exclusions(document)
    if split_excluded:
        return []
    name, protocol, dataset_args = _eval_dataset(document, dataset_name)

    def entry(metric_type: str, title: str, config: str, value: Mapping[str, Any]) -> EvalResult | None:
        if not _finite(value.get("value")):
            return None
        args: dict[str, Any] = {}
        if value.get("ci95") and all(_finite(bound) for bound in value["ci95"]):
            args = {"ci95": value["ci95"], "bootstrap": describe_bootstrap(document.get("bootstrap", {}))}
        return EvalResult(
            task_type=PIPELINE_TAG,
            task_name=TASK_NAME,
            dataset_type=dataset_id,
            dataset_name=name,
            dataset_config=protocol,
            dataset_split=document["split"],
            dataset_args=dataset_args,
            metric_type=metric_type,
            metric_value=round(float(value["value"]), 4),
            metric_name=title,
            metric_config=config,
            metric_args=args or None,
        )

    if document.get("evaluation") == CT_EVALUATION:
        return [result for result in _ct_eval_entries(document, entry) if result is not None]
    summary = document["summary"]
    candidates = [
        entry("roc_auc", "macro ROC-AUC", "macro", summary["auc_macro"]),
        entry("roc_auc", "micro ROC-AUC", "micro", summary["auc_micro"]),
        entry("average_precision", "macro average precision", "macro", summary["ap_macro"]),
    ]
    if "at_threshold/f1_macro" in summary:
        candidates.append(entry("f1", _f1_title(document), "macro", summary["at_threshold/f1_macro"]))
    for finding, values in document["per_class"].items():
        if finding not in findings_excluded:
            candidates.append(entry("roc_auc", f"ROC-AUC {finding}", finding, values["auc"]))
    return [candidate for candidate in candidates if candidate is not None]


def _f1_title(document: Mapping[str, Any]) -> str:
    """The name of the macro-F1 entry: at which thresholds, counting the findings that fell back to 0.5."""
    if not document.get("threshold_split"):
        return "macro F1 at the model config's decision_thresholds (0.5 where absent)"
    fallbacks = sum(entry.get("threshold_method") == FALLBACK for entry in document["per_class"].values())
    title = f"macro F1 at thresholds chosen on {document['threshold_split']}"
    return title + (f" (0.5 fallback for {fallbacks} findings)" if fallbacks else "")


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


def _ct_metric_keys(document: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(metric type, title, key in `metrics`) of the numbers a CT (single-label, per-patient) card reports."""
    if document["task"] == "binary":
        positive = document["positive_class"]
        return [
            ("roc_auc", f"patient-level AUROC ({positive} positive)", "auroc"),
            *[(name, f"{name} at 0.5", f"at_0.5/{name}") for name in ("accuracy", "f1", "sensitivity", "specificity")],
        ]
    return [("roc_auc", "macro AUROC (one vs rest)", "auroc_macro"), ("accuracy", "accuracy", "accuracy"),
            ("f1", "macro F1", "f1_macro")]  # fmt: skip


def _ct_eval_entries(document: Mapping[str, Any], entry: Any) -> list[Any]:
    metrics = document["metrics"]
    return [entry(kind, title, key, metrics[key]) for kind, title, key in _ct_metric_keys(document) if key in metrics]


def _ct_metrics_section(document: Mapping[str, Any], dataset_name: str) -> str:
    from hf_cxr.evaluation.report import _format

    bootstrap = document.get("bootstrap", {})
    lines = [
        f"> **{document['interval_note']}**" if document.get("interval_note") else "",
        "",
        f"Scored per patient on the `{document['split']}` split of {_evaluated(document, dataset_name)}: "
        f"{document['num_patients']} "
        f"patients ({document['num_windows']} windows; window scores aggregated by "
        f"{document['patient_aggregation']}). Intervals: 95 % percentile bootstrap, {bootstrap.get('resamples')} "
        "resamples of patients.",
        "",
        "| metric | value (95 % CI) |",
        "|---|---|",
    ]
    lines += [f"| {title} | {_format(document['metrics'][key])} |" for _, title, key in _ct_metric_keys(document)]
    if document.get("threshold_source"):
        lines += ["", f"Threshold of the report's second operating point: {document['threshold_source']}."]
    lines += ["", _model_index_statement(document), "", f"The full report is `{EVALUATION_FOLDER}/report.md`."]
    return "\n".join(lines)


def _evaluated(document: Mapping[str, Any], dataset_name: str) -> str:
    """The evaluated dataset, with how its splits were made when its conversion report was found."""
    note = describe_conversion(document.get("dataset_conversion"))
    if note:
        return f"{dataset_name} ({note.rstrip('.')})"
    return f"{dataset_name} (how its splits were made was not recorded)"


def _model_index_statement(document: Mapping[str, Any]) -> str:
    """What of the numbers above is in the card's `model-index` metadata, and why the rest is not."""
    rule = (
        f"hf-cxr's rule: a scored split under {MODEL_INDEX_MIN_IMAGES} images, or a finding with fewer than "
        f"{MODEL_INDEX_MIN_CASES} positives or negatives in it (CT: a class with fewer than {MODEL_INDEX_MIN_CASES} "
        "patients), stays out of the `model-index` metadata, which the Hub reads as results."
    )
    split_excluded, findings_excluded = model_index_exclusions(document)
    if split_excluded:
        return f"None of these numbers is in this card's `model-index` metadata: {split_excluded}. {rule}"
    if findings_excluded:
        listed = "; ".join(f"{name} ({why})" for name, why in findings_excluded.items())
        return (
            f"This card's `model-index` metadata holds these numbers except the per-finding ROC-AUC of: {listed}. "
            + rule
        )
    return f"This card's `model-index` metadata holds these numbers. {rule}"


def _metrics_section(document: Mapping[str, Any] | None, dataset_name: str) -> str:
    from hf_cxr.evaluation.report import _format

    if document is None:
        return (
            "No evaluation report was attached to this upload (`hf-cxr push --report`). Evaluate the model with "
            "`hf-cxr evaluate` before relying on it for any research conclusion."
        )
    if document.get("evaluation") == CT_EVALUATION:
        return _ct_metrics_section(document, dataset_name)
    lines = []
    if document.get("small_split_note"):
        lines += [f"> **{document['small_split_note']}**", ""]
    bootstrap = document.get("bootstrap", {})
    lines += [
        f"Scored on the `{document['split']}` split of {_evaluated(document, dataset_name)}: "
        f"{document['num_images']} images of {document['num_patients']} patients. Intervals: 95 % percentile "
        f"bootstrap, {describe_bootstrap(bootstrap)}. Thresholds: {describe_thresholds(document)}.",
    ]
    if document.get("cross_dataset"):
        pairs = ", ".join(f"{model} -> {data}" for model, data in document["finding_map"].items())
        lines.append(f"Cross-dataset evaluation: only the findings both label sets share are scored ({pairs}).")
    summary = document["summary"]
    lines += [
        "",
        f"Macro ROC-AUC {_format(summary['auc_macro'])}; micro ROC-AUC {_format(summary['auc_micro'])}; "
        f"macro average precision {_format(summary['ap_macro'])}.",
        "",
        "| finding | positives | ROC-AUC (95 % CI) | average precision (95 % CI) | threshold | sensitivity "
        "| specificity |",
        "|---|---|---|---|---|---|---|",
    ]
    for finding, entry in document["per_class"].items():
        point = entry.get("at_threshold")
        chosen = point or entry["at_0.5"]
        lines.append(
            f"| {finding} | {entry['positives']} | {_format(entry['auc'])} | {_format(entry['average_precision'])} | "
            f"{threshold_cell(entry)} | {_format(chosen['sensitivity'])} | {_format(chosen['specificity'])} |"
        )
    lines += [
        "",
        _model_index_statement(document),
        "",
        f"![ROC curves]({EVALUATION_FOLDER}/roc_curves.png)",
        "",
        f"![Reliability diagram]({EVALUATION_FOLDER}/reliability.png)",
        "",
        f"The full report (operating points at 0.5 and at the chosen thresholds) is `{EVALUATION_FOLDER}/report.md`.",
    ]
    return "\n".join(lines)


def _read_record(path: Path) -> dict[str, Any]:
    """train.py's `metrics.json` (strict JSON), or {} when the folder has none."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _source_words(source: str | None) -> str:
    if not source:
        return "a source that was not recorded"
    if _looks_like_hub_id(source):
        return f"`{source}` on the Hub"
    return f"a local folder (`{Path(source).name}`)"


def _steps_words(training: Mapping[str, Any], run: Mapping[str, Any], recorded: Mapping[str, Any]) -> str:
    """The training length as run: steps per stage, whether `--max-steps` capped it, where the checkpoint is from."""
    selected = f"the checkpoint with the best validation `{recorded.get('select_best_by', 'metric')}`"
    if not training:
        step = recorded.get("step")
        at = f", at step {step}" if step is not None else ""
        return (
            f"not recorded (the run did not record finishing, or predates that record); the weights are {selected}{at}"
        )
    stages = ", ".join(f"{stage['name']}: {stage['steps']}" for stage in training.get("stages") or [])
    text = f"{training['step']} optimizer steps" + (f" ({stages})" if stages else "")
    if training.get("total_steps") is not None and training["total_steps"] != training["step"]:
        text += f" of {training['total_steps']} planned"
    if not training.get("finished", True):
        text += " (the run stopped before the end)"
    if run.get("max_steps") is not None:
        text += f"; `--max-steps {run['max_steps']}` set the length, not the recipe's epochs"
    best = training.get("best_step", recorded.get("step"))
    return text + f"; the weights are {selected}, at step {best}"


def _training_data_section(
    labels: Sequence[str], trained_on: str | None, train_facts: DatasetFacts | None, recorded: Mapping[str, Any]
) -> str:
    """What the run recorded about its data and model: dataset, split protocol, row counts, preset, input size,
    steps. Every line comes from train.py's record; what it lacks is said to be unrecorded."""
    run = recorded.get("run") or {}
    training = recorded.get("training") or {}
    named = f"{train_facts.name} ({train_facts.homepage})" if train_facts else f"`{trained_on or 'not recorded'}`"
    findings = f"{len(labels)} findings: {', '.join(labels)}"
    general = (
        "hf-cxr's converters split by patient (no patient in two splits), and train.py reads only the training and "
        "validation splits, selecting the checkpoint on validation, never on test."
    )
    if not run:
        lines = [
            "This model folder has no record of its training run (no `run` in `metrics.json`): the dataset copy, "
            "how its splits were made, their sizes, and the preset and input size used in training were not "
            "recorded.",
            "",
            f"- Label set (from the config): {findings}" + (f"; the label set of {named}." if train_facts else "."),
        ]
        if training:
            lines.append(f"- Training length: {_steps_words(training, run, recorded)}.")
        lines.append(f"- {general}")
        return "\n".join(lines)
    dataset = run.get("dataset") or {}
    rows = dataset.get("rows") or {}
    unit = "CT series" if dataset.get("name") == "lung_pet_ct_dx" else "images"
    train_split, validation_split = dataset.get("train_split", "train"), dataset.get("validation_split", "validation")
    conversion = dataset.get("conversion")
    splits = describe_splits(dataset.get("name"), conversion) if conversion else None
    preset = run.get("preset")
    preset_words = PRESET_WORDS.get(preset, "not the paper's configuration") if preset else ""
    lines = [
        "What the training run recorded (train.py's `metrics.json` and the resolved `recipe.yaml`):",
        "",
        f"- Dataset: {named}, read from {_source_words(dataset.get('source'))}; {findings}.",
        "- Splits: "
        + (
            splits
            if splits
            else "how the dataset's splits were made was not recorded (it has no hf-cxr conversion report)"
        )
        + ".",
        f"- Rows: training split `{train_split}`: {rows.get(train_split, 'not recorded')} {unit}; validation split "
        f"`{validation_split}`: {rows.get(validation_split, 'not recorded')} {unit} (checkpoint selection only).",
        f"- Model: preset `{preset}` ({preset_words}), input {run.get('image_size', 'size not recorded')} px."
        if preset
        else f"- Model: the preset was not recorded; input {run.get('image_size', 'size not recorded')} px.",
        f"- Training length: {_steps_words(training, run, recorded)}.",
        f"- Seed: {run.get('seed', 'not recorded')}.",
        f"- {general}",
    ]
    return "\n".join(lines)


def _recipe_section(recipe_text: str | None, origin: str, recorded: Mapping[str, Any]) -> str:
    """Quote the recipe, saying what it is: the run's resolved recipe, an older folder's unverified one, or a file
    supplied at upload."""
    if recipe_text is None:
        return "The training recipe was not recorded with this model folder (no `recipe.yaml`)."
    run, training = recorded.get("run") or {}, recorded.get("training") or {}
    if origin == "supplied":
        intro = (
            "The recipe supplied when this card was made (`hf-cxr push --recipe`), not a record written by the "
            'training run: the run may have differed from it. See "Training data and split" for what was recorded.'
        )
    elif run:
        steps = f" ({training['step']} steps)" if training.get("step") is not None else ""
        recipe = f" `{run['recipe']}`" if run.get("recipe") else ""
        intro = (
            f"The resolved recipe of this run (`{RECIPE_NAME}` in this repository, as train.py wrote it): the recipe"
            f"{recipe} with the run's `--set` overrides and command-line flags applied, and the preset actually "
            "built. Its `curriculum.<stage>.epochs` are the recipe's plan; the run's length is the steps under "
            f'"Training data and split"{steps}.'
        )
    else:
        intro = (
            f"The recipe recorded with this model folder (`{RECIPE_NAME}` in this repository). The folder has no "
            "record of its run, so whether the recipe includes the run's command-line overrides was not recorded: "
            "read it as the recipe's values, not as an account of the run."
        )
    text = intro + "\n\n```yaml\n" + recipe_text.strip() + "\n```"
    if run.get("command_line"):
        text += f"\n\nCommand line of the run:\n\n```\n{shlex.join(str(part) for part in run['command_line'])}\n```"
    return text


def _compute_section(model_dir: Path, recorded: Mapping[str, Any]) -> str:
    """Parameters from the weights, and the training run's hardware and time from `metrics.json`, when recorded."""
    parameters = 0
    for weights in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(weights), framework="pt") as handle:
            names = handle.keys()  # a safe_open handle is not iterable
            parameters += sum(math.prod(handle.get_slice(name).get_shape()) for name in names)
    lines = [f"- Parameters: {parameters / 1e6:.2f} M (all tensors in the weights, buffers included)."]
    training = recorded.get("training") or {}
    compute = training.get("compute")
    if compute:
        seconds = float(compute["wall_seconds"])
        duration = f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"
        lines.append(
            f"- Training: {training['step']} optimizer steps on {compute['processes']} x {compute['device']}, "
            f"mixed precision {compute['mixed_precision']}, batch {compute['batch_size_per_device']} per device x "
            f"{compute['gradient_accumulation_steps']} accumulation step(s); {duration} of wall-clock time "
            "(validation included)."
        )
    else:
        lines.append("- Training hardware and time were not recorded with this model folder.")
    lines.append(
        "- Speed: `hf-cxr bench` measures inference and training images/s beside DenseNet-121 and the model's own "
        "backbone on your machine; hf-cxr's `docs/benchmarks.md` records the figures measured so far, with machines."
    )
    return "\n".join(lines)


def _thresholds_section(config: Mapping[str, Any], labels: Sequence[str], document: Mapping[str, Any] | None) -> str:
    """The config's `decision_thresholds`, one row per finding: the stored value and how it was set, or that 0.5
    applies because none is stored (with the evaluation's reason when the attached report gives one)."""
    thresholds = config.get("decision_thresholds") or {}
    per_class = (document or {}).get("per_class") or {}
    if not thresholds:
        return (
            "The config holds no `decision_thresholds`: no operating point was chosen for this model. The outputs "
            "are logits; a sigmoid gives scores in [0, 1] that are not calibrated probabilities."
        )
    where = (document or {}).get("threshold_split")
    rows = ["| finding | threshold | how it was set |", "|---|---|---|"]
    for name in labels:
        entry = per_class.get(name) or {}
        from_report = where and entry.get("threshold_method") == CHOSEN_BY_YOUDEN
        if name in thresholds:
            value = float(thresholds[name])
            if entry.get("threshold_method") == FALLBACK and math.isclose(value, 0.5):
                how = f"0.5 fallback: no threshold could be chosen on `{where}` ({entry.get('threshold_note')})"
            elif from_report and math.isclose(value, float(entry.get("threshold", math.nan)), abs_tol=1e-9):
                how = f"chosen on the `{where}` split by Youden's J (the evaluation below)"
            else:
                how = "stored in the config; how it was chosen is not recorded with this card's evaluation"
            rows.append(f"| {name} | {value:.3f} | {how} |")
        else:
            reason = entry.get("threshold_note") if entry.get("threshold_method") == FALLBACK else None
            why = f": no threshold could be chosen on `{where}` ({reason})" if reason and where else ""
            rows.append(f"| {name} | 0.5 | none stored, 0.5 applies{why} |")
    return (
        "The outputs are logits (one per finding); the pipeline applies a sigmoid. `config.decision_thresholds` "
        "holds the per-finding thresholds below (0.5 applies to a finding without one). They are a starting point "
        "for research analyses, not clinically validated operating points.\n\n" + "\n".join(rows)
    )


def _shipped_pipelines(config: Mapping[str, Any], folder: Path) -> list[str]:
    """The pipeline tasks the folder ships as remote code: listed in `custom_pipelines`, with their `.py` present."""
    shipped = []
    for task, info in (config.get("custom_pipelines") or {}).items():
        implementation = info.get("impl") if isinstance(info, Mapping) else None
        if isinstance(implementation, str) and (folder / f"{implementation.split('.')[0]}.py").is_file():
            shipped.append(task)
    return sorted(shipped)


def _usage_notes(config: Mapping[str, Any], folder: Path) -> str:
    """The card's remote-code facts: what the repository's code imports, and the pipeline it ships (if any)."""
    pipelines = _shipped_pipelines(config, folder)
    lines = [
        f"Remote code (`trust_remote_code=True`) runs this repository's `.py` files; without hf-cxr they import only "
        f"{REMOTE_CODE_IMPORTS}. Reading a DICOM file also needs `pydicom`, imported only when a DICOM is read. "
        "With `hf-cxr` installed (`import hf_cxr`) the classes are registered locally and `trust_remote_code` is not "
        "needed."
    ]
    if CXR_PIPELINE_TASK in pipelines:
        lines.append(
            f'This repository ships the `"{CXR_PIPELINE_TASK}"` pipeline as remote code: `pipeline("{CXR_PIPELINE_TASK}'
            f'", model=..., trust_remote_code=True)` hands every input (path, bytes, DICOM, PIL image, array) to the '
            "image processor, which reads it at full precision."
        )
    elif pipelines:
        lines.append(f"Pipelines shipped as remote code: {', '.join(f'`{name}`' for name in pipelines)}.")
    return "\n\n".join(lines)


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


def _task_auto_class(model_dir: Path) -> Any:
    """The Auto class of the saved model's task (image classification; video classification for CT windows)."""
    from hf_cxr.registry import ARCHITECTURES

    model_type = json.loads((model_dir / "config.json").read_text(encoding="utf-8")).get("model_type")
    if model_type not in ARCHITECTURES:
        raise ValueError(f"'{model_dir}' holds a {model_type!r} model, not one of hf-cxr's {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[model_type].task_auto_class


def _auto_map_complete(model_dir: Path) -> bool:
    """True when the config and processor name their remote code and every named file is in the folder."""
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    auto_map = config.get("auto_map") or {}
    if not {"AutoConfig", "AutoModel", _task_auto_class(model_dir).__name__} <= set(auto_map):
        return False
    processor_path = model_dir / "preprocessor_config.json"
    if not processor_path.is_file():
        return False
    processor_map = json.loads(processor_path.read_text(encoding="utf-8")).get("auto_map") or {}
    references = [*auto_map.values(), *processor_map.values()]
    modules = {str(reference).split(".")[0] for reference in references if isinstance(reference, str)}
    return "AutoImageProcessor" in processor_map and all((model_dir / f"{module}.py").is_file() for module in modules)


def _copy_model_files(model_dir: Path, target: Path) -> list[str]:
    """Copy the Hub files of a saved folder; re-save through the Auto classes when remote code is incomplete."""
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"'{model_dir}' is not a saved model folder (no config.json)")
    if (model_dir / "pytorch_model.bin").is_file() and not any(model_dir.glob("*.safetensors")):
        raise ValueError(f"'{model_dir}' holds pickled weights only; hf-cxr publishes safetensors (save_pretrained)")
    if not _auto_map_complete(model_dir):
        from transformers import AutoImageProcessor

        import hf_cxr  # noqa: F401  (registration: save_pretrained then writes auto_map and copies the code)

        _task_auto_class(model_dir).from_pretrained(model_dir).save_pretrained(target)
        AutoImageProcessor.from_pretrained(model_dir).save_pretrained(target)
        return sorted(path.name for path in target.iterdir())
    copied = []
    for path in sorted(model_dir.iterdir()):
        if path.is_file() and (path.name in MODEL_FILES or path.name.endswith(MODEL_SUFFIXES)):
            shutil.copy2(path, target / path.name)
            copied.append(path.name)
    if not any(name.endswith(".safetensors") for name in copied):
        raise FileNotFoundError(f"'{model_dir}' has no *.safetensors weights")
    return copied


def assemble_upload_folder(
    model_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    repo_id: str,
    report_dir: str | os.PathLike[str] | None = None,
    recipe: str | os.PathLike[str] | None = None,
    training_dataset: str | None = None,
    dataset_id: str | None = None,
    license: str | None = None,
) -> Path:
    """Write the exact folder `push` uploads: weights, config (auto_map), processor, remote code, README.md card,
    `recipe.yaml` when known, and `evaluation/` (report, metrics, plots) when a report folder is given."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"'{out_dir}' is not empty; the upload folder must hold only what is uploaded")
    out_dir.mkdir(parents=True, exist_ok=True)
    _copy_model_files(model_dir, out_dir)
    recipe_path = Path(recipe) if recipe is not None else model_dir / RECIPE_NAME
    if recipe_path.is_file():
        shutil.copy2(recipe_path, out_dir / RECIPE_NAME)
    if report_dir is not None:
        evaluation = out_dir / EVALUATION_FOLDER
        evaluation.mkdir()
        for name in REPORT_FILES:
            source = Path(report_dir) / name
            if not source.is_file():
                raise FileNotFoundError(f"'{source}' missing: pass the --out folder of `hf-cxr evaluate`")
            shutil.copy2(source, evaluation / name)
    card = render_model_card(
        out_dir,
        repo_id,
        report_dir,
        recipe,  # None: the model folder's own recipe.yaml (copied into out_dir), the run's record
        training_dataset,
        dataset_id,
        license,
        training_metrics=model_dir / "metrics.json",
    )
    card.save(out_dir / "README.md")
    return out_dir


def add_to_cache(folder: str | os.PathLike[str], repo_id: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Lay a model folder out in the Hugging Face cache as if `repo_id` had been downloaded, so that
    `from_pretrained(repo_id)`, `pipeline(model=repo_id)` and `hf-cxr predict --model repo_id` load it offline:
    a way to try a folder by the repo id it will have (e.g. `hf-cxr push --dry-run --out DIR`) before it is on the
    Hub. Every file of `folder` (sub-folders included) is copied into `snapshots/<commit>/`, where the commit is a
    hash of the files' names and contents, and `refs/main` points at it. `cache_dir` defaults to the cache
    huggingface_hub uses (`HF_HUB_CACHE`). Returns the snapshot folder; raises `FileNotFoundError` when `folder`
    holds no `config.json`."""
    import hashlib

    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"'{folder}' is not a saved model folder (no config.json)")
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    digest = hashlib.sha1()
    for path in files:
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    repo = Path(cache_dir or constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")
    snapshot = repo / "snapshots" / digest.hexdigest()
    for path in files:
        target = snapshot / path.relative_to(folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(digest.hexdigest())
    return snapshot


@dataclass
class PushResult:
    """The folder that was (or, in a dry run, would be) uploaded and the upload's commit, if any."""

    folder: Path | None
    files: list[str]
    repo_url: str | None = None
    commit_url: str | None = None


def _listing(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


def push_model(
    model_dir: str | os.PathLike[str],
    repo_id: str,
    private: bool = False,
    report_dir: str | os.PathLike[str] | None = None,
    dry_run: bool = False,
    out_dir: str | os.PathLike[str] | None = None,
    recipe: str | os.PathLike[str] | None = None,
    training_dataset: str | None = None,
    dataset_id: str | None = None,
    license: str | None = None,
    token: str | None = None,
    commit_message: str = "Upload hf-cxr model, processor, remote code and card",
) -> PushResult:
    """Assemble the upload folder and publish it (`create_repo` + `upload_folder`); `dry_run` only writes it to
    `out_dir`. Without `dry_run` the folder is assembled in a temporary directory and removed afterwards."""
    options = dict(
        report_dir=report_dir, recipe=recipe, training_dataset=training_dataset, dataset_id=dataset_id, license=license
    )
    if dry_run:
        if out_dir is None:
            raise ValueError("--dry-run needs --out: the folder that would be uploaded is written there")
        folder = assemble_upload_folder(model_dir, out_dir, repo_id, **options)
        return PushResult(folder, _listing(folder))
    with tempfile.TemporaryDirectory(prefix="hf-cxr-push-") as staging:
        folder = assemble_upload_folder(model_dir, Path(staging) / "upload", repo_id, **options)
        files = _listing(folder)
        api = HfApi(token=token)
        repo_url = api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id, repo_type="model", folder_path=str(folder), commit_message=commit_message
        )
    return PushResult(None, files, str(repo_url), getattr(commit, "commit_url", None) or str(commit))
