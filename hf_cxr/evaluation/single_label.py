"""Single-label evaluation of CT models (MMCAF-Net on Lung-PET-CT-Dx), scored per patient as the paper reports.

A patient can have several CT series and each series several windows; the model scores every window (softmax over
the classes) and a patient's score per class is the max over all its windows (the paper's rule; `mean` is the
alternative). Only then are the numbers computed, one row per patient:

- two classes (A vs G): AUROC of the positive class's score, and accuracy, F1, sensitivity, specificity, PPV and
  NPV of `score >= threshold` (0.5, and optionally a threshold chosen on the validation split by Youden's J);
- more classes (A, B, E, G): one-vs-rest AUROC per class and their macro mean, accuracy and macro F1 of the argmax.

Intervals are percentile bootstraps over patients (`scores.bootstrap_by_patient`, the same draws as the 2D
evaluation). A test split of a few dozen patients gives wide intervals, and the report says so.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from sklearn.metrics import roc_auc_score

from hf_cxr.data._common import strict_json
from hf_cxr.evaluation.report import (
    FEW_POSITIVES,
    METRICS_NAME,
    RELIABILITY_NAME,
    REPORT_NAME,
    RESEARCH_USE,
    ROC_NAME,
    _format,
    _number,
    describe_conversion,
    draw_roc_panel,
    plot_reliability_pairs,
)
from hf_cxr.evaluation.scores import (
    AT_CHOSEN,
    AT_HALF,
    DEFAULT_BOOTSTRAP,
    DEFAULT_CONFIDENCE,
    DEFAULT_THRESHOLD,
    FALLBACK,
    Interval,
    ThresholdChoice,
    bootstrap_by_patient,
    confusion_counts,
    confusion_metrics,
    expected_calibration_error,
    ratio,
    threshold_choices,
)
from hf_cxr.inference.ct import predict_ct_windows
from hf_cxr.metrics import mean_of_defined

AGGREGATIONS = ("max", "mean")
BINARY_METRICS = ("accuracy", "f1", "sensitivity", "specificity", "ppv", "npv")
BINARY_METRIC_TITLES = {
    "accuracy": "accuracy",
    "f1": "F1",
    "sensitivity": "sensitivity",
    "specificity": "specificity",
    "ppv": "PPV (precision)",
    "npv": "NPV",
}
# Below this many patients the numbers only show that the pipeline runs.
PIPELINE_CHECK_PATIENTS = 20
PAPER_TEST_NOTE = (
    "the MMCAF-Net paper's test set works out to 43 patients (15 squamous), for which the 95 % interval on AUROC "
    "spans roughly 0.63-0.94, so every method in its table is statistically indistinguishable"
)


# ------------------------------------------------------------------------------------------------ arrays


@dataclass
class PatientScores:
    """One row per patient: aggregated class scores [P, K], the class index, the id and how many windows it had."""

    probabilities: np.ndarray
    labels: np.ndarray
    patient_ids: list[str]
    windows: np.ndarray


def aggregate_by_patient(
    probabilities: Any, labels: Any, patient_ids: Sequence[Any], aggregate: str = "max"
) -> PatientScores:
    """Reduce window scores [W, K] to patient scores [P, K] (max or mean per class), patients in first-seen order.

    Windows of one patient must share its label (a patient has one histology); otherwise `ValueError`.
    """
    if aggregate not in AGGREGATIONS:
        raise ValueError(f"aggregate must be one of {AGGREGATIONS}, got {aggregate!r}")
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels)
    ids = [str(value) for value in patient_ids]
    if probabilities.ndim != 2 or len(probabilities) != len(labels) or len(labels) != len(ids):
        raise ValueError(
            f"probabilities {probabilities.shape}, {len(labels)} labels and {len(ids)} patient ids: need [W, K], W, W"
        )
    if len(ids) == 0:
        raise ValueError("no windows to score")
    if not np.isfinite(probabilities).all():
        raise ValueError("probabilities contain NaN or infinity")
    order = list(dict.fromkeys(ids))
    position = {patient: index for index, patient in enumerate(order)}
    which = np.asarray([position[patient] for patient in ids])
    patient_probabilities = np.empty((len(order), probabilities.shape[1]))
    patient_labels = np.empty(len(order), dtype=np.int64)
    windows = np.bincount(which, minlength=len(order))
    for index, patient in enumerate(order):
        members = which == index
        found = np.unique(labels[members])
        if found.size != 1:
            raise ValueError(f"patient {patient!r} has windows with different labels {found.tolist()}")
        patient_labels[index] = int(found[0])
        rows = probabilities[members]
        patient_probabilities[index] = rows.max(axis=0) if aggregate == "max" else rows.mean(axis=0)
    return PatientScores(patient_probabilities, patient_labels, order, windows)


def _auroc(truth: np.ndarray, score: np.ndarray) -> float:
    return float(roc_auc_score(truth, score)) if truth.size and 0.0 < truth.mean() < 1.0 else math.nan


def binary_metrics(truth: np.ndarray, score: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> dict[str, float]:
    """Accuracy, F1, sensitivity, specificity, PPV and NPV of `score >= threshold`; NaN where undefined."""
    truth = np.asarray(truth, dtype=np.float64)
    score = np.asarray(score, dtype=np.float64)
    shared = confusion_metrics(truth, score, threshold)
    tp, fp, fn, tn = confusion_counts(truth, score >= threshold)
    return {
        "accuracy": ratio(tp + tn, tp + fp + fn + tn),
        "f1": shared["f1"],
        "sensitivity": shared["sensitivity"],
        "specificity": shared["specificity"],
        "ppv": shared["precision"],
        "npv": ratio(tn, tn + fn),
    }


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
        flat = {"auroc": _auroc(truth, score)}
        points = {AT_HALF: DEFAULT_THRESHOLD, **({AT_CHOSEN: threshold} if threshold is not None else {})}
        for point, value in points.items():
            flat.update({f"{point}/{key}": number for key, number in binary_metrics(truth, score, value).items()})
        return flat
    predicted = probabilities.argmax(axis=1)
    flat = {}
    for index, name in enumerate(label_names):
        truth = (labels == index).astype(np.float64)
        flat[f"auroc/{name}"] = _auroc(truth, probabilities[:, index])
        tp, fp, fn, _ = confusion_counts(truth, predicted == index)
        flat[f"f1/{name}"] = ratio(2 * tp, 2 * tp + fp + fn)
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
    num_windows: int
    calibration_error: float
    bootstrap: dict[str, Any] = field(default_factory=dict)

    @property
    def num_patients(self) -> int:
        return len(self.patients.patient_ids)

    def patients_per_class(self) -> dict[str, int]:
        counts = np.bincount(self.patients.labels, minlength=len(self.label_names))
        return {name: int(counts[index]) for index, name in enumerate(self.label_names)}


def score_single_label(
    window_probabilities: Any,
    window_labels: Any,
    patient_ids: Sequence[Any],
    label_names: Sequence[str],
    positive_class: str | None = None,
    aggregate: str = "max",
    threshold: float | None = None,
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    confidence: float = DEFAULT_CONFIDENCE,
) -> SingleLabelScores:
    """All numbers for one split: windows -> patients (`aggregate`), then metrics and patient-bootstrap intervals.

    `positive_class` (two classes only; default the second class, squamous cell carcinoma for A vs G as in the
    paper) is the class whose score is thresholded. `threshold` is one chosen on another split (never this one).
    """
    label_names = list(label_names)
    patients = aggregate_by_patient(window_probabilities, window_labels, patient_ids, aggregate)
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
        num_windows=len(patient_ids),
        calibration_error=calibration,
        bootstrap={"resamples": n_bootstrap, "seed": seed, "confidence": confidence, "unit": "patient"},
    )


# ------------------------------------------------------------------------------------------------ report


def interval_note(num_patients: int) -> str:
    """What the report says about the width of its intervals, given how many patients were scored.

    Always states that a few dozen test patients give wide intervals (the regime this dataset is evaluated in);
    a handful of patients is called a pipeline check.
    """
    note = (
        f"{num_patients} patients were scored. A test set of a few dozen patients gives wide 95 % intervals "
        f"({PAPER_TEST_NOTE}): read the intervals, not the point estimates, and do not rank models whose intervals "
        "overlap."
    )
    if num_patients < PIPELINE_CHECK_PATIENTS:
        note += " With so few patients these numbers only show that the pipeline runs: do not quote them."
    return note


def single_label_document(scores: SingleLabelScores, context: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON written to `metrics.json`: every metric with its interval, the counts and the per-patient scores."""

    def with_interval(key: str) -> dict[str, Any]:
        entry: dict[str, Any] = {"value": _number(scores.metrics[key])}
        interval = scores.intervals.get(key)
        if interval is not None:
            entry["ci95"] = [_number(interval.low), _number(interval.high)]
            entry["bootstrap_defined"] = interval.defined
        return entry

    binary = scores.positive_class is not None
    return {
        **context,
        "evaluation": "single_label_ct",
        "task": "binary" if binary else "multiclass",
        "label_names": scores.label_names,
        "positive_class": scores.positive_class,
        "patient_aggregation": scores.aggregate,
        "num_patients": scores.num_patients,
        "num_windows": scores.num_windows,
        "patients_per_class": scores.patients_per_class(),
        "threshold": scores.threshold,
        "metrics": {key: with_interval(key) for key in scores.metrics},
        "expected_calibration_error": _number(scores.calibration_error),
        "bootstrap": scores.bootstrap,
        "interval_note": interval_note(scores.num_patients),
        "patients": [
            {
                "patient_id": patient,
                "label": scores.label_names[int(label)],
                "windows": int(windows),
                "scores": {name: _number(value) for name, value in zip(scores.label_names, row, strict=True)},
            }
            for patient, label, windows, row in zip(
                scores.patients.patient_ids,
                scores.patients.labels,
                scores.patients.windows,
                scores.patients.probabilities,
                strict=True,
            )
        ],
        "research_use": RESEARCH_USE,
    }


