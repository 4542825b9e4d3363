"""The report folder of a single-label CT evaluation (`ct_scores`): `metrics.json`, `report.md`, `roc_curves.png`,
`reliability.png`, the same four files as the multi-label `report` and with its conventions (strict JSON, an
undefined number is `null`; provenance and the interval warning before the numbers).

The Markdown always says that a test split of a few dozen patients gives wide intervals (`interval_note`), and calls
a handful of patients a pipeline check.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hf_cxr.evaluation.ct_scores import BINARY_METRICS, SingleLabelScores
from hf_cxr.evaluation.report import (
    ECE_TITLE,
    FEW_POSITIVES,
    RELIABILITY_NAME,
    RESEARCH_USE,
    ROC_NAME,
    SINGLE_LABEL_CT,
    _format,
    _number,
    dataset_and_interval_lines,
    draw_roc_panel,
    plot_reliability_pairs,
    write_documents,
)
from hf_cxr.evaluation.scores import AT_CHOSEN, AT_HALF, FALLBACK

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
        "evaluation": SINGLE_LABEL_CT,
        "task": "binary" if binary else "multiclass",
        "label_names": scores.label_names,
        "positive_class": scores.positive_class,
        "patient_aggregation": scores.aggregate,
        "num_patients": scores.num_patients,
        "num_slabs": scores.num_slabs,
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
                "slabs": int(slabs),
                "scores": {name: _number(value) for name, value in zip(scores.label_names, row, strict=True)},
            }
            for patient, label, slabs, row in zip(
                scores.patients.patient_ids,
                scores.patients.labels,
                scores.patients.slabs,
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
        f"{document['num_series']} CT series, {document['num_slabs']} slabs.",
        f"- Slabs: `{document['slice_selection']}` slice selection"
        + (f", stride {document['slab_stride']}" if document.get("slab_stride") else "")
        + f"; each slab scored with a softmax over {len(document['label_names'])} classes.",
        f"- Patient level: the **{document['patient_aggregation']}** over all of a patient's slabs and series, per "
        "class (the paper takes the max); every number below counts patients, not slabs.",
    ]
    lines += dataset_and_interval_lines(
        document, split, f"{bootstrap.get('resamples')} resamples of patients",
        "- No confidence intervals (bootstrap disabled): the numbers below cannot be judged alone.",
    )  # fmt: skip
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
                "- With the max over slabs a patient's class scores need not sum to 1, so 0.5 on the positive "
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
    lines.append(f"| {ECE_TITLE} | {_format({'value': document['expected_calibration_error']})} |")
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
        "Patient scores are softmax outputs aggregated over slabs; with the max they are not calibrated "
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
    title = f"Patient-level ROC, {scores.aggregate} over slabs, {scores.num_patients} patients"
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
    document = single_label_document(scores, context)
    out_dir = write_documents(out_dir, document, single_label_markdown(document))
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


__all__ = [
    "BINARY_METRIC_TITLES",
    "PIPELINE_CHECK_PATIENTS",
    "interval_note",
    "plot_single_label_roc",
    "single_label_document",
    "single_label_markdown",
    "write_single_label_report",
]
