"""`hf-cxr demo`: the package's main job, end to end, on the real NIH sample bundled with it (CPU minutes).

raw NIH layout -> `hf-cxr convert chestxray14` -> Accelerate training with the CR-MSNet recipe (tiny preset,
two-stage curriculum) -> best model on validation -> evaluation on the test split (thresholds chosen on
validation, patient bootstrap CIs, plots) -> the Hub-ready folder with its model card (`hf-cxr push --dry-run`)
-> reload through `pipeline("image-classification")`.
400 images measure the pipeline, not the model: every number printed says so.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from transformers import pipeline

from hf_cxr.data import convert_chestxray14
from hf_cxr.evaluation import evaluate_model
from hf_cxr.hub import push_model
from hf_cxr.inference.predict import predict
from hf_cxr.registry import load_model
from hf_cxr.sample import write_sample_raw_tree
from hf_cxr.training import train
from hf_cxr.training.config import Recipe, TrainingConfig, available_recipes, load_recipe

DISCLAIMER = (
    "hf-cxr models are research tools, not medical devices: never use them for diagnosis or patient care.\n"
    "The demo trains on a few hundred images; its AUC checks that the pipeline runs, it is not a result."
)


@dataclass
class DemoResult:
    output_dir: Path
    model_dir: Path
    best_step: int
    validation_macro_auc: float
    predictions: dict[str, list[dict[str, float]]]
    test_macro_auc: float = math.nan
    test_score_spread: float = math.nan  # mean over findings of the std of the test scores across images
    heatmaps: list[Path] = field(default_factory=list)


# The models the demo trains: the 2D architectures whose labels are ChestX-ray14's (the bundled sample's).
DEMO_MODELS = ("cr_msnet", "ma_msf")
# What the demo writes under its output folder; a rerun replaces exactly these, and the marker says the folder is
# the demo's own.
DEMO_OUTPUTS = ("raw", "data", "model", "report", "hub", "examples", "heatmaps")
DEMO_MARKER = ".hf-cxr-demo"


def prepare_output_dir(output_dir: Path) -> None:
    """Make `output_dir` ready for a (re)run, before any work: a new or empty folder is used as it is; a folder an
    earlier demo wrote (it holds `DEMO_MARKER`) loses the demo's own outputs (`DEMO_OUTPUTS`) and keeps anything
    else; any other non-empty folder is refused with `FileExistsError`, since the demo would write into it."""
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"'{output_dir}' is a file; --output-dir must be a folder")
    if output_dir.is_dir() and any(output_dir.iterdir()):
        if not (output_dir / DEMO_MARKER).is_file():
            raise FileExistsError(
                f"'{output_dir}' is not empty and was not written by hf-cxr demo; choose another --output-dir"
            )
        for name in DEMO_OUTPUTS:
            target = output_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / DEMO_MARKER).write_text(
        "Written by `hf-cxr demo`: running it again here replaces " + ", ".join(f"{n}/" for n in DEMO_OUTPUTS) + "\n"
    )


def run_demo(
    output_dir: str | Path = "hf-cxr-demo",
    model_type: str = "cr_msnet",
    max_steps: int = 120,
    batch_size: int = 16,
    learning_rate: float = 1e-3,
    seed: int = 0,
) -> DemoResult:
    """Convert, train, select on validation, save and reload a tiny model on the bundled sample.

    `output_dir` receives every output (`DEMO_OUTPUTS`); running the demo again there replaces them. Raises
    `ValueError` for a model the demo does not train and `FileExistsError` for a non-empty folder it did not write,
    both before any work.
    """
    if model_type not in DEMO_MODELS:
        raise ValueError(f"the demo trains {', '.join(DEMO_MODELS)} (ChestX-ray14 findings), not {model_type!r}")
    output_dir = Path(output_dir)
    prepare_output_dir(output_dir)
    print(DISCLAIMER)
    raw = write_sample_raw_tree(output_dir / "raw")
    data_dir = output_dir / "data"
    print(f"\n[1/5] converting the bundled NIH sample ({raw}) with the ChestX-ray14 converter")
    # The sample has no NIH split lists: convert with the protocol that says so (the table's images split by
    # patient, seeded), so the dataset and model cards state the split as made.
    data = convert_chestxray14(
        raw, data_dir, image_size=None, seed=seed, validation_fraction=0.15, test_fraction=0.15,
        split_protocol="random_patient", overwrite=True,
    ).dataset  # fmt: skip

    name = f"{model_type}_chestxray14"
    print(f"\n[2/5] training {model_type} (tiny preset, recipe {name}, {max_steps} steps) with Accelerate")
    recipe_name = name if name in available_recipes() else None
    recipe = load_recipe(name) if recipe_name else Recipe()
    recipe.data.split_protocol = "random_patient"  # the recipes are for NIH's lists; the sample's split is random
    recipe.optimization.batch_size, recipe.optimization.seed = batch_size, seed
    recipe.set_learning_rate(learning_rate)
    config = TrainingConfig(
        model_type=model_type, dataset=str(data_dir), output_dir=output_dir / "model", recipe=recipe,
        recipe_name=recipe_name, preset="tiny", max_steps=max_steps, checkpointing_steps=max_steps,
        eval_steps=max(max_steps // 4, 1),
    )  # fmt: skip
    summary = train(config)
    best = next(entry for entry in summary["history"] if entry["step"] == summary["best_step"])

    model_dir = output_dir / "model"
    print("\n[3/5] evaluating on the test split (thresholds chosen on validation)")
    report = evaluate_model(
        model_dir, data_dir, split="test", out_dir=output_dir / "report", threshold_split="validation",
        n_bootstrap=200, seed=seed, store_thresholds=True,
    )  # fmt: skip
    print(f"\n[4/5] writing the Hub-ready folder (hf-cxr push --dry-run) to {output_dir / 'hub'}")
    pushed = push_model(
        model_dir, f"your-org/{model_type.replace('_', '-')}-demo", report_dir=output_dir / "report",
        dry_run=True, out_dir=output_dir / "hub",
    )  # fmt: skip
    print("\n[5/5] reloading the Hub-ready folder through pipeline('image-classification')")
    classifier = pipeline("image-classification", model=str(pushed.folder))
    test_rows = data["test"].select(range(2))
    predictions = {
        row["image_id"]: classifier(row["image"], top_k=classifier.model.config.num_labels) for row in test_rows
    }
    # What `hf-cxr predict` draws: findings with the validation-chosen thresholds and Grad-CAM heatmaps.
    examples = output_dir / "examples"
    examples.mkdir(parents=True, exist_ok=True)
    example = examples / test_rows[0]["image_id"]
    test_rows[0]["image"].save(example)
    model, processor = load_model(pushed.folder)
    heatmap_files = [r.heatmap for r in predict(model, processor, [example], out_dir=output_dir / "heatmaps")]
    result = DemoResult(
        output_dir, Path(pushed.folder), summary["best_step"], best["validation/auc_macro"], predictions,
        heatmaps=[Path(path) for path in heatmap_files if path],
        test_macro_auc=report.scores.metrics.get("auc_macro", math.nan),
        test_score_spread=float(report.probabilities.std(axis=0).mean()),
    )  # fmt: skip
    _report(result, len(data["validation"]))
    return result


def _report(result: DemoResult, validation_images: int) -> None:
    auc = "undefined" if math.isnan(result.validation_macro_auc) else f"{result.validation_macro_auc:.3f}"
    print(f"\nbest validation macro ROC-AUC: {auc} at step {result.best_step} ({validation_images} images)")
    print("  (a pipeline check on a few dozen images, not a measure of the architecture)")
    test = "undefined" if math.isnan(result.test_macro_auc) else f"{result.test_macro_auc:.3f}"
    print(f"test macro ROC-AUC: {test}; report with CIs and plots in {result.output_dir / 'report'}/")
    print(f"Hub-ready folder (weights, processor, remote code, model card): {result.model_dir}/")
    for name, scores in result.predictions.items():
        top = ", ".join(f"{item['label']} {item['score']:.3f}" for item in scores[:4])
        print(f"pipeline('image-classification') on {name}: {top}, ...")
    for path in result.heatmaps:
        print(f"findings and Grad-CAM heatmaps (hf-cxr predict): {path}")
    print(f"spread of the scores across test images (mean per-finding std): {result.test_score_spread:.4f}")
    if result.test_score_spread < 0.02:
        print(
            "  the scores barely change from image to image: a few minutes on a few hundred images teach a tiny\n"
            "  model little beyond how common each finding is. Train longer (--max-steps) or on a full converted\n"
            "  dataset with the paper preset before reading anything into them."
        )
