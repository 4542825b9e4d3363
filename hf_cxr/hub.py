"""Model cards and Hub publishing: the exact folder `hf-cxr push` uploads, its card, and the upload.

The card's metadata (licence, library, pipeline tag, tags, datasets, metrics, `model-index` with per-finding
ROC-AUC and bootstrap intervals) is built with `huggingface_hub.ModelCardData`/`EvalResult`; the prose comes
from `hub_cards/model_<model_type>.md` (installed as `hf_cxr.hub_cards`). The upload is `HfApi.create_repo`
plus one `HfApi.upload_folder` of the assembled folder, so what `--dry-run` writes is what would be uploaded.
"""

from __future__ import annotations

import json
import math
import os
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

from hf_cxr.evaluation.report import REPORT_FILES, read_metrics
from hf_cxr.labels import LABEL_SETS

HUB_TAGS = ("medical", "radiology", "chest-x-ray", "multi-label-classification")
PIPELINE_TAG = "image-classification"
# MMCAF-Net reads a CT window and a clinical table: no Hub widget or stock pipeline task fits it (it is hf-cxr's
# `ct-clinical-classification` pipeline), so its card says "other" rather than promising an image widget.
PIPELINE_TAGS: dict[str, str] = {"mmcaf_net": "other"}
LIBRARY_NAME = "transformers"
TASK_NAME = "Multi-label chest X-ray classification"
EVALUATION_FOLDER = "evaluation"
RECIPE_NAME = "recipe.yaml"
CARD_METRICS = ("roc_auc", "average_precision", "f1")
NOT_A_MEDICAL_DEVICE = (
    "Research use only. This model is not a medical device: it has not been cleared or approved by any "
    "regulator, and it must not be used for diagnosis, triage or any other clinical decision."
)
# The dataset an architecture is trained on when its labels do not name a label set (e.g. histology classes).
DEFAULT_TRAINING_DATA = {"mmcaf_net": "lung_pet_ct_dx"}
# Files of a saved model folder that belong on the Hub (plus every top-level *.py: the remote code).
MODEL_FILES = ("config.json", "preprocessor_config.json", "processor_config.json")
MODEL_SUFFIXES = (".safetensors", ".safetensors.index.json", ".py")


def pipeline_tag(model_type: str) -> str:
    """The card's `pipeline_tag`: the Hub widget and task the architecture fits."""
    return PIPELINE_TAGS.get(model_type, PIPELINE_TAG)


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


def eval_results(document: Mapping[str, Any], dataset_id: str, dataset_name: str) -> list[EvalResult]:
    """`model-index` entries: macro/micro ROC-AUC, macro AP, macro F1 at the chosen thresholds, and per finding
    ROC-AUC, each with its bootstrap interval in `args` (undefined numbers are left out, never written as 0)."""

    def entry(metric_type: str, name: str, config: str, value: Mapping[str, Any]) -> EvalResult | None:
        if not _finite(value.get("value")):
            return None
        args: dict[str, Any] = {}
        if value.get("ci95") and all(_finite(bound) for bound in value["ci95"]):
            bootstrap = document.get("bootstrap", {})
            args = {
                "ci95": value["ci95"],
                "bootstrap": f"{bootstrap.get('resamples')} resamples by {bootstrap.get('unit')}",
            }
        return EvalResult(
            task_type=PIPELINE_TAG,
            task_name=TASK_NAME,
            dataset_type=dataset_id,
            dataset_name=dataset_name,
            dataset_split=document["split"],
            metric_type=metric_type,
            metric_value=round(float(value["value"]), 4),
            metric_name=name,
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
        candidates.append(
            entry("f1", "macro F1 at validation-chosen thresholds", "macro", summary["at_threshold/f1_macro"])
        )
    for finding, values in document["per_class"].items():
        candidates.append(entry("roc_auc", f"ROC-AUC {finding}", finding, values["auc"]))
    return [candidate for candidate in candidates if candidate is not None]


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
    model_types = [tag for tag in data.get("tags") or [] if tag in PIPELINE_TAGS]
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
        f"Scored per patient on the `{document['split']}` split of {dataset_name}: {document['num_patients']} "
        f"patients ({document['num_windows']} windows; window scores aggregated by "
        f"{document['patient_aggregation']}). Intervals: 95 % percentile bootstrap, {bootstrap.get('resamples')} "
        "resamples of patients.",
        "",
        "| metric | value (95 % CI) |",
        "|---|---|",
    ]
    lines += [f"| {title} | {_format(document['metrics'][key])} |" for _, title, key in _ct_metric_keys(document)]
    lines += ["", f"The full report is `{EVALUATION_FOLDER}/report.md`."]
    return "\n".join(lines)


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
        f"Scored on the `{document['split']}` split of {dataset_name}: {document['num_images']} images of "
        f"{document['num_patients']} patients. Intervals: 95 % percentile bootstrap, {bootstrap.get('resamples')} "
        f"resamples by {bootstrap.get('unit')}. Thresholds: {document.get('threshold_source') or 'only 0.5 reported'}.",
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
        threshold = f"{entry['threshold']:.3f}" if "threshold" in entry else "0.5"
        chosen = point or entry["at_0.5"]
        lines.append(
            f"| {finding} | {entry['positives']} | {_format(entry['auc'])} | {_format(entry['average_precision'])} | "
            f"{threshold} | {_format(chosen['sensitivity'])} | {_format(chosen['specificity'])} |"
        )
    lines += [
        "",
        f"![ROC curves]({EVALUATION_FOLDER}/roc_curves.png)",
        "",
        f"![Reliability diagram]({EVALUATION_FOLDER}/reliability.png)",
        "",
        f"The full report (operating points at 0.5 and at the chosen thresholds) is `{EVALUATION_FOLDER}/report.md`.",
    ]
    return "\n".join(lines)


