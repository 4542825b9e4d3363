"""MMCAF-Net through the training script: the recipe's three stages run on a tiny converted Lung-PET-CT-Dx dataset,
the best validation model is saved and loads with the Auto class, frozen parts stay bit-identical (weights and
BatchNorm buffers) during the stages that freeze them, and a resumed run ends with the same weights."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_evaluation_ct import HEADER, LUNG, SERIES, SERIES_DIR, STUDY, _copy_series
from test_training import TWO_CPU_PROCESSES, TWO_CPU_PROCESSES_ENV

import hf_cxr
from hf_cxr.data import convert_lung_pet_ct_dx
from hf_cxr.training import add_train_arguments, latest_checkpoint, oversampled_indices, train
from hf_cxr.training.arguments import config_from_arguments
from hf_cxr.training.config import Oversampling, TrainingConfig

PATIENTS = ["A0001", "A0002", "A0003", "A0004", "G0001", "G0002", "G0003", "G0004"]
# No `data.processor.size`: with `--preset tiny` the slab follows the tiny model (12 x 32 x 32), not the recipe.
# The fixture is converted with a quarter of the patients in validation and test (the recipe's split is 70/10/20):
# the recipe must say so, or train.py refuses the dataset.
TINY = ("--set", "data.oversample_minority.target_count=3",
        "--set", "data.split_protocol={fractions: {train: 0.5, validation: 0.25, test: 0.25}, seed: 0}")  # fmt: skip


@pytest.fixture(scope="module")
def ct_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight patients (four A, four G) copied from the real A0002 slices, converted for the A-vs-G task."""
    root = tmp_path_factory.mktemp("lung") / "Lung-PET-CT-Dx"
    for number, patient in enumerate(PATIENTS):
        _copy_series(SERIES_DIR, root / f"Lung_Dx-{patient}" / STUDY / SERIES, 23 * number)
    shutil.copytree(LUNG / "Annotation", root / "Annotation")
    clinical = root.parent / "clinical.csv"
    rows = [",".join(HEADER)]
    for number, patient in enumerate(PATIENTS, start=1):
        rows.append(f"{number},Lung_Dx-{patient},{'MF'[number % 2]},{50 + number},{60 + number},2,1,0,NA,{number % 2}")
    clinical.write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = root.parent / "converted"
    convert_lung_pet_ct_dx(root, clinical, out, task="ag", seed=0, validation_fraction=0.25, test_fraction=0.25)
    return out


def ct_argv(dataset: Path, output: Path, *extra: str) -> list[str]:
    """train.py's arguments for a 3-step (one per stage) tiny MMCAF-Net run; later flags override earlier ones."""
    return ["--model", "mmcaf_net", "--preset", "tiny", "--recipe", "mmcaf_net_lung_pet_ct_dx", "--dataset",
            str(dataset), "--output-dir", str(output), "--per-device-batch-size", "2", "--max-steps", "3",
            "--eval-steps", "1", "--checkpointing-steps", "1", "--keep-checkpoints", "3", "--learning-rate", "1e-2",
            "--log-with", "csv", "--seed", "0", *TINY, *extra]  # fmt: skip


def ct_args(dataset: Path, output: Path, *extra: str) -> argparse.Namespace:
    return add_train_arguments(argparse.ArgumentParser()).parse_args(ct_argv(dataset, output, *extra))


def ct_config(dataset: Path, output: Path, *extra: str) -> TrainingConfig:
    return config_from_arguments(ct_args(dataset, output, *extra))


