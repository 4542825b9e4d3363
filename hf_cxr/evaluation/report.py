"""The report folder of an evaluation: `metrics.json`, `report.md`, `roc_curves.png`, `reliability.png`.

The Markdown states where every number comes from (which split scores, which split chose the thresholds and
which findings fell back to 0.5, what the intervals resample) and says plainly when the split is too small to
measure the model. `metrics.json` is strict JSON: an undefined number is `null`, never `NaN`.

`model_index_exclusions` is the one rule for which numbers a model card's `model-index` (the metadata the Hub and
leaderboards read as results) may carry; see `MODEL_INDEX_MIN_IMAGES` and `MODEL_INDEX_MIN_CASES`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hf_cxr.data._common import read_conversion_report, strict_json
from hf_cxr.evaluation.scores import AT_CHOSEN, AT_HALF, CALIBRATION_BINS, FALLBACK, Scores, _scored, calibration_bins
from hf_cxr.losses import IGNORE_LABEL

METRICS_NAME = "metrics.json"
REPORT_NAME = "report.md"
ROC_NAME = "roc_curves.png"
RELIABILITY_NAME = "reliability.png"
REPORT_FILES = (METRICS_NAME, REPORT_NAME, ROC_NAME, RELIABILITY_NAME)
# Below this many scored images a split checks that the code runs; its numbers say little about the model.
SMALL_SPLIT_IMAGES = 1000
# A finding with fewer positives than this gets a wide interval whatever the split's size.
FEW_POSITIVES = 30
# The row title of the expected calibration error in every report (the bins of `scores.calibration_bins`).
ECE_TITLE = f"expected calibration error ({CALIBRATION_BINS} bins)"
RESEARCH_USE = "Research use only: not a medical device, not for diagnosis or clinical decisions."
# The model-index rule. A card's `model-index` is read by machines as the model's results, with no prose around
# it, so it carries only numbers that could mean something:
# - a scored split under MODEL_INDEX_MIN_IMAGES images is a pipeline check (the report says so, by the same
#   threshold as `small_split_note`): none of its numbers go into `model-index`;
# - in a larger split, a finding with fewer than MODEL_INDEX_MIN_CASES positives (or negatives) has an AUC whose
#   95 % interval is tens of points wide: its per-finding entry is left out (the macro numbers stay);
# - a per-patient CT evaluation goes in only when every class has at least MODEL_INDEX_MIN_CASES patients.
# Numbers left out stay in the card's prose and in `evaluation/report.md`, which say why.
MODEL_INDEX_MIN_IMAGES = SMALL_SPLIT_IMAGES
MODEL_INDEX_MIN_CASES = FEW_POSITIVES
# `metrics.json` of a per-patient CT evaluation (`hf_cxr.evaluation.ct_report`) says so in its `evaluation`.
SINGLE_LABEL_CT = "single_label_ct"


def small_split_note(num_images: int) -> str | None:
    """The plain statement a small split's report carries (None when the split is large enough)."""
    if num_images >= SMALL_SPLIT_IMAGES:
        return None
    return (
        f"This split has only {num_images} images (under {SMALL_SPLIT_IMAGES}): these numbers measure the "
        "pipeline, not the model. Do not quote them as the model's performance."
    )


def model_index_exclusions(document: Mapping[str, Any]) -> tuple[str | None, dict[str, str]]:
    """What of an evaluation's `metrics.json` stays out of `model-index` (the rule above).

    Returns (why the whole split is left out, or None; {finding: why} for per-finding entries left out).
    """
    split = document.get("split")
    if document.get("evaluation") == SINGLE_LABEL_CT:
        few = {name: count for name, count in (document.get("patients_per_class") or {}).items()
               if count < MODEL_INDEX_MIN_CASES}  # fmt: skip
        if few:
            counts = ", ".join(f"{name} {count}" for name, count in few.items())
            return (
                f"the `{split}` split has fewer than {MODEL_INDEX_MIN_CASES} patients in a class ({counts}), too few "
                "for a number to stand alone as a result",
                {},
            )
        return None, {}
    images = int(document.get("num_images") or 0)
    if images < MODEL_INDEX_MIN_IMAGES:
        return (
            f"the `{split}` split has {images} images (under {MODEL_INDEX_MIN_IMAGES}): a pipeline check, not a "
            "measure of the model",
            {},
        )
    excluded = {}
    for name, entry in (document.get("per_class") or {}).items():
        if min(entry["positives"], entry["negatives"]) < MODEL_INDEX_MIN_CASES:
            excluded[name] = f"{entry['positives']} positives, {entry['negatives']} negatives"
    return None, excluded


