"""`hf-cxr demo`: the whole path on the real NIH sample bundled with the package, in minutes on a CPU.

Fine-tunes a tiny model with `transformers.Trainer`, evaluates it on a held-out patient split, saves a
Hub-ready folder (safetensors, config with remote code, processor) and reloads it through
`pipeline("image-classification")`. 400 images measure the pipeline, not the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch
from transformers import Trainer, TrainingArguments, pipeline

from hf_cxr.metrics import make_compute_metrics
from hf_cxr.models import build_image_processor, build_model
from hf_cxr.sample import SAMPLE_DIR, load_labelled_folder

DISCLAIMER = (
    "hf-cxr models are research tools, not medical devices: never use them for diagnosis or patient care.\n"
    "The demo trains on a few hundred images; its AUC checks that the pipeline runs, it is not a result."
)


@dataclass
class DemoResult:
    output_dir: Path
    first_train_loss: float
    last_train_loss: float
    validation_macro_auc: float
    predictions: dict[str, list[dict[str, float]]]


def run_demo(
    output_dir: str | Path = "hf-cxr-demo",
    model_type: str = "cr_msnet",
    max_steps: int = 150,
    batch_size: int = 16,
    learning_rate: float = 1e-3,
    validation_fraction: float = 0.2,
    seed: int = 0,
) -> DemoResult:
    """Train, evaluate, save and reload a tiny model on the bundled sample; returns what it measured."""
    output_dir = Path(output_dir)
    print(DISCLAIMER)
    processor = build_image_processor(model_type, preset="tiny")
    model = build_model(model_type, preset="tiny")
    # One image per patient in the sample, so a seeded split of images is a split by patient.
    splits = load_labelled_folder(SAMPLE_DIR).train_test_split(test_size=validation_fraction, seed=seed)

    def transform(batch: dict) -> dict:
        pixel_values = processor(batch["image"], return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixel_values, "labels": torch.tensor(batch["labels"], dtype=torch.float32)}

    train, validation = splits["train"].with_transform(transform), splits["test"].with_transform(transform)
    print(f"data: {len(train)} training and {len(validation)} validation radiographs (NIH ChestX-ray14 sample)")
    args = TrainingArguments(
        output_dir=str(output_dir / "trainer"),
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        learning_rate=learning_rate,
        warmup_steps=max(max_steps // 10, 1),
        logging_steps=max(max_steps // 10, 1),
        save_strategy="no",
        remove_unused_columns=False,
        report_to=[],
        seed=seed,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=validation,
        compute_metrics=make_compute_metrics(model.config.id2label),
    )
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    metrics = trainer.evaluate()
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)

    classifier = pipeline("image-classification", model=str(output_dir))
    predictions = {}
    for image in splits["test"].cast_column("image", datasets.Image(decode=False))["image"][:2]:
        image_path = Path(image["path"])
        predictions[image_path.name] = classifier(str(image_path), top_k=model.config.num_labels)
    result = DemoResult(output_dir, losses[0], losses[-1], metrics["eval_auc_macro"], predictions)
    _report(result)
    return result


def _report(result: DemoResult) -> None:
    print(f"\ntraining loss: {result.first_train_loss:.4f} (first logged) -> {result.last_train_loss:.4f} (last)")
    auc = "undefined" if math.isnan(result.validation_macro_auc) else f"{result.validation_macro_auc:.3f}"
    print(f"validation macro ROC-AUC (held-out patients of the bundled sample): {auc}")
    print("  (a pipeline check on ~80 images, not a measure of the architecture)")
    print(f"model, processor and remote code saved to {result.output_dir}/ (safetensors)")
    for name, scores in result.predictions.items():
        top = ", ".join(f"{item['label']} {item['score']:.2f}" for item in scores[:4])
        print(f"pipeline('image-classification') on {name}: {top}, ...")
