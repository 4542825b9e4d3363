"""The prose sections of a model card, each from what was recorded: the evaluation (`metrics.json` of
`hf-cxr evaluate`), the training data and length (train.py's `metrics.json`), the recipe (`recipe.yaml`), compute
(the weights and the run's record), the decision thresholds (the config) and the remote-code notes (the folder's
`.py` files). A fact that was not recorded is said to be unrecorded.
"""

from __future__ import annotations

import json
import math
import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import safe_open

from hf_cxr.evaluation.report import (
    describe_bootstrap,
    describe_conversion,
    describe_splits,
    describe_thresholds,
    threshold_cell,
)
from hf_cxr.evaluation.scores import CHOSEN_BY_YOUDEN, FALLBACK
from hf_cxr.hub.metadata import EVALUATION_FOLDER, RECIPE_NAME
from hf_cxr.hub.model_index import CT_EVALUATION, _ct_metric_keys, _model_index_statement

if TYPE_CHECKING:
    from hf_cxr.hub.cards import DatasetFacts


# What a preset is, in the card's words (any other preset: "not the paper's configuration").
PRESET_WORDS = {
    "paper": "the configuration the paper describes",
    "tiny": "hf-cxr's tiny configuration for tests and demos, far smaller than the paper's; not the paper's model",
}
# What hf-cxr's remote code imports, for the card's "How to use" (the `.py` files of the repository).
REMOTE_CODE_IMPORTS = "torch, timm, transformers (with its dependency huggingface_hub), safetensors, numpy and Pillow"
CXR_PIPELINE_TASK = "chest-x-ray-classification"


def _looks_like_hub_id(value: str) -> bool:
    return value.count("/") == 1 and not os.path.isabs(value) and not Path(value).exists()


def _ct_metrics_section(document: Mapping[str, Any], dataset_name: str) -> str:
    from hf_cxr.evaluation.report import _format

    bootstrap = document.get("bootstrap", {})
    lines = [
        f"> **{document['interval_note']}**" if document.get("interval_note") else "",
        "",
        f"Scored per patient on the `{document['split']}` split of {_evaluated(document, dataset_name)}: "
        f"{document['num_patients']} "
        f"patients ({document['num_slabs']} slabs; slab scores aggregated by "
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