def dataset_and_interval_lines(document: dict[str, Any], split: str, resampled: str, without: str) -> list[str]:
    """The report's lines on how the dataset was converted and on the 95 % intervals (`resampled`: what the
    bootstrap resampled; `without`: the line when it did not run), for the multi-label and the CT reports."""
    lines = [f"- Dataset: {document['dataset_conversion_note']}"] if document.get("dataset_conversion_note") else []
    bootstrap = document.get("bootstrap") or {}
    if bootstrap.get("resamples"):
        lines.append(f"- 95 % intervals: percentile bootstrap, {resampled} (seed {bootstrap['seed']}), on the "
                     f"`{split}` split.")  # fmt: skip
    else:
        lines.append(without)
    return lines


def describe_bootstrap(bootstrap: Mapping[str, Any]) -> str:
    """'N resamples by patient', saying so when resampling patients is the same as resampling images."""
    text = f"{bootstrap.get('resamples')} resamples by {bootstrap.get('unit')}"
    if bootstrap.get("one_image_per_patient"):
        text += " (every patient in this split has exactly one image, so this is the same as resampling images)"
    return text


def describe_thresholds(document: Mapping[str, Any]) -> str:
    """Where the `at_threshold` operating points come from, naming the findings that fell back to 0.5."""
    source = document.get("threshold_source")
    if not source:
        return "none chosen; only the fixed 0.5 is reported"
    fallbacks = {name: entry.get("threshold_note") for name, entry in document["per_class"].items()
                 if entry.get("threshold_method") == FALLBACK}  # fmt: skip
    if fallbacks:
        where = document.get("threshold_split")
        listed = ", ".join(f"{name} ({note})" if note else name for name, note in fallbacks.items())
        source += (
            f"; no threshold could be chosen{f' on `{where}`' if where else ''} for {len(fallbacks)} of "
            f"{len(document['per_class'])} findings, which use the 0.5 fallback: {listed}"
        )
    return source


def threshold_cell(entry: Mapping[str, Any]) -> str:
    """A table cell for a finding's threshold: its value, marked when it is the 0.5 fallback."""
    if "threshold" not in entry:
        return "0.5"
    text = f"{entry['threshold']:.3f}"
    if entry.get("threshold_method") == FALLBACK:
        text += f" (fallback{': ' + entry['threshold_note'] if entry.get('threshold_note') else ''})"
    return text


def dataset_conversion(dataset: Any) -> dict[str, Any] | None:
    """`{"name", "settings"}` of a local dataset folder's conversion report (how its splits were made), or None for a
    Hub id, an in-memory dataset or a folder without one."""
    report = read_conversion_report(dataset)
    return None if report is None else {"name": report.get("dataset"), "settings": report.get("settings")}


def describe_splits(name: str | None, settings: Mapping[str, Any]) -> str | None:
    """How a converted dataset's splits were made, in words, from its conversion `settings` (None if unknown)."""
    protocol = settings.get("split_protocol")
    if protocol == "official":
        return (
            "NIH's official lists: `test` is NIH's test list; `train` and `validation` divide NIH's train_val list by "
            f"patient (validation fraction {settings.get('validation_fraction')}, seed {settings.get('seed')})"
        )
    if protocol == "random_patient":
        validation, test = settings.get("validation_fraction"), settings.get("test_fraction")
        train = f"{1 - validation - test:.2f}" if validation is not None and test is not None else "the rest"
        return (
            f"a seeded random split by patient (seed {settings.get('seed')}: train {train}, validation {validation}, "
            f"test {test}; no patient in two splits), not NIH's official train_val/test lists, so results on its "
            "test split are not comparable with results on NIH's test list"
        )
    if name == "chexpert":
        return (
            f"Stanford's own splits (train.csv, valid.csv as validation, test labels as test); uncertain labels "
            f"`{settings.get('uncertain')}`, frontal views only: {'yes' if settings.get('frontal_only') else 'no'}"
        )
    if "fractions" in settings:
        fractions = ", ".join(f"{split} {share}" for split, share in settings["fractions"].items())
        return f"a seeded split by patient, stratified by class ({fractions}; seed {settings.get('seed')})"
    return None


