"""The numbers of the single-label CT evaluation (MMCAF-Net on Lung-PET-CT-Dx), scored per patient as the paper
reports; `ct_report` writes them out and `run.evaluate_ct_model` goes from a model and a dataset to a report.

A patient can have several CT series and each series several slabs; the model scores every slab (softmax over
the classes) and a patient's score per class is the max over all its slabs (the paper's rule; `mean` is the
alternative). Only then are the numbers computed, one row per patient:

- two classes (A vs G): AUROC of the positive class's score, and accuracy, F1, sensitivity, specificity, PPV and
  NPV of `score >= threshold` (0.5, and optionally a threshold chosen on the validation split by Youden's J);
- more classes (A, B, E, G): one-vs-rest AUROC per class and their macro mean, accuracy and macro F1 of the argmax.

Intervals are percentile bootstraps over patients (`scores.bootstrap_by_patient`, the same draws as the 2D
evaluation). A test split of a few dozen patients gives wide intervals, and the report says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np

from hf_cxr.evaluation.scores import (
    AT_CHOSEN,
    AT_HALF,
    DEFAULT_BOOTSTRAP,
    DEFAULT_CONFIDENCE,
    DEFAULT_THRESHOLD,
    Interval,
    ThresholdChoice,
    bootstrap_by_patient,
    confusion_metrics,
    expected_calibration_error,
    prediction_metrics,
    threshold_choices,
)
from hf_cxr.metrics import mean_of_defined, roc_auc

AGGREGATIONS = ("max", "mean")
BINARY_METRICS = ("accuracy", "f1", "sensitivity", "specificity", "ppv", "npv")
# The `scores.prediction_metrics` key of a binary metric named differently there.
BINARY_METRIC_SOURCES = {"ppv": "precision"}


@dataclass
class PatientScores:
    """One row per patient: aggregated class scores [P, K], the class index, the id and how many slabs it had."""

    probabilities: np.ndarray
    labels: np.ndarray
    patient_ids: list[str]
    slabs: np.ndarray


def aggregate_by_patient(
    probabilities: Any, labels: Any, patient_ids: Sequence[Any], aggregate: str = "max"
) -> PatientScores:
    """Reduce slab scores [S, K] to patient scores [P, K] (max or mean per class), patients in first-seen order.

    Slabs of one patient must share its label (a patient has one histology). Raises `ValueError` for an
    `aggregate` other than `max`/`mean`, `probabilities` that are not [S, K] with S labels and S patient ids, no
    slabs (S = 0), NaN or infinite probabilities, and a patient whose slabs carry different labels (naming it).
    """
    if aggregate not in AGGREGATIONS:
        raise ValueError(f"aggregate must be one of {AGGREGATIONS}, got {aggregate!r}")
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels)
    ids = [str(value) for value in patient_ids]
    if probabilities.ndim != 2 or len(probabilities) != len(labels) or len(labels) != len(ids):
        raise ValueError(
            f"probabilities {probabilities.shape}, {len(labels)} labels and {len(ids)} patient ids: need [S, K], S, S"
        )
    if len(ids) == 0:
        raise ValueError("no slabs to score")
    if not np.isfinite(probabilities).all():
        raise ValueError("probabilities contain NaN or infinity")
    order = list(dict.fromkeys(ids))
    position = {patient: index for index, patient in enumerate(order)}
    which = np.asarray([position[patient] for patient in ids])
    patient_probabilities = np.empty((len(order), probabilities.shape[1]))
    patient_labels = np.empty(len(order), dtype=np.int64)
    slabs = np.bincount(which, minlength=len(order))
    for index, patient in enumerate(order):
        members = which == index
        found = np.unique(labels[members])
        if found.size != 1:
            raise ValueError(f"patient {patient!r} has slabs with different labels {found.tolist()}")
        patient_labels[index] = int(found[0])
        rows = probabilities[members]
        patient_probabilities[index] = rows.max(axis=0) if aggregate == "max" else rows.mean(axis=0)
    return PatientScores(patient_probabilities, patient_labels, order, slabs)


def binary_metrics(truth: Any, score: Any, threshold: float = DEFAULT_THRESHOLD) -> dict[str, float]:
    """`BINARY_METRICS` of `score >= threshold` (`score` [N] against 0/1 `truth` [N]), from the multi-label path's
    `scores.confusion_metrics` (PPV is its precision); NaN where undefined (e.g. sensitivity without positives)."""
    shared = confusion_metrics(truth, score, threshold)
    return {key: shared[BINARY_METRIC_SOURCES.get(key, key)] for key in BINARY_METRICS}


def single_label_point_metrics(
    probabilities: np.ndarray,
    labels: np.ndarray,
    label_names: Sequence[str],
    positive_index: int | None = None,
    threshold: float | None = None,
) -> dict[str, float]:
    """Every number of the report as a flat `{key: value}` (the shape the bootstrap resamples), one row per patient.

    Binary (`positive_index` given): `auroc`, `at_0.5/<metric>` and, with `threshold`, `at_threshold/<metric>` for
    `BINARY_METRICS`. Multi-class: `auroc/<class>` (one vs rest), `auroc_macro` (mean of the defined ones),
    `accuracy` and `f1_macro` of the argmax, `f1/<class>`; a class absent from both truth and predictions has an
    undefined F1 and is left out of the macro mean (as scikit-learn's `f1_score(average="macro")` does).
    """
    if positive_index is not None:
        truth = (labels == positive_index).astype(np.float64)
        score = probabilities[:, positive_index]
        flat = {"auroc": roc_auc(truth, score)}
        points = {AT_HALF: DEFAULT_THRESHOLD, **({AT_CHOSEN: threshold} if threshold is not None else {})}
        for point, value in points.items():
            flat.update({f"{point}/{key}": number for key, number in binary_metrics(truth, score, value).items()})
        return flat
    predicted = probabilities.argmax(axis=1)
    flat = {}
    for index, name in enumerate(label_names):
        truth = (labels == index).astype(np.float64)
        flat[f"auroc/{name}"] = roc_auc(truth, probabilities[:, index])
        flat[f"f1/{name}"] = prediction_metrics(truth, predicted == index)["f1"]
    flat["auroc_macro"] = mean_of_defined([flat[f"auroc/{name}"] for name in label_names])
    flat["accuracy"] = float(np.mean(predicted == labels)) if len(labels) else math.nan
    flat["f1_macro"] = mean_of_defined([flat[f"f1/{name}"] for name in label_names])
    return flat


def choose_threshold_choice(patients: PatientScores, positive_index: int, positive_name: str) -> ThresholdChoice:
    """Youden's J threshold on the positive class's patient scores (meant for the validation split), or the 0.5
    fallback with the reason none could be chosen."""
    truth = (patients.labels == positive_index).astype(np.float64)[:, None]
    score = patients.probabilities[:, [positive_index]]
    return threshold_choices(score, truth, [positive_name])[positive_name]


def choose_threshold(patients: PatientScores, positive_index: int, positive_name: str) -> float:
    """The value of `choose_threshold_choice` (0.5 where none could be chosen)."""
    return choose_threshold_choice(patients, positive_index, positive_name).value


@dataclass
class SingleLabelScores:
    """Point estimates, intervals and the facts they rest on, for one split scored per patient."""

    label_names: list[str]
    positive_class: str | None
    aggregate: str
    patients: PatientScores
    metrics: dict[str, float]
    intervals: dict[str, Interval]
    threshold: float | None
    num_slabs: int
    calibration_error: float
    bootstrap: dict[str, Any] = field(default_factory=dict)

    @property
    def num_patients(self) -> int:
        return len(self.patients.patient_ids)

    def patients_per_class(self) -> dict[str, int]:
        counts = np.bincount(self.patients.labels, minlength=len(self.label_names))
        return {name: int(counts[index]) for index, name in enumerate(self.label_names)}


def score_single_label(
    slab_probabilities: Any,
    slab_labels: Any,
    patient_ids: Sequence[Any],
    label_names: Sequence[str],
    positive_class: str | None = None,
    aggregate: str = "max",
    threshold: float | None = None,
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    confidence: float = DEFAULT_CONFIDENCE,
) -> SingleLabelScores:
    """All numbers for one split: slabs -> patients (`aggregate`), then metrics and patient-bootstrap intervals.

    `positive_class` (two classes only; default the second class, squamous cell carcinoma for A vs G as in the
    paper) is the class whose score is thresholded. `threshold` is one chosen on another split (never this one).

    `slab_probabilities` [S, K] (K = len(label_names)), `slab_labels` [S] class indices and `patient_ids` [S].
    Raises `ValueError` for mismatched shapes, labels outside [0, K), a patient whose slabs disagree on the label,
    an unknown positive class, or a positive class or threshold with more than two classes.
    """
    label_names = list(label_names)
    patients = aggregate_by_patient(slab_probabilities, slab_labels, patient_ids, aggregate)
    if patients.probabilities.shape[1] != len(label_names):
        raise ValueError(f"{patients.probabilities.shape[1]} score columns for {len(label_names)} class names")
    if patients.labels.min() < 0 or patients.labels.max() >= len(label_names):
        raise ValueError(f"labels must be class indices in [0, {len(label_names)})")
    positive_index = None
    if len(label_names) == 2:
        positive_class = positive_class or label_names[1]
        if positive_class not in label_names:
            raise ValueError(f"positive class {positive_class!r} is not one of {label_names}")
        positive_index = label_names.index(positive_class)
    elif positive_class is not None or threshold is not None:
        raise ValueError("a positive class and a threshold apply to two classes only (more classes use the argmax)")

    def compute(rows: np.ndarray) -> dict[str, float]:
        return single_label_point_metrics(
            patients.probabilities[rows], patients.labels[rows], label_names, positive_index, threshold
        )

    intervals = (
        bootstrap_by_patient(compute, patients.patient_ids, n_bootstrap, seed, confidence) if n_bootstrap > 0 else {}
    )
    if positive_index is not None:
        truth = (patients.labels == positive_index).astype(np.float64)[:, None]
        calibration = expected_calibration_error(patients.probabilities[:, [positive_index]], truth)
    else:
        one_hot = np.eye(len(label_names))[patients.labels]
        calibration = expected_calibration_error(patients.probabilities, one_hot)
    return SingleLabelScores(
        label_names=label_names,
        positive_class=positive_class if positive_index is not None else None,
        aggregate=aggregate,
        patients=patients,
        metrics=compute(np.arange(len(patients.patient_ids))),
        intervals=intervals,
        threshold=threshold,
        num_slabs=len(patient_ids),
        calibration_error=calibration,
        bootstrap={"resamples": n_bootstrap, "seed": seed, "confidence": confidence, "unit": "patient"},
    )


def dataset_class_indices(dataset: datasets.Dataset, model_labels: Sequence[str]) -> np.ndarray:
    """The `label` column as the model's class indices [N] (int64), matched by class name (the dataset's `ClassLabel`
    names). Raises `ValueError` without a `ClassLabel` `label` column or when its classes are not the model's."""
    feature = dataset.features.get("label")
    if not isinstance(feature, datasets.ClassLabel):
        raise ValueError(f"the split needs a ClassLabel 'label' column (columns: {dataset.column_names})")
    if sorted(feature.names) != sorted(model_labels):
        raise ValueError(
            f"the dataset's classes {feature.names} are not the model's {list(model_labels)}: convert with the "
            "matching task (`--task ag` for two classes, `abeg` for four)"
        )
    to_model = np.asarray([list(model_labels).index(name) for name in feature.names])
    return to_model[np.asarray(dataset.select_columns(["label"])["label"], dtype=np.int64)]


__all__ = [
    "AGGREGATIONS",
    "BINARY_METRICS",
    "PatientScores",
    "SingleLabelScores",
    "aggregate_by_patient",
    "binary_metrics",
    "choose_threshold",
    "choose_threshold_choice",
    "dataset_class_indices",
    "score_single_label",
    "single_label_point_metrics",
]