def single_label_markdown(document: Mapping[str, Any]) -> str:
    """`report.md`: provenance and the interval warning first, then the metrics with their 95 % intervals."""
    split, metrics = document["split"], document["metrics"]
    counts = ", ".join(f"{name} {count}" for name, count in document["patients_per_class"].items())
    bootstrap = document["bootstrap"]
    lines = [f"# Evaluation of `{document['model']}` on `{document['dataset']}` ({split} split)", ""]
    lines += [f"**{RESEARCH_USE}**", "", f"> **{document['interval_note']}**", ""]
    lines += [
        "## Where the numbers come from",
        "",
        f"- Scored split: `{split}`: {document['num_patients']} patients ({counts}), "
        f"{document['num_series']} CT series, {document['num_windows']} windows.",
        f"- Windows: `{document['slice_selection']}` slice selection"
        + (f", stride {document['window_stride']}" if document.get("window_stride") else "")
        + f"; each window scored with a softmax over {len(document['label_names'])} classes.",
        f"- Patient level: the **{document['patient_aggregation']}** over all of a patient's windows and series, per "
        "class (the paper takes the max); every number below counts patients, not windows.",
    ]
    if document.get("dataset_conversion_note"):
        lines.append(f"- Dataset: {document['dataset_conversion_note']}")
    if bootstrap.get("resamples"):
        lines.append(
            f"- 95 % intervals: percentile bootstrap, {bootstrap['resamples']} resamples of patients "
            f"(seed {bootstrap['seed']}), on the `{split}` split."
        )
    else:
        lines.append("- No confidence intervals (bootstrap disabled): the numbers below cannot be judged alone.")
    if document["task"] == "binary":
        lines.append(
            f"- Positive class: `{document['positive_class']}` (sensitivity, PPV and F1 are about it); AUROC uses "
            "its patient-level score."
        )
        chosen = document["threshold_source"] or "no threshold chosen on another split"
        lines.append(
            f"- Operating points: score >= 0.5, and {chosen}. A threshold is never chosen on the scored split."
        )
        if document["patient_aggregation"] == "max":
            lines.append(
                "- With the max over windows a patient's class scores need not sum to 1, so 0.5 on the positive "
                "class is not the same as the argmax."
            )
    else:
        lines.append("- Predictions: the argmax of the patient-level scores; AUROC one class vs the rest.")
    lines += ["", "## Metrics", "", "| metric | value (95 % CI) |", "|---|---|"]
    if document["task"] == "binary":
        lines.append(f"| AUROC | {_format(metrics['auroc'])} |")
        chosen_title = f"at the chosen {document['threshold'] or 0:.3f}"
        if document.get("threshold_method") == FALLBACK:
            chosen_title = "at the 0.5 fallback (none could be chosen)"
        for point, title in ((AT_HALF, "at 0.5"), (AT_CHOSEN, chosen_title)):
            if f"{point}/accuracy" not in metrics:
                continue
            for key in BINARY_METRICS:
                lines.append(f"| {BINARY_METRIC_TITLES[key]} {title} | {_format(metrics[f'{point}/{key}'])} |")
    else:
        lines.append(f"| macro AUROC (one vs rest) | {_format(metrics['auroc_macro'])} |")
        lines.append(f"| accuracy | {_format(metrics['accuracy'])} |")
        lines.append(f"| macro F1 | {_format(metrics['f1_macro'])} |")
        lines += ["", "| class | patients | AUROC one vs rest (95 % CI) | F1 (95 % CI) |", "|---|---|---|---|"]
        for name in document["label_names"]:
            lines.append(
                f"| {name} | {document['patients_per_class'][name]} | {_format(metrics[f'auroc/{name}'])} | "
                f"{_format(metrics[f'f1/{name}'])} |"
            )
    lines.append(
        f"| expected calibration error (10 bins) | {_format({'value': document['expected_calibration_error']})} |"
    )
    few = [name for name, count in document["patients_per_class"].items() if count < FEW_POSITIVES]
    if few:
        lines += ["", f"Fewer than {FEW_POSITIVES} patients (wide intervals, unstable numbers): {', '.join(few)}."]
    lines += [
        "",
        "## Figures",
        "",
        f"![ROC curve{'s one vs rest' if document['task'] != 'binary' else ''}]({ROC_NAME})",
        "",
        f"![Reliability diagram]({RELIABILITY_NAME})",
        "",
        "Patient scores are softmax outputs aggregated over windows; with the max they are not calibrated "
        "probabilities, and the reliability diagram shows how far they are on this split.",
        "",
    ]
    return "\n".join(lines)