def describe_conversion(conversion: Mapping[str, Any] | None) -> str | None:
    """One sentence on how an evaluated dataset's splits were made (for reports and cards), or None if unknown."""
    if not conversion or not conversion.get("settings"):
        return None
    splits = describe_splits(conversion.get("name"), conversion["settings"])
    return f"`{conversion.get('name')}` converted by hf-cxr; splits: {splits}." if splits else None


def _number(value: float) -> float | None:
    """JSON has no NaN: undefined numbers are written as null."""
    return None if value is None or math.isnan(value) else round(float(value), 6)


def metrics_document(scores: Scores, context: dict[str, Any]) -> dict[str, Any]:
    """The JSON written to `metrics.json` (and read by `hf-cxr push` for the model card)."""

    def with_interval(key: str) -> dict[str, Any]:
        interval = scores.interval(key)
        entry: dict[str, Any] = {"value": _number(scores.value(key))}
        if interval is not None:
            entry["ci95"] = [_number(interval.low), _number(interval.high)]
            entry["bootstrap_defined"] = interval.defined
        return entry

    context = dict(context)
    methods = context.pop("threshold_methods", None) or {}
    per_class = {}
    for name in scores.label_names:
        entry: dict[str, Any] = {
            "auc": with_interval(f"auc/{name}"),
            "average_precision": with_interval(f"ap/{name}"),
            **scores.counts[name],
        }
        points = [AT_HALF] + ([AT_CHOSEN] if scores.thresholds is not None else [])
        for point in points:
            entry[point] = {
                metric: with_interval(f"{point}/{metric}/{name}")
                for metric in ("sensitivity", "specificity", "precision", "f1")
            }
        if scores.thresholds is not None:
            entry["threshold"] = scores.thresholds[name]
            method = methods.get(name) or {}
            entry["threshold_method"] = method.get("method")
            entry["threshold_note"] = method.get("reason")
        per_class[name] = entry
    summary = {key: with_interval(key) for key in ("auc_macro", "auc_micro", "ap_macro")}
    for point in [AT_HALF] + ([AT_CHOSEN] if scores.thresholds is not None else []):
        for metric in ("sensitivity", "specificity", "precision", "f1"):
            summary[f"{point}/{metric}_macro"] = with_interval(f"{point}/{metric}_macro")
    return {
        **context,
        "num_images": scores.num_images,
        "num_patients": scores.num_patients,
        "scored_findings": scores.label_names,
        "summary": summary,
        "per_class": per_class,
        "thresholds": scores.thresholds,
        "expected_calibration_error": _number(scores.calibration_error),
        "bootstrap": scores.bootstrap,
        "small_split_note": small_split_note(scores.num_images),
        "research_use": RESEARCH_USE,
    }


def _format(entry: dict[str, Any], digits: int = 3) -> str:
    value = entry.get("value")
    if value is None:
        return "n/a"
    text = f"{value:.{digits}f}"
    low, high = entry.get("ci95", [None, None])
    if low is not None and high is not None:
        text += f" ({low:.{digits}f}-{high:.{digits}f})"
    return text


