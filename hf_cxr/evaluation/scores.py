"""The numbers of an evaluation, computed with scikit-learn on arrays: no model, no files.

Every function takes `probabilities` [N, K] and `targets` [N, K] (1 positive, 0 negative, `IGNORE_LABEL` for a
label that must not be scored, e.g. CheXpert's uncertain labels), and leaves each ignored entry out of its
finding's numbers only. A prediction is positive when `probability >= threshold` (the rule `roc_curve` uses).

Confidence intervals come from a bootstrap that resamples **patients**, not images: a patient's images are
correlated, so resampling images treats them as independent evidence and gives intervals that are too narrow.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_curve

from hf_cxr.labels import CHESTXRAY14_TO_CHEXPERT
from hf_cxr.losses import IGNORE_LABEL
from hf_cxr.metrics import has_both_classes, macro_roc_auc, mean_of_defined, per_class_roc_auc, roc_auc

DEFAULT_THRESHOLD = 0.5
DEFAULT_BOOTSTRAP = 1000
DEFAULT_CONFIDENCE = 0.95
# The operating-point metrics `prediction_metrics` computes; the multi-label report carries `THRESHOLD_METRICS`.
CONFUSION_METRICS = ("accuracy", "sensitivity", "specificity", "precision", "npv", "f1")
THRESHOLD_METRICS = ("sensitivity", "specificity", "precision", "f1")
# Equal-width bins of [0, 1] for the expected calibration error and the reliability diagrams.
CALIBRATION_BINS = 10
# Operating points: the fixed 0.5 and the per-finding thresholds chosen on another split.
AT_HALF, AT_CHOSEN = "at_0.5", "at_threshold"


def check_arrays(probabilities: Any, targets: Any, label_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Float arrays of matching [N, K] shape, K = len(label_names); targets only 0, 1 or IGNORE_LABEL.

    Raises `ValueError` when the arrays are not both [N, K] (naming both shapes), when `probabilities` hold NaN or
    infinity, and when `targets` hold any other value than 0, 1 or `IGNORE_LABEL`.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape != targets.shape or probabilities.shape[1] != len(label_names):
        raise ValueError(
            f"probabilities {probabilities.shape} and targets {targets.shape} must both be [N, {len(label_names)}]"
        )
    if not np.isfinite(probabilities).all():
        raise ValueError("probabilities contain NaN or infinity")
    if not np.isin(targets, (0.0, 1.0, IGNORE_LABEL)).all():
        raise ValueError(f"targets must be 0, 1 or {IGNORE_LABEL} (ignored)")
    return probabilities, targets


def _scored(probabilities: np.ndarray, targets: np.ndarray, column: int) -> tuple[np.ndarray, np.ndarray]:
    keep = targets[:, column] != IGNORE_LABEL
    return targets[keep, column], probabilities[keep, column]


def micro_roc_auc(probabilities: np.ndarray, targets: np.ndarray) -> float:
    """ROC-AUC of all scored (image, finding) pairs pooled: common findings weigh more than in the macro mean."""
    keep = targets != IGNORE_LABEL
    truth = targets[keep]
    return roc_auc(truth, probabilities[keep])


def per_class_average_precision(
    probabilities: np.ndarray, targets: np.ndarray, label_names: Sequence[str]
) -> dict[str, float]:
    """Average precision (area under precision-recall) per finding; NaN where a finding has no positive."""
    scores = {}
    for column, name in enumerate(label_names):
        truth, score = _scored(probabilities, targets, column)
        scores[name] = float(average_precision_score(truth, score)) if truth.sum() > 0 else math.nan
    return scores


# How a finding's threshold was set: chosen by Youden's J on the threshold split, or the 0.5 fallback because none
# could be chosen there (one class only, or no threshold beats chance). Reports say which, per finding.
CHOSEN_BY_YOUDEN, FALLBACK = "youden_j", "fallback_0.5"


@dataclass(frozen=True)
class ThresholdChoice:
    """One finding's threshold and how it was set (`method`: `CHOSEN_BY_YOUDEN` or `FALLBACK`, with `reason`)."""

    value: float
    method: str
    reason: str | None = None

    @property
    def chosen(self) -> bool:
        return self.method == CHOSEN_BY_YOUDEN