def _part(weights: dict[str, torch.Tensor], part: str) -> dict[str, torch.Tensor]:
    found = {key: value for key, value in weights.items() if f"mmcaf_net.{part}." in key}
    assert found, part
    return found


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def test_stagewise_run_keeps_frozen_parts_and_saves_the_best_model(ct_dataset: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForVideoClassification

    summary = train(ct_config(ct_dataset, tmp_path))
    assert summary["finished"] and summary["step"] == 3
    assert [(stage["name"], stage["steps"]) for stage in summary["stages"]] == [
        ("stage1_image", 1),
        ("stage2_table", 1),
        ("stage3_fusion", 1),
    ]
    # Validation is scored per patient (one A and one G patient here): the AUROC is defined at every step.
    assert [0.0 <= entry["validation/auroc"] <= 1.0 for entry in summary["history"]] == [True] * 3
    step = {n: load_file(str(tmp_path / "checkpoints" / f"step-0000000{n}" / "model.safetensors")) for n in (1, 2, 3)}
    # Stage 2 freezes the image encoder; stage 3 both encoders. Weights and BN buffers (running statistics and
    # num_batches_tracked) must not move, while the trained part of each stage does.
    image = [_part(step[n], "image_encoder") for n in (1, 2, 3)]
    assert any(key.endswith("running_mean") for key in image[0]) and any("num_batches" in key for key in image[0])
    assert _same(image[0], image[1]) and _same(image[1], image[2])
    table = [_part(step[n], "table_encoder") for n in (1, 2, 3)]
    assert not _same(table[0], table[1]) and _same(table[1], table[2])
    assert not _same(_part(step[2], "fusion"), _part(step[3], "fusion"))
    assert not torch.equal(step[2]["classifier.weight"], step[3]["classifier.weight"])
    assert not torch.equal(step[1]["table_classifier.weight"], step[2]["table_classifier.weight"])

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["selected_on"] == "validation" and metrics["select_best_by"] == "auroc"
    assert metrics["step"] == summary["best_step"] and metrics["training"]["finished"]
    model = AutoModelForVideoClassification.from_pretrained(tmp_path)
    assert isinstance(model, hf_cxr.MMCAFNetForCTClassification)
    best = summary["stages"][metrics["step"] - 1]  # one step per stage: the saved model is that stage's
    assert model.config.classification_head == {"stage1_image": "image", "stage2_table": "table"}.get(
        best["name"], "fused"
    )
    assert _same(model.state_dict(), step[metrics["step"]])
    recipe = yaml.safe_load((tmp_path / "recipe.yaml").read_text())
    assert recipe["curriculum"]["stage3_fusion"]["frozen_parts"] == ["image_encoder", "table_encoder"]
    assert recipe["data"]["processor"]["size"] == 32
    processor = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert processor["num_slices"] == 12 and processor["size"]["height"] == 32
    # Training rows per class after oversampling G to 3 rows (two A and one G patient with one series each).
    assert model.config.class_positive_counts == [2, 3] and model.config.num_train_samples == 5
    ages = processor["clinical_age_range"]  # fitted on the training patients only (ages 51-58 in the table)
    assert 51 <= ages[0] < ages[1] <= 58 and ages != [20.0, 100.0]


def test_resumed_ct_run_ends_with_the_same_weights(ct_dataset: Path, tmp_path: Path) -> None:
    train(ct_config(ct_dataset, tmp_path / "straight"))
    train(ct_config(ct_dataset, tmp_path / "resumed", "--stop-after-steps", "2"))
    assert latest_checkpoint(tmp_path / "resumed").name == "step-00000002"
    summary = train(ct_config(ct_dataset, tmp_path / "resumed", "--resume-from-checkpoint", "latest"))
    assert summary["finished"] and summary["step"] == 3
    a = load_file(str(latest_checkpoint(tmp_path / "straight") / "model.safetensors"))
    b = load_file(str(latest_checkpoint(tmp_path / "resumed") / "model.safetensors"))
    assert _same(a, b)


@pytest.mark.slow
def test_two_process_ct_run_keeps_frozen_parts_and_logs_one_process_auroc(ct_dataset: Path, tmp_path: Path) -> None:
    """Two gloo processes (`TWO_CPU_PROCESSES`) through the three stages: frozen parts stay frozen under DDP,
    and the validation AUROC it logs equals one process's evaluation of the saved model."""
    env = {**os.environ, **TWO_CPU_PROCESSES_ENV}
    script = Path(__file__).resolve().parents[1] / "training_scripts" / "train.py"
    one_image_each = ("--per-device-batch-size", "1")  # two processes x 1 = the single-process batch of 2
    command = [*TWO_CPU_PROCESSES, str(script), *ct_argv(ct_dataset, tmp_path / "two", *one_image_each)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "two" / "metrics.json").read_text())["training"]
    assert summary["finished"] and [stage["steps"] for stage in summary["stages"]] == [1, 1, 1]
    assert summary["compute"]["processes"] == 2
    step = {n: load_file(str(tmp_path / "two" / "checkpoints" / f"step-0000000{n}" / "model.safetensors"))
            for n in (1, 2, 3)}  # fmt: skip
    image = [_part(step[n], "image_encoder") for n in (1, 2, 3)]
    assert _same(image[0], image[1]) and _same(image[1], image[2])
    table = [_part(step[n], "table_encoder") for n in (1, 2, 3)]
    assert not _same(table[0], table[1]) and _same(table[1], table[2])
    # Each process scored the whole validation split: one process rescoring the saved best model agrees.
    from transformers import AutoModelForVideoClassification, AutoProcessor

    from hf_cxr.training import evaluate_ct
    from hf_cxr.training.config import load_recipe

    best = json.loads((tmp_path / "two" / "metrics.json").read_text())["step"]
    model = AutoModelForVideoClassification.from_pretrained(tmp_path / "two").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "two")
    validation = datasets.load_from_disk(str(ct_dataset))["validation"]
    rescored = evaluate_ct(model, processor, validation, load_recipe("mmcaf_net_lung_pet_ct_dx").evaluation, "cpu")
    logged = next(entry for entry in summary["history"] if entry["step"] == best)
    assert logged["validation/auroc"] == pytest.approx(rescored["auroc"], abs=1e-6)


def test_minority_oversampling_repeats_training_rows_only() -> None:
    classes = np.array([0, 0, 0, 1, 0, 1])
    names = ["adenocarcinoma", "squamous_cell_carcinoma"]
    section = {"class": "squamous_cell_carcinoma", "target_count": 5, "train_only": True}
    indices = oversampled_indices(classes, names, Oversampling(**section), seed=0)
    assert indices[:6] == list(range(6)) and len(indices) == 9 and set(indices[6:]) <= {3, 5}
    assert oversampled_indices(classes, names, None, seed=0) == list(range(6))
    with pytest.raises(ValueError, match="train_only"):
        oversampled_indices(classes, names, Oversampling(**{**section, "train_only": False}), seed=0)
    with pytest.raises(ValueError, match="not one of the model's labels"):
        oversampled_indices(classes, names, Oversampling(**{**section, "class": "small_cell_carcinoma"}), seed=0)