def plot_single_label_roc(scores: SingleLabelScores, path: Path) -> None:
    """The positive class's ROC curve (two classes), or one one-vs-rest panel per class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [scores.positive_class] if scores.positive_class is not None else scores.label_names
    figure, axes = plt.subplots(1, len(names), figsize=(max(3.4 * len(names), 4.4), 3.9), squeeze=False)
    for axis, name in zip(axes.flat, names, strict=True):
        index = scores.label_names.index(name)
        truth = (scores.patients.labels == index).astype(np.float64)
        key = "auroc" if scores.positive_class is not None else f"auroc/{name}"
        draw_roc_panel(axis, name, truth, scores.patients.probabilities[:, index], scores.metrics[key])
    title = f"Patient-level ROC, {scores.aggregate} over windows, {scores.num_patients} patients"
    headline = "AUROC" if scores.positive_class is not None else "macro AUROC"
    interval = scores.intervals.get("auroc" if scores.positive_class is not None else "auroc_macro")
    if interval is not None and not math.isnan(interval.low):
        title += f"\n{headline} 95 % CI {interval.low:.2f}-{interval.high:.2f}"
    figure.suptitle(f"{title} (research use only)", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_single_label_report(
    out_dir: str | os.PathLike[str], scores: SingleLabelScores, context: Mapping[str, Any]
) -> dict[str, Any]:
    """Write `metrics.json`, `report.md`, the ROC and the reliability PNGs into `out_dir`; returns the document."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    document = single_label_document(scores, context)
    (out_dir / METRICS_NAME).write_text(strict_json(document), encoding="utf-8")
    (out_dir / REPORT_NAME).write_text(single_label_markdown(document), encoding="utf-8")
    plot_single_label_roc(scores, out_dir / ROC_NAME)
    if scores.positive_class is not None:
        index = scores.label_names.index(scores.positive_class)
        truth = (scores.patients.labels == index).astype(np.float64)
        score, what = scores.patients.probabilities[:, index], f"{scores.positive_class} score"
    else:
        truth = np.eye(len(scores.label_names))[scores.patients.labels].ravel()
        score, what = scores.patients.probabilities.ravel(), "class score (all classes pooled)"
    title = f"Reliability per patient (ECE {scores.calibration_error:.3f})"
    plot_reliability_pairs(truth, score, out_dir / RELIABILITY_NAME, title, f"{what}, {scores.aggregate} of softmax")
    return document