def markdown_report(document: dict[str, Any]) -> str:
    """`report.md`: provenance first, then the summary, the per-finding table and the operating points."""
    split, threshold_split = document["split"], document.get("threshold_split")
    bootstrap = document["bootstrap"]
    lines = [f"# Evaluation of `{document['model']}` on `{document['dataset']}` ({split} split)", ""]
    lines += [f"**{RESEARCH_USE}**", ""]
    if document.get("small_split_note"):
        lines += [f"> **{document['small_split_note']}**", ""]
    lines += [
        "## Where the numbers come from",
        "",
        f"- Scored split: `{split}`: {document['num_images']} images of {document['num_patients']} patients.",
        f"- Thresholds (`at_threshold` columns): {describe_thresholds(document)}."
        " Thresholds are never chosen on the scored split.",
    ]
    resampled = describe_bootstrap(bootstrap) if bootstrap.get("resamples") else ""
    lines += dataset_and_interval_lines(document, split, resampled, "- No confidence intervals (bootstrap disabled).")
    if document.get("cross_dataset"):
        pairs = ", ".join(f"{model} -> {data}" for model, data in document["finding_map"].items())
        lines.append(
            f"- Cross-dataset: the model's label set differs from the dataset's; only the shared findings are "
            f"scored ({pairs})."
        )
    if document.get("label_set_note"):
        lines.append(f"- {document['label_set_note']}")
    lines.append("- Labels marked ignored (-100, e.g. uncertain CheXpert labels) are left out of their finding only.")
    summary = document["summary"]
    lines += [
        "",
        "## Summary",
        "",
        "| metric | value (95 % CI) |",
        "|---|---|",
        f"| macro ROC-AUC | {_format(summary['auc_macro'])} |",
        f"| micro ROC-AUC | {_format(summary['auc_micro'])} |",
        f"| macro average precision | {_format(summary['ap_macro'])} |",
        f"| {ECE_TITLE} | {_format({'value': document['expected_calibration_error']})} |",
        "",
        "## Per finding",
        "",
        "| finding | positives | negatives | ignored | ROC-AUC (95 % CI) | average precision (95 % CI) |",
        "|---|---|---|---|---|---|",
    ]
    few = []
    for name, entry in document["per_class"].items():
        lines.append(
            f"| {name} | {entry['positives']} | {entry['negatives']} | {entry['ignored']} | "
            f"{_format(entry['auc'])} | {_format(entry['average_precision'])} |"
        )
        if entry["positives"] < FEW_POSITIVES:
            few.append(name)
    if few:
        lines += ["", f"Fewer than {FEW_POSITIVES} positives (wide intervals, unstable numbers): {', '.join(few)}."]
    chosen_title = f"thresholds chosen on `{threshold_split}`" if threshold_split else "the model config's thresholds"
    for point, title in ((AT_HALF, "threshold 0.5"), (AT_CHOSEN, f"{chosen_title} (0.5 where marked fallback)")):
        if not all(point in entry for entry in document["per_class"].values()):
            continue
        lines += [
            "",
            f"## Operating point: {title}",
            "",
            "| finding | threshold | sensitivity | specificity | precision | F1 |",
            "|---|---|---|---|---|---|",
        ]
        for name, entry in document["per_class"].items():
            threshold = "0.500" if point == AT_HALF else threshold_cell(entry)
            cells = " | ".join(
                _format(entry[point][metric]) for metric in ("sensitivity", "specificity", "precision", "f1")
            )
            lines.append(f"| {name} | {threshold} | {cells} |")
        macro = " | ".join(
            _format(summary[f"{point}/{metric}_macro"]) for metric in ("sensitivity", "specificity", "precision", "f1")
        )
        lines.append(f"| **macro** | | {macro} |")
    lines += [
        "",
        "## Figures",
        "",
        f"![ROC curves per finding]({ROC_NAME})",
        "",
        f"![Reliability diagram]({RELIABILITY_NAME})",
        "",
        "Scores are sigmoid outputs of the model's logits; the reliability diagram shows how far they are from "
        "calibrated probabilities on this split.",
        "",
    ]
    return "\n".join(lines)


def draw_roc_panel(axis: Any, name: str, truth: np.ndarray, score: np.ndarray, auc: float) -> None:
    """One ROC curve (0/1 `truth`, `score`) on a matplotlib axis, AUC and positives in the title; shared by the
    multi-label and the single-label CT reports. An undefined AUC (one class) leaves a labelled, empty panel."""
    from sklearn.metrics import roc_curve

    axis.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
    if math.isnan(auc):
        axis.set_title(f"{name}\nAUC undefined (one class)", fontsize=9)
    else:
        fpr, tpr, _ = roc_curve(truth, score)
        axis.plot(fpr, tpr, linewidth=1.5)
        axis.set_title(f"{name}\nAUC {auc:.3f} (n+={int(truth.sum())})", fontsize=9)
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_xlabel("1 - specificity", fontsize=8)
    axis.set_ylabel("sensitivity", fontsize=8)
    axis.tick_params(labelsize=7)


