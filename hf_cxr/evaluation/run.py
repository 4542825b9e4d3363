"""Evaluate a saved model on a converted dataset: predictions, thresholds from validation, report folder.

This is what `hf-cxr evaluate` runs. Thresholds are chosen on `threshold_split` (validation by default) and
only then applied to the scored split; choosing them on the scored split, or on `test`, is refused.

Two paths, each from a model and a dataset to a report folder: `evaluate_model` scores a multi-label 2D model per
image (`scores`, `report`) and hands a single-label CT model (MMCAF-Net) to `evaluate_ct_model`, which scores it per
patient (`ct_scores`, `ct_report`).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch

from hf_cxr.data._common import load_converted
from hf_cxr.data.transforms import eval_transform
from hf_cxr.evaluation.ct_report import write_single_label_report
from hf_cxr.evaluation.ct_scores import (
    AGGREGATIONS,
    SingleLabelScores,
    aggregate_by_patient,
    choose_threshold_choice,
    dataset_class_indices,
    score_single_label,
)
from hf_cxr.evaluation.report import dataset_conversion, describe_conversion, write_report
from hf_cxr.evaluation.scores import (
    DEFAULT_BOOTSTRAP,
    FALLBACK,
    Scores,
    score_predictions,
    shared_findings,
    threshold_choices,
)
from hf_cxr.inference.ct import predict_ct_slabs
from hf_cxr.labels import CHESTXRAY14_LABELS, CHEXPERT_LABELS, LABEL_SETS
from hf_cxr.losses import IGNORE_LABEL
from hf_cxr.machine import torch_device
from hf_cxr.registry import is_ct_model, load_config, load_model

PATIENT_COLUMN = "patient_id"
NO_THRESHOLD_SPLIT = ("none", "")


@dataclass
class EvaluationReport:
    """What `evaluate_model` measured and where it wrote it."""

    out_dir: Path
    document: dict[str, Any]
    scores: Scores
    thresholds: dict[str, float] | None
    probabilities: np.ndarray
    targets: np.ndarray


@torch.no_grad()
def predict_probabilities(
    model: torch.nn.Module,
    processor: Any,
    dataset: datasets.Dataset,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    image_column: str = "image",
) -> np.ndarray:
    """Sigmoid of the model's logits for every row, in dataset order, preprocessed by the model's own processor:
    float64 [N, num_labels]. Raises `ValueError` when `dataset` has no rows."""
    device = torch_device(device)
    model = model.to(device).eval()
    images = dataset.select_columns([image_column]).with_transform(eval_transform(processor, image_column))
    outputs = []
    for start in range(0, len(images), batch_size):
        pixel_values = images[start : start + batch_size]["pixel_values"].to(device)
        logits = model(pixel_values=pixel_values).logits
        outputs.append(torch.sigmoid(logits.float()).cpu().numpy())
    if not outputs:
        raise ValueError("the split is empty: nothing to evaluate")
    return np.concatenate(outputs).astype(np.float64)


def dataset_targets(dataset: datasets.Dataset, label_column: str = "labels") -> np.ndarray:
    """Labels as float [N, K]; where a `label_mask` column is 0 the label becomes `IGNORE_LABEL`. Raises
    `ValueError` when the dataset has no `label_column` column (listing the columns it has)."""
    columns = [name for name in (label_column, "label_mask") if name in dataset.column_names]
    if label_column not in columns:
        raise ValueError(f"the dataset has no '{label_column}' column (columns: {dataset.column_names})")
    table = dataset.select_columns(columns)
    targets = np.asarray(table[label_column], dtype=np.float64)
    if "label_mask" in columns:
        targets[np.asarray(table["label_mask"], dtype=np.float64) == 0.0] = IGNORE_LABEL
    return targets


def dataset_label_names(
    dataset: datasets.Dataset, model_labels: Sequence[str], override: str | Sequence[str] | None = None
) -> tuple[list[str], str | None]:
    """The finding names of the dataset's `labels` columns, and a note when they had to be assumed.

    `override`: a label-set name (`chestxray14`, `chexpert`), a comma-separated list, or a list. Without it,
    hf-cxr's converters are recognised by their columns (CheXpert: `label_mask`/`uncertain`; ChestX-ray14:
    `finding_labels`/`image_index`); any other dataset is assumed to use the model's own label order.

    Raises `ValueError` when the number of names (given or assumed) differs from the width of the dataset's `labels`
    column; `KeyError` when the dataset has no `labels` column.
    """
    length = getattr(dataset.features["labels"], "length", -1)
    width = length if length and length > 0 else len(dataset.select_columns(["labels"])[0]["labels"])
    if override:
        if isinstance(override, str):
            names = list(LABEL_SETS[override]) if override in LABEL_SETS else [n.strip() for n in override.split(",")]
        else:
            names = list(override)
        note = None
    elif {"label_mask", "uncertain"} & set(dataset.column_names):
        names, note = list(CHEXPERT_LABELS), None
    elif {"finding_labels", "image_index"} & set(dataset.column_names):
        names, note = list(CHESTXRAY14_LABELS), None
    else:
        names = list(model_labels)
        note = "The dataset does not name its label columns; they were assumed to be in the model's label order."
    if len(names) != width:
        raise ValueError(f"{len(names)} label names for {width} label columns in the dataset")
    return names, note


def write_thresholds(model_dir: str | os.PathLike[str], thresholds: Mapping[str, float]) -> Path:
    """Store `thresholds` as `decision_thresholds` in the folder's `config.json` (atomic replace).

    The JSON is edited in place rather than re-saved through the config class, so nothing else in it
    (`auto_map`, labels, preset fields) changes. Raises `FileNotFoundError` when `model_dir` holds no `config.json`
    (a Hub id, or not a model folder), and `ValueError` naming the findings of `thresholds` that are not in the
    config's `id2label`; nothing is written then.
    """
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"'{path}' not found: --write-thresholds needs a local model folder")
    config = json.loads(path.read_text(encoding="utf-8"))
    known = set(config.get("id2label", {}).values())
    unknown = sorted(set(thresholds) - known)
    if unknown:
        raise ValueError(f"thresholds for findings the model does not have: {unknown}")
    config["decision_thresholds"] = {name: float(value) for name, value in thresholds.items()}
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".config.", suffix=".json")
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        stream.write(json.dumps(config, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, path)
    return path


def _check_threshold_split(split: str, threshold_split: str | None) -> None:
    """Raise `ValueError` when thresholds would be chosen on the scored split `split` or on `test` (`None`: no
    threshold split, nothing to check)."""
    if threshold_split is not None and threshold_split in (split, "test"):
        raise ValueError(
            f"thresholds may not be chosen on the '{threshold_split}' split (scoring '{split}'): choose them on a "
            "validation split, or pass --threshold-split none"
        )


def _check_splits_present(splits: datasets.DatasetDict, *names: str | None) -> None:
    """Raise `ValueError` naming the first of `names` (None entries skipped) that `splits` does not have."""
    for name in filter(None, names):
        if name not in splits:
            raise ValueError(f"the dataset has no '{name}' split (it has {sorted(splits)})")


def evaluate_model(
    model: str | os.PathLike[str],
    dataset: str | os.PathLike[str] | datasets.DatasetDict,
    split: str = "test",
    out_dir: str | os.PathLike[str] = "evaluation",
    threshold_split: str | None = "validation",
    batch_size: int = 32,
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    store_thresholds: bool = False,
    dataset_labels: str | Sequence[str] | None = None,
    device: str | None = None,
    aggregate: str = "max",
    positive_class: str | None = None,
    slice_selection: str | None = None,
    slab_stride: int | None = None,
) -> EvaluationReport | SingleLabelEvaluation:
    """Score `model` (folder or Hub id) on `dataset[split]` and write the report folder `out_dir`.

    `threshold_split` (default `validation`; `None`/`"none"` for none) chooses per-finding thresholds by
    Youden's J (0.5 fallback, reported as such, where none can be chosen); without it the model config's
    `decision_thresholds` are used when it has any. `store_thresholds` writes the chosen thresholds (not the
    fallbacks) into the model folder's config (same label set only).

    A single-label CT model (MMCAF-Net, by its config's `model_type`) on a converted Lung-PET-CT-Dx dataset is
    scored per patient by `evaluate_ct_model`: `aggregate` (max or mean over a patient's slabs),
    `positive_class` (two classes), `slice_selection` and `slab_stride` (override the processor's) apply there only.

    Raises `ValueError` when thresholds would be chosen on the scored split or on `test`; for `store_thresholds` without
    a threshold split or without a local model folder holding `config.json`; when the dataset lacks `split` or
    `threshold_split` (naming it and the splits there); for a CT model, with `dataset_labels`, with `store_thresholds`
    and more than two classes, and as `evaluate_ct_model` does; for a 2D model, when the dataset's label names do not
    match its label columns (`dataset_label_names`), the model shares no finding with the dataset, or `store_thresholds`
    is asked for cross-dataset. While scoring, a split without rows (`predict_probabilities`) or targets other than 0, 1
    or `IGNORE_LABEL` (`scores.check_arrays`) raise `ValueError` too. Loading raises as `load_converted`, `load_config`
    and `load_model` do: `FileNotFoundError` for a dataset that is neither a converted folder nor a loadable Hub id, a
    model that is neither a saved folder nor a cached Hub id, or a model saved without its image processor; `ValueError`
    for a dataset holding one `Dataset` instead of named splits, or a model that is not an hf-cxr architecture.
    """
    if threshold_split in NO_THRESHOLD_SPLIT:
        threshold_split = None
    _check_threshold_split(split, threshold_split)
    if store_thresholds and threshold_split is None:
        raise ValueError("--write-thresholds needs a --threshold-split to choose the thresholds on")
    if store_thresholds and not (Path(model) / "config.json").is_file():
        raise ValueError(f"--write-thresholds needs a local model folder with a config.json, got '{model}'")
    splits = dataset if isinstance(dataset, datasets.DatasetDict) else load_converted(dataset)
    conversion = dataset_conversion(dataset)
    _check_splits_present(splits, split, threshold_split)
    config = load_config(model)
    if is_ct_model(config.model_type):
        if dataset_labels:
            raise ValueError("--dataset-labels applies to multi-label datasets; a CT dataset names its classes")
        if store_thresholds and config.num_labels != 2:
            raise ValueError("--write-thresholds needs a two-class model; more classes are scored by the argmax")
        evaluation = evaluate_ct_model(
            model,
            splits,
            split,
            out_dir,
            threshold_split,
            batch_size,
            n_bootstrap,
            seed,
            device,
            aggregate,
            positive_class,
            slice_selection,
            slab_stride,
            dataset_name=str(dataset) if not isinstance(dataset, datasets.DatasetDict) else "in-memory DatasetDict",
            dataset_conversion=conversion,
        )
        chosen = evaluation.threshold is not None and evaluation.document.get("threshold_method") != FALLBACK
        if store_thresholds and chosen and evaluation.scores.positive_class is not None:
            write_thresholds(model, {evaluation.scores.positive_class: evaluation.threshold})
        return evaluation
    network, processor = load_model(model, device)
    model_labels = [network.config.id2label[index] for index in sorted(network.config.id2label)]
    names, label_note = dataset_label_names(splits[split], model_labels, dataset_labels)
    pairs = shared_findings(model_labels, names)
    if not pairs:
        raise ValueError(f"the model's findings {model_labels} share none with the dataset's {names}")
    cross_dataset = [model_name for model_name, _, _ in pairs] != model_labels or model_labels != names
    if store_thresholds and cross_dataset:
        raise ValueError("--write-thresholds needs a dataset with the model's own label set (this is cross-dataset)")
    scored = [model_name for model_name, _, _ in pairs]
    model_columns = [column for _, column, _ in pairs]
    data_columns = [column for _, _, column in pairs]

    def predictions(name: str) -> tuple[np.ndarray, np.ndarray]:
        part = splits[name]
        probabilities = predict_probabilities(network, processor, part, batch_size, device)[:, model_columns]
        return probabilities, dataset_targets(part)[:, data_columns]

    thresholds, threshold_source, methods = None, None, {}
    if threshold_split is not None:
        choices = threshold_choices(*predictions(threshold_split), scored)
        thresholds = {name: choice.value for name, choice in choices.items()}
        methods = {name: {"method": choice.method, "reason": choice.reason} for name, choice in choices.items()}
        threshold_source = f"chosen per finding on the `{threshold_split}` split (Youden's J)"
    elif getattr(network.config, "decision_thresholds", None):
        stored = network.config.decision_thresholds
        thresholds = {name: float(stored[name]) for name in scored if name in stored}
        absent = {"method": FALLBACK, "reason": "not in the model config's decision_thresholds"}
        methods = {name: {"method": "model_config", "reason": None} if name in stored else absent for name in scored}
        threshold_source = "the model config's `decision_thresholds` (0.5 where absent)"
    probabilities, targets = predictions(split)
    part = splits[split]
    patients = part[PATIENT_COLUMN] if PATIENT_COLUMN in part.column_names else None
    scores = score_predictions(probabilities, targets, scored, patients, thresholds, n_bootstrap, seed)
    context = {
        "model": str(model),
        "model_type": network.config.model_type,
        "dataset": str(dataset) if not isinstance(dataset, datasets.DatasetDict) else "in-memory DatasetDict",
        "split": split,
        "threshold_source": threshold_source,
        "threshold_split": threshold_split,
        "cross_dataset": cross_dataset,
        "finding_map": {model_name: names[column] for model_name, _, column in pairs},
        "model_labels": model_labels,
        "dataset_labels": names,
        "label_set_note": label_note,
        "dataset_conversion": conversion,
        "dataset_conversion_note": describe_conversion(conversion),
        "threshold_methods": methods,
    }
    document = write_report(out_dir, scores, probabilities, targets, context)
    if store_thresholds and thresholds is not None:
        # Only thresholds that were chosen: a finding whose threshold fell back to 0.5 gets none (0.5 applies where
        # `decision_thresholds` has no entry), so the config never presents a fallback as a chosen operating point.
        chosen = {name: value for name, value in thresholds.items() if methods[name]["method"] != FALLBACK}
        write_thresholds(model, chosen)
    return EvaluationReport(Path(out_dir), document, scores, thresholds, probabilities, targets)


# ------------------------------------------------------------------------------------------------ single-label CT


@dataclass
class SingleLabelEvaluation:
    """What the single-label CT evaluation measured and where it wrote it."""

    out_dir: Path
    document: dict[str, Any]
    scores: SingleLabelScores
    threshold: float | None
    slab_probabilities: np.ndarray


def evaluate_ct_model(
    model: str | os.PathLike[str],
    splits: datasets.DatasetDict,
    split: str = "test",
    out_dir: str | os.PathLike[str] = "evaluation",
    threshold_split: str | None = "validation",
    batch_size: int = 8,
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    device: str | None = None,
    aggregate: str = "max",
    positive_class: str | None = None,
    slice_selection: str | None = None,
    slab_stride: int | None = None,
    dataset_name: str = "in-memory DatasetDict",
    dataset_conversion: Mapping[str, Any] | None = None,
) -> SingleLabelEvaluation:
    """Score a saved CT model on `splits[split]` per patient and write the report folder (`ct_report`).

    Slabs are scored by `predict_ct_slabs` and reduced to patients by `aggregate` (`max`, the paper's rule, or
    `mean`); the numbers are `ct_scores.score_single_label`'s. Raises `ValueError` for an unknown `aggregate`, a
    missing split, a threshold split that is the scored one or `test`, a model that is not single-label, or a
    `positive_class` with more than two classes.

    `threshold_split` (two classes only; never the scored split nor `test`) chooses a Youden threshold on that
    split's patient scores; with four classes predictions are the argmax and it is not used.
    """
    if aggregate not in AGGREGATIONS:
        raise ValueError(f"aggregate must be one of {AGGREGATIONS}, got {aggregate!r}")
    _check_threshold_split(split, threshold_split)
    _check_splits_present(splits, split, threshold_split)
    network, processor = load_model(model, device)
    if network.config.problem_type not in (None, "single_label_classification"):
        raise ValueError(f"expected a single-label model, got problem_type {network.config.problem_type!r}")
    label_names = [network.config.id2label[index] for index in sorted(network.config.id2label)]
    binary = len(label_names) == 2
    if positive_class is not None and not binary:
        raise ValueError(f"--positive-class applies to two classes; this model has {len(label_names)}")

    def patient_slabs(name: str) -> tuple[np.ndarray, np.ndarray, list[str], int]:
        part = splits[name]
        labels = dataset_class_indices(part, label_names)
        patients = part.select_columns(["patient_id"])["patient_id"]
        slab_scores, rows = predict_ct_slabs(network, processor, part, batch_size, device, slice_selection, slab_stride)
        return slab_scores, labels[rows], [patients[row] for row in rows], len(part)

    threshold, threshold_source, threshold_method, threshold_note = None, None, None, None
    if threshold_split is not None and binary:
        scores_v, labels_v, ids_v, _ = patient_slabs(threshold_split)
        positive = positive_class or label_names[1]
        if positive not in label_names:
            raise ValueError(f"positive class {positive!r} is not one of {label_names}")
        patients_v = aggregate_by_patient(scores_v, labels_v, ids_v, aggregate)
        choice = choose_threshold_choice(patients_v, label_names.index(positive), positive)
        threshold, threshold_method, threshold_note = choice.value, choice.method, choice.reason
        where = f"the `{threshold_split}` split's {len(patients_v.patient_ids)} patients"
        if choice.chosen:
            threshold_source = f"a threshold of {threshold:.3f} chosen on {where} (Youden's J)"
        else:
            threshold_source = f"the 0.5 fallback: no threshold could be chosen on {where} ({choice.reason})"
    elif binary and getattr(network.config, "decision_thresholds", None):
        stored = network.config.decision_thresholds
        positive = positive_class or label_names[1]
        if positive in stored:
            threshold = float(stored[positive])
            threshold_method = "model_config"
            threshold_source = f"the model config's `decision_thresholds` ({threshold:.3f} for {positive})"
    slab_scores, slab_labels, slab_patients, num_series = patient_slabs(split)
    scores = score_single_label(
        slab_scores,
        slab_labels,
        slab_patients,
        label_names,
        positive_class if binary else None,
        aggregate,
        threshold,
        n_bootstrap,
        seed,
    )
    mode = slice_selection or processor.slice_selection
    context = {
        "model": str(model),
        "model_type": network.config.model_type,
        "dataset": dataset_name,
        "split": split,
        "threshold_split": threshold_split if binary else None,
        "threshold_source": threshold_source,
        "threshold_method": threshold_method,
        "threshold_note": threshold_note,
        "dataset_conversion": dict(dataset_conversion) if dataset_conversion else None,
        "dataset_conversion_note": describe_conversion(dataset_conversion),
        "num_series": num_series,
        "slice_selection": mode,
        "slab_stride": (slab_stride or processor.slab_stride or processor.num_slices) if mode == "sliding" else None,
    }
    document = write_single_label_report(out_dir, scores, context)
    return SingleLabelEvaluation(Path(out_dir), document, scores, threshold, slab_scores)
