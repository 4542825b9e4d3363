"""`hf-cxr evaluate`: score a saved model on a converted dataset and write the report folder."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from hf_cxr.commands import add_device_argument
from hf_cxr.evaluation.scores import DEFAULT_BOOTSTRAP


def _run(args: argparse.Namespace) -> int:
    from hf_cxr.evaluation.run import evaluate_model

    report = evaluate_model(
        args.model,
        args.dataset,
        split=args.split,
        out_dir=args.out,
        threshold_split=args.threshold_split,
        batch_size=args.batch_size,
        n_bootstrap=args.bootstrap,
        seed=args.seed,
        store_thresholds=args.write_thresholds,
        dataset_labels=args.dataset_labels,
        device=args.device,
        aggregate=args.aggregate,
        positive_class=args.positive_class,
        slice_selection=args.slice_selection,
        slab_stride=args.slab_stride,
    )
    document = report.document
    if document.get("evaluation") == "single_label_ct":
        return _print_single_label(document, report.out_dir, args)
    summary = document["summary"]

    def show(key: str) -> str:
        value = summary[key]["value"]
        return "n/a" if value is None or math.isnan(value) else f"{value:.3f}"

    print(f"{document['split']}: {document['num_images']} images, {document['num_patients']} patients")
    print(f"macro ROC-AUC {show('auc_macro')}, micro ROC-AUC {show('auc_micro')}, macro AP {show('ap_macro')}")
    if document["small_split_note"]:
        print(document["small_split_note"])
    print(f"report written to {report.out_dir}/ (report.md, metrics.json, roc_curves.png, reliability.png)")
    if args.write_thresholds:
        print(f"decision_thresholds chosen on '{args.threshold_split}' written to {Path(args.model) / 'config.json'}")
    return 0


def _print_single_label(document: dict, out_dir: Path, args: argparse.Namespace) -> int:
    """The CT summary: patients, the headline numbers with their intervals, and the interval warning."""
    metrics = document["metrics"]

    def show(key: str) -> str:
        entry = metrics[key]
        if entry["value"] is None:
            return "n/a"
        low, high = entry.get("ci95", [None, None])
        interval = f" (95% CI {low:.3f}-{high:.3f})" if low is not None and high is not None else ""
        return f"{entry['value']:.3f}{interval}"

    counts = ", ".join(f"{name} {count}" for name, count in document["patients_per_class"].items())
    print(f"{document['split']}: {document['num_patients']} patients ({counts}), {document['num_slabs']} slabs")
    if document["task"] == "binary":
        print(f"positive class {document['positive_class']}, {document['patient_aggregation']} over slabs")
        print(f"AUROC {show('auroc')}, accuracy {show('at_0.5/accuracy')}, F1 {show('at_0.5/f1')} at 0.5")
    else:
        print(f"macro AUROC {show('auroc_macro')}, accuracy {show('accuracy')}, macro F1 {show('f1_macro')}")
    print(document["interval_note"])
    print(f"report written to {out_dir}/ (report.md, metrics.json, roc_curves.png, reliability.png)")
    if args.write_thresholds and document.get("threshold") is not None:
        print(f"decision_thresholds chosen on '{args.threshold_split}' written to {Path(args.model) / 'config.json'}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="per-finding AUC/AP/operating points with patient-level bootstrap CIs, plots and report"
    )
    parser.add_argument("--model", required=True, help="saved model folder or Hub id")
    parser.add_argument("--dataset", required=True, type=Path, help="converted dataset folder (hf-cxr convert)")
    parser.add_argument("--split", default="test", help="split to score (default test)")
    parser.add_argument("--out", required=True, type=Path, help="report folder")
    parser.add_argument(
        "--threshold-split",
        default="validation",
        help="split on which per-finding thresholds are chosen (Youden's J); 'none' to skip (default validation)",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=DEFAULT_BOOTSTRAP,
        help=f"patient-level resamples (default {DEFAULT_BOOTSTRAP})",
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument(
        "--write-thresholds",
        action="store_true",
        help="store the thresholds chosen on --threshold-split as decision_thresholds in the model folder's config",
    )
    parser.add_argument(
        "--dataset-labels",
        default=None,
        help="label set of the dataset (chestxray14, chexpert, or comma-separated names); detected for hf-cxr datasets",
    )
    add_device_argument(parser)
    ct = parser.add_argument_group("single-label CT models (MMCAF-Net), scored per patient")
    ct.add_argument(
        "--aggregate",
        choices=("max", "mean"),
        default="max",
        help="patient score per class over its slabs and series (default max, as the paper)",
    )
    ct.add_argument(
        "--positive-class",
        default=None,
        help="two classes: the class sensitivity/PPV are about (default the second: squamous_cell_carcinoma in A vs G)",
    )
    ct.add_argument(
        "--slice-selection",
        choices=("lesion", "center", "sliding"),
        default=None,
        help="CT slabs per series (default: the saved processor's setting)",
    )
    ct.add_argument("--slab-stride", type=int, default=None, help="slices between sliding slabs")
    parser.set_defaults(func=_run)
