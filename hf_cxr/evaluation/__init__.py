"""Evaluation the way papers report it, with the provenance of every number.

- `hf_cxr.evaluation.scores`: the numbers on arrays (scikit-learn), patient-level bootstrap, Youden thresholds,
  the operating-point metrics and the calibration bins both paths share, cross-dataset finding pairs.
- `hf_cxr.evaluation.report`: `metrics.json`, `report.md`, ROC and reliability PNGs.
- `hf_cxr.evaluation.ct_scores`: the numbers of single-label CT models (MMCAF-Net) scored per patient (max over
  slabs), binary or one-vs-rest, with patient-bootstrap intervals.
- `hf_cxr.evaluation.ct_report`: their report folder (the same four files).
- `hf_cxr.evaluation.run`: `evaluate_model`, what `hf-cxr evaluate` runs; it hands a CT model to
  `evaluate_ct_model` (by model type).
- `cxr_multilabel/`: the same numbers as an `evaluate` metric, loaded offline by `evaluate_module_path()`.
"""

from __future__ import annotations

from importlib import resources

from hf_cxr.evaluation.ct_scores import (
    SingleLabelScores,
    aggregate_by_patient,
    binary_metrics,
    score_single_label,
    single_label_point_metrics,
)
from hf_cxr.evaluation.report import REPORT_FILES, SMALL_SPLIT_IMAGES, read_metrics, small_split_note, write_report
from hf_cxr.evaluation.run import (
    EvaluationReport,
    SingleLabelEvaluation,
    dataset_label_names,
    dataset_targets,
    evaluate_ct_model,
    evaluate_model,
    predict_probabilities,
    write_thresholds,
)
from hf_cxr.evaluation.scores import (
    Interval,
    Scores,
    bootstrap_intervals,
    micro_roc_auc,
    patient_bootstrap_indices,
    per_class_average_precision,
    point_metrics,
    score_predictions,
    shared_findings,
    threshold_metrics,
    youden_thresholds,
)

EVALUATE_MODULE_NAME = "cxr_multilabel"


def evaluate_module_path() -> str:
    """The folder of the shipped `evaluate` metric, for `evaluate.load(evaluate_module_path())` (works offline)."""
    return str(resources.files("hf_cxr.evaluation") / EVALUATE_MODULE_NAME)


def load_evaluate_metric(**kwargs):
    """`evaluate.load` of the shipped metric (no download)."""
    import evaluate

    return evaluate.load(evaluate_module_path(), **kwargs)


__all__ = [
    "EVALUATE_MODULE_NAME",
    "REPORT_FILES",
    "SMALL_SPLIT_IMAGES",
    "EvaluationReport",
    "Interval",
    "Scores",
    "SingleLabelEvaluation",
    "SingleLabelScores",
    "aggregate_by_patient",
    "binary_metrics",
    "bootstrap_intervals",
    "dataset_label_names",
    "dataset_targets",
    "evaluate_ct_model",
    "evaluate_model",
    "evaluate_module_path",
    "load_evaluate_metric",
    "micro_roc_auc",
    "patient_bootstrap_indices",
    "per_class_average_precision",
    "point_metrics",
    "predict_probabilities",
    "read_metrics",
    "score_predictions",
    "score_single_label",
    "shared_findings",
    "single_label_point_metrics",
    "small_split_note",
    "threshold_metrics",
    "write_report",
    "write_thresholds",
    "youden_thresholds",
]