def threshold_choices(
    probabilities: np.ndarray, targets: np.ndarray, label_names: Sequence[str]
) -> dict[str, ThresholdChoice]:
    """Per finding, the threshold maximising Youden's J = sensitivity + specificity - 1 (meant for a validation
    split), or the `DEFAULT_THRESHOLD` fallback with the reason none could be chosen.

    On ties the highest threshold wins (fewest positive calls). A finding without positives, without negatives
    (ignored labels do not count), or where no threshold beats chance (J <= 0) falls back to 0.5. Raises
    `ValueError` as `check_arrays` does (shapes other than [N, len(label_names)], NaN or infinite probabilities,
    targets other than 0, 1 or `IGNORE_LABEL`).
    """
    probabilities, targets = check_arrays(probabilities, targets, label_names)
    choices = {}
    for column, name in enumerate(label_names):
        truth, score = _scored(probabilities, targets, column)
        if not has_both_classes(truth):
            missing = "no scored labels" if truth.size == 0 else "no positives" if truth.sum() == 0 else "no negatives"
            choices[name] = ThresholdChoice(DEFAULT_THRESHOLD, FALLBACK, missing)
            continue
        fpr, tpr, candidates = roc_curve(truth, score, drop_intermediate=False)
        youden = tpr - fpr
        best = int(np.argmax(youden))  # first maximum = highest threshold, candidates are decreasing
        if youden[best] > 0 and np.isfinite(candidates[best]):
            choices[name] = ThresholdChoice(float(candidates[best]), CHOSEN_BY_YOUDEN)
        else:
            choices[name] = ThresholdChoice(DEFAULT_THRESHOLD, FALLBACK, "no threshold beats chance (Youden's J <= 0)")
    return choices


def youden_thresholds(probabilities: np.ndarray, targets: np.ndarray, label_names: Sequence[str]) -> dict[str, float]:
    """The values of `threshold_choices`: Youden's J thresholds, 0.5 where none could be chosen. Raises `ValueError`
    as `check_arrays` does."""
    return {name: choice.value for name, choice in threshold_choices(probabilities, targets, label_names).items()}


def confusion_counts(truth: Any, predicted: Any) -> tuple[float, float, float, float]:
    """(TP, FP, FN, TN) of boolean `predicted` [N] against `truth` [N] (1.0 positive, anything else negative); all 0
    when N = 0. Raises `ValueError` when the shapes differ. Four NumPy sums rather than scikit-learn's
    `confusion_matrix` (which the tests check them against): the bootstrap calls this 28,000 times for 14 findings
    at two operating points, and `confusion_matrix` took 50 times as long a call on our 2-core machine."""
    positive = np.asarray(truth) == 1.0
    predicted = np.asarray(predicted, dtype=bool)
    if positive.shape != predicted.shape or positive.ndim != 1:
        raise ValueError(f"truth {positive.shape} and predictions {predicted.shape} must both be [N]")
    if positive.size == 0:
        return 0.0, 0.0, 0.0, 0.0
    return (
        float(np.sum(positive & predicted)),
        float(np.sum(~positive & predicted)),
        float(np.sum(positive & ~predicted)),
        float(np.sum(~positive & ~predicted)),
    )


def ratio(top: float, bottom: float) -> float:
    """`top / bottom`, NaN when the denominator is 0 (a metric without the cases it needs is undefined, not 0)."""
    return top / bottom if bottom > 0 else math.nan


def prediction_metrics(truth: Any, predicted: Any) -> dict[str, float]:
    """`CONFUSION_METRICS` of boolean `predicted` [N] against 0/1 `truth` [N], from `confusion_counts`.

    The one implementation of the operating-point metrics, for the multi-label and the single-label CT evaluation:
    accuracy, sensitivity (recall), specificity, precision (PPV), NPV and F1. A ratio without a denominator is NaN
    (e.g. sensitivity without positives, precision without positive calls), never 0. Raises `ValueError` when
    `truth` and `predicted` are not both [N] (`confusion_counts`).
    """
    tp, fp, fn, tn = confusion_counts(truth, predicted)
    return {
        "accuracy": ratio(tp + tn, tp + fp + fn + tn),
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "precision": ratio(tp, tp + fp),
        "npv": ratio(tn, tn + fn),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
    }