def _recipe_section(recipe_text: str | None) -> str:
    if recipe_text is None:
        return "The training recipe was not recorded with this model folder (no `recipe.yaml`)."
    return (
        f"The recipe this model was trained with (`{RECIPE_NAME}` in this repository; command-line overrides, if any, "
        "are not included):\n\n```yaml\n" + recipe_text.strip() + "\n```"
    )


def _compute_section(model_dir: Path, metrics_path: Path) -> str:
    """Parameters from the weights, and the training run's hardware and time from `metrics.json`, when recorded."""
    parameters = 0
    for weights in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(weights), framework="pt") as handle:
            names = handle.keys()  # a safe_open handle is not iterable
            parameters += sum(math.prod(handle.get_slice(name).get_shape()) for name in names)
    lines = [f"- Parameters: {parameters / 1e6:.2f} M (all tensors in the weights, buffers included)."]
    recorded = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else {}
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


def _thresholds_section(config: Mapping[str, Any]) -> str:
    thresholds = config.get("decision_thresholds") or {}
    if not thresholds:
        return (
            "The config holds no `decision_thresholds`: no operating point was chosen for this model. The outputs "
            "are logits; a sigmoid gives scores in [0, 1] that are not calibrated probabilities."
        )
    rows = ", ".join(f"{name} {value:.3f}" for name, value in thresholds.items())
    return (
        "The outputs are logits (one per finding); the pipeline applies a sigmoid. `config.decision_thresholds` "
        f"holds per-finding thresholds chosen on a validation split by Youden's J: {rows}. They are a starting "
        "point for research analyses, not clinically validated operating points."
    )


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

    trained_on = training_dataset or label_set_name(labels) or DEFAULT_TRAINING_DATA.get(model_type)
    train_facts = facts.get(trained_on or "")
    evaluated, eval_id, eval_name = "", None, ""
    if document is not None:
        evaluated = label_set_name(document.get("dataset_labels", [])) or ""
        eval_id = dataset_id or (
            document["dataset"] if _looks_like_hub_id(document["dataset"]) else evaluated or "local"
        )
        eval_name = facts[evaluated].name if evaluated in facts else eval_id
    datasets_meta = [name for name in (trained_on, eval_id) if name]
    if license is None:
        license = "other" if trained_on == "chexpert" else "apache-2.0"
    extra = {}
    if license == "other":
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
        training = (
            f"{train_facts.name} ({train_facts.homepage}), label set `{trained_on}` ({len(labels)} findings). hf-cxr's "
            "converters split by patient (no patient in two splits) and its training script selects checkpoints on "
            "the validation split, never on test; the dataset and splits of this checkpoint are those of the recipe "
            "below, when one was recorded."
        )
        attribution = f"- {train_facts.name}: {train_facts.licence}. Please cite: {train_facts.citation}"
    else:
        training = f"{trained_on or 'A dataset not recorded with the model'}; findings: {', '.join(labels)}."
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
        "training_data": training,
        "recipe": _recipe_section(recipe_text),
        "compute": _compute_section(model_dir, Path(training_metrics or model_dir / "metrics.json")),
        "evaluation": _metrics_section(document, eval_name),
        "thresholds": _thresholds_section(config),
        "data_attribution": attribution,
    }
    body = string.Template(model_card_template(model_type)).substitute(fields)
    card = ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body.lstrip()}")
    check_card(card)
    return card


def _task_auto_class(model_dir: Path) -> Any:
    """The Auto class of the saved model's task (image classification; video classification for CT windows)."""
    from hf_cxr.models import ARCHITECTURES

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
        recipe_path if recipe_path.is_file() else None,
        training_dataset,
        dataset_id,
        license,
        training_metrics=model_dir / "metrics.json",
    )
    card.save(out_dir / "README.md")
    return out_dir


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
