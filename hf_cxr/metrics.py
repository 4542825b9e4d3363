"""Multi-label ranking metrics on probabilities, and the `compute_metrics` hook for `transformers.Trainer`."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

from hf_cxr.losses import IGNORE_LABEL


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


def has_both_classes(truth: np.ndarray) -> bool:
    """Whether 0/1 `truth` [N] holds at least one negative and one positive (what a ROC curve needs)."""
    return truth.size > 0 and 0.0 < truth.mean() < 1.0


def roc_auc(truth: np.ndarray, score: np.ndarray) -> float:
    """scikit-learn's ROC-AUC of `score` [N] against 0/1 `truth` [N]; NaN unless both classes are present. Every AUC
    hf-cxr reports (per finding, pooled, per CT class) is this one."""
    return float(roc_auc_score(truth, score)) if has_both_classes(truth) else math.nan


def per_class_roc_auc(probabilities: np.ndarray, targets: np.ndarray, label_names: Sequence[str]) -> dict[str, float]:
    """ROC-AUC of each finding; NaN where the finding has only one class among the scored images.

    Entries equal to `IGNORE_LABEL` (e.g. CheXpert's uncertain labels) are left out of that finding's AUC.
    `probabilities` and `targets` are [N, K] arrays, K = len(label_names). Raises `ValueError` when their shapes
    differ or their second axis is not `len(label_names)` (naming the shapes and the number of names).
    """
    if probabilities.shape != targets.shape or probabilities.shape[1] != len(label_names):
        raise ValueError(
            f"probabilities {probabilities.shape}, targets {targets.shape} and {len(label_names)} label names "
            "must agree"
        )
    scores = {}
    for index, name in enumerate(label_names):
        keep = targets[:, index] != IGNORE_LABEL
        scores[name] = roc_auc(targets[keep, index], probabilities[keep, index])
    return scores


def mean_of_defined(values: Iterable[float]) -> float:
    """Mean of the values that are not NaN (NaN when none is): the macro average over findings that have one."""
    defined = [value for value in values if not math.isnan(value)]
    return float(np.mean(defined)) if defined else math.nan


def macro_roc_auc(per_class: Mapping[str, float]) -> float:
    """Mean of the per-class AUCs that are defined (NaN when none is)."""
    return mean_of_defined(per_class.values())


def make_compute_metrics(id2label: Mapping[int, str]) -> Callable:
    """A `Trainer(compute_metrics=...)` function reporting `auc_macro` and `auc_<finding>` from logits."""
    label_names = [id2label[index] for index in sorted(id2label)]

    def compute_metrics(eval_prediction) -> dict[str, float]:
        logits = eval_prediction.predictions
        logits = logits[0] if isinstance(logits, tuple) else logits
        per_class = per_class_roc_auc(sigmoid(np.asarray(logits)), np.asarray(eval_prediction.label_ids), label_names)
        return {"auc_macro": macro_roc_auc(per_class), **{f"auc_{name}": value for name, value in per_class.items()}}

    return compute_metrics
