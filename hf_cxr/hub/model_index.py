"""A card's `model-index` metadata: the evaluation report's numbers as `huggingface_hub.EvalResult` entries
(macro/micro ROC-AUC, macro AP, macro F1 and per-finding ROC-AUC for a multi-label report; the per-patient metrics of
a CT report), each with its bootstrap interval, under the rule of `hf_cxr.evaluation.report.model_index_exclusions`,
and the sentence the card's prose gives that rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from huggingface_hub import EvalResult

from hf_cxr.evaluation.report import (
    MODEL_INDEX_MIN_CASES,
    MODEL_INDEX_MIN_IMAGES,
    describe_bootstrap,
    model_index_exclusions,
)
from hf_cxr.evaluation.scores import FALLBACK
from hf_cxr.hub.metadata import PIPELINE_TAG, TASK_NAME, _finite

# `metrics.json` of a per-patient CT evaluation (`hf_cxr.evaluation.ct_report`) says so in this field.
CT_EVALUATION = "single_label_ct"


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