def plot_roc_curves(probabilities: np.ndarray, targets: np.ndarray, scores: Scores, path: Path) -> None:
    """One ROC panel per finding, AUC in the title; a finding with one class gets an empty, labelled panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = scores.label_names
    columns = min(4, len(names))
    rows = math.ceil(len(names) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.2 * rows), squeeze=False)
    for index, axis in enumerate(axes.flat):
        if index >= len(names):
            axis.axis("off")
            continue
        name = names[index]
        truth, score = _scored(probabilities, targets, index)
        draw_roc_panel(axis, name, truth, score, scores.value(f"auc/{name}"))
    figure.suptitle("ROC curves per finding (research use only)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_reliability(
    probabilities: np.ndarray, targets: np.ndarray, scores: Scores, path: Path, bins: int = CALIBRATION_BINS
) -> None:
    """Observed positive rate against mean score per bin, all scored pairs pooled, with the bins' counts below."""
    keep = targets != IGNORE_LABEL
    plot_reliability_pairs(
        targets[keep],
        probabilities[keep],
        path,
        f"Reliability, all findings pooled (ECE {scores.calibration_error:.3f})",
        "predicted probability (sigmoid of logit)",
        bins,
    )


def plot_reliability_pairs(
    truth: np.ndarray, score: np.ndarray, path: Path, title: str, xlabel: str, bins: int = CALIBRATION_BINS
) -> None:
    """Reliability diagram of 0/1 `truth` against `score` in [0, 1] (same shape), shared by the multi-label and CT
    reports: observed rate against mean score per `calibration_bins` bin (the bins of the ECE), counts below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    binned = calibration_bins(truth, score, bins)
    centres, rates, counts = binned.mean_score[binned.filled], binned.observed_rate[binned.filled], binned.counts
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(5, 6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8, label="calibrated")
    top.plot(centres, rates, marker="o", label="model")
    top.set_ylabel("observed positive rate")
    top.set_ylim(0, 1)
    top.legend(loc="upper left", fontsize=8)
    top.set_title(title, fontsize=10)
    bottom.bar((np.arange(bins) + 0.5) / bins, counts, width=1.0 / bins, edgecolor="black", linewidth=0.5)
    bottom.set_xlabel(xlabel)
    bottom.set_ylabel("pairs")
    bottom.set_xlim(0, 1)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_documents(out_dir: str | os.PathLike[str], document: dict[str, Any], markdown: str) -> Path:
    """Create `out_dir` and write the metrics document (`metrics.json`, strict JSON) and the Markdown report
    (`report.md`) into it; returns the folder."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / METRICS_NAME).write_text(strict_json(document), encoding="utf-8")
    (out_dir / REPORT_NAME).write_text(markdown, encoding="utf-8")
    return out_dir


def write_report(
    out_dir: str | os.PathLike[str],
    scores: Scores,
    probabilities: np.ndarray,
    targets: np.ndarray,
    context: dict[str, Any],
) -> dict[str, Any]:
    """Write the four report files into `out_dir` (created); returns the metrics document."""
    document = metrics_document(scores, context)
    out_dir = write_documents(out_dir, document, markdown_report(document))
    plot_roc_curves(probabilities, targets, scores, out_dir / ROC_NAME)
    plot_reliability(probabilities, targets, scores, out_dir / RELIABILITY_NAME)
    return document


def read_metrics(report_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The `metrics.json` of a report folder, parsed. Raises `FileNotFoundError` when `report_dir` has no
    `metrics.json` (naming the path looked for)."""
    path = Path(report_dir) / METRICS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"'{path}' not found: pass the --out folder of `hf-cxr evaluate`")
    return json.loads(path.read_text(encoding="utf-8"))


def finding_rows(document: dict[str, Any]) -> Sequence[tuple[str, str, str, int]]:
    """(finding, AUC with CI, AP with CI, positives) per finding, for tables in cards."""
    return [
        (name, _format(entry["auc"]), _format(entry["average_precision"]), entry["positives"])
        for name, entry in document["per_class"].items()
    ]
