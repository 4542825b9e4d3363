"""Validation during training: the 2D classifiers' AUCs over findings, MMCAF-Net's patient-level numbers, and keeping
the best model on the validation split (never the test split) in the output folder."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from hf_cxr.evaluation.ct_scores import dataset_class_indices, score_single_label
from hf_cxr.evaluation.scores import micro_roc_auc
from hf_cxr.inference.ct import predict_ct_slabs
from hf_cxr.metrics import macro_roc_auc, per_class_roc_auc
from hf_cxr.training.checkpoint import TrainingProgress, save_model
from hf_cxr.training.config import EvaluationSection, Recipe


def evaluate_images(accelerator: Accelerator, model: torch.nn.Module, loader: DataLoader, id2label: dict) -> dict:
    """2D validation: the loss and the macro, micro and per-finding ROC-AUCs of every process's predictions
    (`gather_for_metrics` drops the padding); an AUC is NaN where the split has one class. The model is put back
    in training mode."""
    model.eval()
    all_logits, all_labels, losses = [], [], []
    with torch.no_grad():
        for batch in loader:
            output = model(pixel_values=batch["pixel_values"], labels=batch["labels"])
            logits, labels = accelerator.gather_for_metrics((output.logits.float(), batch["labels"]))
            all_logits.append(logits.cpu())
            all_labels.append(labels.cpu())
            losses.append(accelerator.gather_for_metrics(output.loss.detach().float().reshape(1)).mean().cpu())
    model.train()
    probabilities = torch.sigmoid(torch.cat(all_logits)).numpy()
    labels = torch.cat(all_labels).numpy()
    names = [id2label[i] for i in sorted(id2label)]
    per_class = per_class_roc_auc(probabilities, labels, names)
    return {"loss": float(torch.stack(losses).mean()), "auc_macro": macro_roc_auc(per_class),
            "auc_micro": micro_roc_auc(probabilities, labels),
            **{f"auc_{name}": value for name, value in per_class.items()}}  # fmt: skip


def evaluate_ct(
    model: Any, processor: Any, split: datasets.Dataset, section: EvaluationSection, device: torch.device | str
) -> dict[str, float]:
    """CT validation: patient-level numbers (`evaluation.patient_level`: slabs cut as it says, their scores
    combined per patient) and the slab-level cross-entropy as `loss`; the model is put back in training mode.
    Raises `ValueError` when the split holds classes the model does not predict."""
    level = section.patient_level
    names = [model.config.id2label[i] for i in sorted(model.config.id2label)]
    try:
        probabilities, rows = predict_ct_slabs(
            model, processor, split, device=device, slice_selection=level.slabs, slab_stride=level.slab_stride
        )
    finally:
        model.train()
    classes = dataset_class_indices(split, names)[rows]
    patients = np.asarray(split.select_columns(["patient_id"])["patient_id"])[rows]
    scores = score_single_label(
        probabilities, classes, patients.tolist(), names, aggregate=level.aggregate, n_bootstrap=0,
        positive_class=section.positive_class if len(names) == 2 else None,
    )  # fmt: skip
    picked = np.clip(probabilities[np.arange(len(rows)), classes], 1e-12, None)
    return {"loss": float(-np.log(picked).mean()), **scores.metrics}


def selection_metric(metrics: dict[str, float], name: str | None, ct: bool) -> str:
    """The validation number that picks the best model: `evaluation.select_best_by`, or per architecture the macro
    AUC (2D), the patient AUROC (two CT classes) or accuracy (more CT classes). Raises `ValueError` for a name that
    is not one of the validation numbers."""
    if name is None:
        name = "auc_macro" if not ct else ("auroc" if "auroc" in metrics else "accuracy")
    if ct and name == "auroc" and "auroc" not in metrics:
        name = "auroc_macro"  # four classes: the macro mean of one-vs-rest AUROCs
    if name not in metrics:
        raise ValueError(f"evaluation.select_best_by {name!r} is not a validation number ({sorted(metrics)})")
    return name


def validate_and_keep_best(
    accelerator: Accelerator, model: Any, ema: Any, score: Callable[[Accelerator, Any], dict[str, float]],
    processor: Any, progress: TrainingProgress, recipe: Recipe, output_dir: Path, ct: bool,
    run_record: dict[str, Any], say: Callable[[str], None],
) -> None:  # fmt: skip
    """Score the validation split (`score(accelerator, model)`, the EMA's weights when there is one) and print the
    numbers; when the selection metric improves, the model folder is rewritten with this model and `metrics.json`
    with its numbers and the run record. Raises `ValueError` for an unknown `evaluation.select_best_by`."""
    scored = ema.module if ema is not None else model
    metrics = score(accelerator, scored)
    metric_name = selection_metric(metrics, recipe.evaluation.select_best_by, ct)
    value = metrics[metric_name]
    value = -metrics["loss"] if math.isnan(value) else value  # a tiny split may leave every AUC undefined
    progress.history.append({"step": progress.step, **{f"validation/{k}": v for k, v in metrics.items()}})
    accelerator.log({f"validation/{k}": v for k, v in metrics.items() if not math.isnan(v)}, step=progress.step)
    improved = value > progress.best_metric
    shown = "undefined" if math.isnan(metrics[metric_name]) else f"{metrics[metric_name]:.4f}"
    say(f"  validation: {metric_name} {shown}, loss {metrics['loss']:.4f}" + (" (best so far: model saved)" if improved
        else f" (best: step {progress.best_step})"))  # fmt: skip
    if improved:
        progress.best_metric, progress.best_step = value, progress.step
        if accelerator.is_main_process:
            best = {"selected_on": "validation", "select_best_by": metric_name, "step": progress.step,
                    "validation": metrics, "run": run_record}  # fmt: skip
            save_model(accelerator.unwrap_model(scored), processor, output_dir, best, recipe)
    accelerator.wait_for_everyone()