# ------------------------------------------------------------------------------------------------ model + dataset


def dataset_class_indices(dataset: datasets.Dataset, model_labels: Sequence[str]) -> np.ndarray:
    """The `label` column as the model's class indices, matched by class name (the dataset's `ClassLabel` names)."""
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


@dataclass
class SingleLabelEvaluation:
    """What the single-label CT evaluation measured and where it wrote it."""

    out_dir: Path
    document: dict[str, Any]
    scores: SingleLabelScores
    threshold: float | None
    window_probabilities: np.ndarray


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
    window_stride: int | None = None,
    dataset_name: str = "in-memory DatasetDict",
    dataset_conversion: Mapping[str, Any] | None = None,
) -> SingleLabelEvaluation:
    """Score a saved CT model on `splits[split]` per patient and write the report folder (see the module docstring).

    `threshold_split` (two classes only; never the scored split nor `test`) chooses a Youden threshold on that
    split's patient scores; with four classes predictions are the argmax and it is not used.
    """
    from hf_cxr.registry import load_model

    if aggregate not in AGGREGATIONS:
        raise ValueError(f"aggregate must be one of {AGGREGATIONS}, got {aggregate!r}")
    if threshold_split is not None and threshold_split in (split, "test"):
        raise ValueError(f"a threshold may not be chosen on the '{threshold_split}' split (scoring '{split}')")
    for needed in filter(None, (split, threshold_split)):
        if needed not in splits:
            raise ValueError(f"the dataset has no '{needed}' split (it has {sorted(splits)})")
    network, processor = load_model(model, device)
    if network.config.problem_type not in (None, "single_label_classification"):
        raise ValueError(f"expected a single-label model, got problem_type {network.config.problem_type!r}")
    label_names = [network.config.id2label[index] for index in sorted(network.config.id2label)]
    binary = len(label_names) == 2
    if positive_class is not None and not binary:
        raise ValueError(f"--positive-class applies to two classes; this model has {len(label_names)}")

    def patient_windows(name: str) -> tuple[np.ndarray, np.ndarray, list[str], int]:
        part = splits[name]
        labels = dataset_class_indices(part, label_names)
        patients = part.select_columns(["patient_id"])["patient_id"]
        window_scores, rows = predict_ct_windows(
            network, processor, part, batch_size, device, slice_selection, window_stride
        )
        return window_scores, labels[rows], [patients[row] for row in rows], len(part)

    threshold, threshold_source, threshold_method, threshold_note = None, None, None, None
    if threshold_split is not None and binary:
        scores_v, labels_v, ids_v, _ = patient_windows(threshold_split)
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
    window_scores, window_labels, window_patients, num_series = patient_windows(split)
    scores = score_single_label(
        window_scores,
        window_labels,
        window_patients,
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
        "window_stride": (window_stride or processor.window_stride or processor.num_slices)
        if mode == "sliding"
        else None,
    }
    document = write_single_label_report(out_dir, scores, context)
    return SingleLabelEvaluation(Path(out_dir), document, scores, threshold, window_scores)


__all__ = [
    "AGGREGATIONS",
    "PatientScores",
    "SingleLabelEvaluation",
    "SingleLabelScores",
    "aggregate_by_patient",
    "binary_metrics",
    "choose_threshold",
    "choose_threshold_choice",
    "dataset_class_indices",
    "evaluate_ct_model",
    "score_single_label",
    "single_label_point_metrics",
    "write_single_label_report",
]