def confusion_metrics(truth: Any, score: Any, threshold: float) -> dict[str, float]:
    """`prediction_metrics` of `score >= threshold` (`score` [N] against 0/1 `truth` [N]); NaN where undefined.
    Raises `ValueError` when `truth` and `score` are not both [N] (`confusion_counts`)."""
    return prediction_metrics(truth, np.asarray(score, dtype=np.float64) >= threshold)


def threshold_metrics(
    probabilities: np.ndarray,
    targets: np.ndarray,
    label_names: Sequence[str],
    thresholds: Mapping[str, float] | float = DEFAULT_THRESHOLD,
) -> dict[str, dict[str, float]]:
    """`confusion_metrics` per finding at one threshold for all (a float) or per finding (absent: 0.5)."""
    results = {}
    for column, name in enumerate(label_names):
        truth, score = _scored(probabilities, targets, column)
        value = thresholds if isinstance(thresholds, (int, float)) else thresholds.get(name, DEFAULT_THRESHOLD)
        results[name] = confusion_metrics(truth, score, float(value))
    return results


def point_metrics(
    probabilities: np.ndarray,
    targets: np.ndarray,
    label_names: Sequence[str],
    thresholds: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Every number of the report as a flat `{key: value}` (the shape the bootstrap resamples).

    Keys: `auc_macro`, `auc_micro`, `ap_macro`, `auc/<finding>`, `ap/<finding>`, and per operating point
    (`at_0.5`, plus `at_threshold` when `thresholds` is given) `<point>/<metric>/<finding>` and
    `<point>/<metric>_macro` for sensitivity, specificity, precision and F1. Raises `ValueError` when
    `probabilities`, `targets` and `label_names` do not agree on the shape [N, K] (`per_class_roc_auc`).
    """
    auc = per_class_roc_auc(probabilities, targets, label_names)
    average_precision = per_class_average_precision(probabilities, targets, label_names)
    flat = {
        "auc_macro": macro_roc_auc(auc),
        "auc_micro": micro_roc_auc(probabilities, targets),
        "ap_macro": mean_of_defined(list(average_precision.values())),
    }
    flat.update({f"auc/{name}": value for name, value in auc.items()})
    flat.update({f"ap/{name}": value for name, value in average_precision.items()})
    points: dict[str, Mapping[str, float] | float] = {AT_HALF: DEFAULT_THRESHOLD}
    if thresholds is not None:
        points[AT_CHOSEN] = thresholds
    for point, chosen in points.items():
        per_finding = threshold_metrics(probabilities, targets, label_names, chosen)
        for metric in THRESHOLD_METRICS:
            values = [per_finding[name][metric] for name in label_names]
            flat.update({f"{point}/{metric}/{name}": value for name, value in zip(label_names, values, strict=True)})
            flat[f"{point}/{metric}_macro"] = mean_of_defined(values)
    return flat


def patient_bootstrap_indices(patient_ids: Sequence[Any], n: int, seed: int) -> Iterator[np.ndarray]:
    """`n` resamples of row indices: patients drawn with replacement, each drawn patient bringing all its rows.

    A patient drawn twice contributes its rows twice; the number of patients (not rows) is kept. Seeded:
    the same ids, `n` and `seed` give the same resamples. Raises `ValueError` when `patient_ids` is empty (on the
    first `next`, as this is a generator).
    """
    ids = np.asarray([str(value) for value in patient_ids])
    if ids.size == 0:
        raise ValueError("no rows to resample")
    _, inverse = np.unique(ids, return_inverse=True)
    rows_by_patient = np.argsort(inverse, kind="stable")
    sizes = np.bincount(inverse)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rng = np.random.default_rng(seed)
    for _ in range(n):
        drawn = rng.integers(0, sizes.size, sizes.size)
        lengths = sizes[drawn]
        # Position j of the draw's output runs over starts[drawn] ... starts[drawn] + lengths - 1.
        offsets = np.repeat(starts[drawn] - (np.cumsum(lengths) - lengths), lengths)
        yield rows_by_patient[offsets + np.arange(int(lengths.sum()))]


@dataclass
class Interval:
    """A bootstrap percentile interval and how many resamples defined the metric (a resample can lack positives)."""

    low: float
    high: float
    defined: int

    def as_list(self) -> list[float]:
        return [self.low, self.high]


def percentile_interval(values: Sequence[float], confidence: float = DEFAULT_CONFIDENCE) -> Interval:
    """Percentile interval of the defined (non-NaN) bootstrap values; NaN bounds when none is defined."""
    defined = np.asarray([value for value in values if not math.isnan(value)])
    if defined.size == 0:
        return Interval(math.nan, math.nan, 0)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(defined, [tail, 100.0 - tail])
    return Interval(float(low), float(high), int(defined.size))


def bootstrap_by_patient(
    compute: Callable[[np.ndarray], Mapping[str, float]],
    patient_ids: Sequence[Any],
    n: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    confidence: float = DEFAULT_CONFIDENCE,
) -> dict[str, Interval]:
    """Percentile intervals of every key `compute(rows)` returns, over `n` patient-level resamples of the rows.

    Shared by the multi-label (one row per image) and the single-label CT evaluation (one row per patient), so
    both resample patients the same way with the same seeded draws. Raises `ValueError` for a `confidence` outside
    (0, 1) and for empty `patient_ids` (`patient_bootstrap_indices`).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    samples: dict[str, list[float]] = {}
    for rows in patient_bootstrap_indices(patient_ids, n, seed):
        for key, value in compute(rows).items():
            samples.setdefault(key, []).append(value)
    return {key: percentile_interval(values, confidence) for key, values in samples.items()}


def bootstrap_intervals(
    probabilities: np.ndarray,
    targets: np.ndarray,
    label_names: Sequence[str],
    patient_ids: Sequence[Any],
    thresholds: Mapping[str, float] | None = None,
    n: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    confidence: float = DEFAULT_CONFIDENCE,
) -> dict[str, Interval]:
    """Percentile intervals of every `point_metrics` key over `n` patient-level resamples.

    Thresholds stay fixed (they were chosen on another split, so they are not re-chosen per resample). Raises
    `ValueError` for a `confidence` outside (0, 1), a `patient_ids` whose length is not the number of rows, and no
    rows (`patient_bootstrap_indices`).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if len(patient_ids) != len(probabilities):
        raise ValueError(f"{len(patient_ids)} patient ids for {len(probabilities)} rows")
    return bootstrap_by_patient(
        lambda rows: point_metrics(probabilities[rows], targets[rows], label_names, thresholds),
        patient_ids,
        n,
        seed,
        confidence,
    )


@dataclass(frozen=True)
class CalibrationBins:
    """Equal-width bins of [0, 1], each [B]: how many (truth, score) pairs fell in it, their mean score and their
    observed positive rate (both NaN for an empty bin)."""

    counts: np.ndarray
    mean_score: np.ndarray
    observed_rate: np.ndarray

    @property
    def filled(self) -> np.ndarray:
        """Boolean [B]: the bins holding at least one pair."""
        return self.counts > 0


def calibration_bins(truth: Any, score: Any, bins: int = CALIBRATION_BINS) -> CalibrationBins:
    """The one binning of the expected calibration error and of every reliability diagram.

    `truth` and `score` have the same shape (flattened; 0/1 truth, scores in [0, 1]). Bin `b` of `bins` holds the
    scores in [b / bins, (b + 1) / bins); the last one also holds 1.0 (a score outside [0, 1] goes to the nearest
    end bin). Raises `ValueError` when the shapes differ or `bins < 1`.
    """
    truth = np.asarray(truth, dtype=np.float64).ravel()
    score = np.asarray(score, dtype=np.float64).ravel()
    if truth.shape != score.shape:
        raise ValueError(f"{truth.size} labels for {score.size} scores")
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    which = np.clip((score * bins).astype(int), 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_score = np.bincount(which, weights=score, minlength=bins) / counts
        observed_rate = np.bincount(which, weights=truth, minlength=bins) / counts
    return CalibrationBins(counts, mean_score, observed_rate)


def expected_calibration_error(probabilities: Any, targets: Any, bins: int = CALIBRATION_BINS) -> float:
    """ECE over all scored pairs of `probabilities` and `targets` (same shape, e.g. [N, K]; `IGNORE_LABEL` entries
    left out): |observed rate - mean probability| per `calibration_bins` bin, weighted by its share of the pairs.
    NaN when no pair is scored."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    keep = targets != IGNORE_LABEL
    if not keep.any():
        return math.nan
    binned = calibration_bins(targets[keep], probabilities[keep], bins)
    filled = binned.filled
    gaps = np.abs(binned.observed_rate[filled] - binned.mean_score[filled])
    return float(np.sum(binned.counts[filled] / keep.sum() * gaps))


def label_counts(targets: np.ndarray, label_names: Sequence[str]) -> dict[str, dict[str, int]]:
    """Positives, negatives and ignored labels per finding (what each finding's numbers rest on)."""
    return {
        name: {
            "positives": int(np.sum(targets[:, column] == 1.0)),
            "negatives": int(np.sum(targets[:, column] == 0.0)),
            "ignored": int(np.sum(targets[:, column] == IGNORE_LABEL)),
        }
        for column, name in enumerate(label_names)
    }


@dataclass
class Scores:
    """Point estimates, intervals and the facts they rest on, for one split."""

    label_names: list[str]
    metrics: dict[str, float]
    intervals: dict[str, Interval]
    thresholds: dict[str, float] | None
    counts: dict[str, dict[str, int]]
    num_images: int
    num_patients: int
    calibration_error: float
    bootstrap: dict[str, Any] = field(default_factory=dict)

    def value(self, key: str) -> float:
        return self.metrics[key]

    def interval(self, key: str) -> Interval | None:
        return self.intervals.get(key)


def score_predictions(
    probabilities: Any,
    targets: Any,
    label_names: Sequence[str],
    patient_ids: Sequence[Any] | None = None,
    thresholds: Mapping[str, float] | None = None,
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    confidence: float = DEFAULT_CONFIDENCE,
) -> Scores:
    """All numbers for one split. Without `patient_ids` every image counts as its own patient (say so).

    Raises `ValueError` as `check_arrays` does (arrays not both [N, len(label_names)], NaN or infinite
    probabilities, targets other than 0, 1 or `IGNORE_LABEL`), for `thresholds` naming findings that are not in
    `label_names` (listing them), and, when `n_bootstrap` > 0, as `bootstrap_intervals` does (a `confidence`
    outside (0, 1), `patient_ids` of another length than the rows, no rows).
    """
    probabilities, targets = check_arrays(probabilities, targets, label_names)
    label_names = list(label_names)
    unit = "patient"
    if patient_ids is None:
        patient_ids, unit = list(range(len(probabilities))), "image (no patient ids)"
    if thresholds is not None:
        unknown = sorted(set(thresholds) - set(label_names))
        if unknown:
            raise ValueError(f"thresholds for findings that are not scored: {unknown}")
        thresholds = {name: float(thresholds.get(name, DEFAULT_THRESHOLD)) for name in label_names}
    intervals = (
        bootstrap_intervals(probabilities, targets, label_names, patient_ids, thresholds, n_bootstrap, seed, confidence)
        if n_bootstrap > 0
        else {}
    )
    num_patients = len({str(value) for value in patient_ids})
    bootstrap: dict[str, Any] = {"resamples": n_bootstrap, "seed": seed, "confidence": confidence, "unit": unit}
    if unit == "patient":
        # Resampling patients then draws exactly what resampling images would: reports must say so.
        bootstrap["one_image_per_patient"] = num_patients == len(probabilities)
    return Scores(
        label_names=label_names,
        metrics=point_metrics(probabilities, targets, label_names, thresholds),
        intervals=intervals,
        thresholds=thresholds,
        counts=label_counts(targets, label_names),
        num_images=len(probabilities),
        num_patients=num_patients,
        calibration_error=expected_calibration_error(probabilities, targets),
        bootstrap=bootstrap,
    )


def shared_findings(model_labels: Sequence[str], dataset_labels: Sequence[str]) -> list[tuple[str, int, int]]:
    """(finding as the model names it, model column, dataset column) of the findings that can be scored.

    The same label set: every finding. Otherwise a finding is scored only when both sets have it under the
    same name or under the names `CHESTXRAY14_TO_CHEXPERT` pairs (in either direction); so a ChestX-ray14
    model on CheXpert is scored on exactly that map's seven findings.
    """
    model_labels, dataset_labels = list(model_labels), list(dataset_labels)
    if model_labels == dataset_labels:
        return [(name, index, index) for index, name in enumerate(model_labels)]
    partner = {**CHESTXRAY14_TO_CHEXPERT, **{value: key for key, value in CHESTXRAY14_TO_CHEXPERT.items()}}
    pairs = []
    for model_index, name in enumerate(model_labels):
        for candidate in (name, partner.get(name)):
            if candidate in dataset_labels:
                pairs.append((name, model_index, dataset_labels.index(candidate)))
                break
    return pairs
