"""The Accelerate training script: a run trains and selects on validation, a killed run resumes to the same
weights, two processes report the same validation AUC as one, and recipes are validated."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from conftest import NIH_DIR
from safetensors.torch import load_file

import hf_cxr
from hf_cxr.cli import main as cli_main
from hf_cxr.data.transforms import eval_transform
from hf_cxr.recipes import apply_overrides, load_recipe
from hf_cxr.sample import load_labelled_folder
from hf_cxr.training import add_train_arguments, latest_checkpoint, lr_at, stages_from_recipe, train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    """The 15 real NIH fixture radiographs as a converted-style DatasetDict (10 train / 5 validation)."""
    folder = tmp_path_factory.mktemp("data") / "nih"
    parts = load_labelled_folder(NIH_DIR).train_test_split(test_size=5, seed=0)
    datasets.DatasetDict({"train": parts["train"], "validation": parts["test"]}).save_to_disk(str(folder))
    return folder


def run_args(dataset: Path, output: Path, *extra: str):
    import argparse

    argv = ["--model", "cr_msnet", "--preset", "tiny", "--dataset", str(dataset), "--output-dir", str(output),
            "--per-device-batch-size", "4", "--log-with", "csv", *extra]  # fmt: skip
    return add_train_arguments(argparse.ArgumentParser()).parse_args(argv)


def train_loss(model, dataset: Path) -> float:
    split = datasets.load_from_disk(str(dataset))["train"]
    batch = split.with_transform(eval_transform(hf_cxr.build_image_processor("cr_msnet", "tiny")))[: len(split)]
    model.eval()
    with torch.no_grad():
        return model(pixel_values=batch["pixel_values"], labels=batch["labels"]).loss.item()


def test_a_run_lowers_the_loss_and_keeps_the_best_validation_model(tiny_dataset, tmp_path) -> None:
    """The loss falls, the best validation model is saved, and the CSV and TensorBoard trackers log every step."""
    torch.manual_seed(0)
    before = train_loss(hf_cxr.build_model("cr_msnet", "tiny"), tiny_dataset)  # the run builds the same init
    argv = ["train", "--model", "cr_msnet", "--preset", "tiny", "--dataset", str(tiny_dataset), "--output-dir",
            str(tmp_path), "--max-steps", "10", "--per-device-batch-size", "5", "--learning-rate", "3e-3",
            "--eval-steps", "5", "--seed", "0"]  # fmt: skip
    assert cli_main(argv) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["selected_on"] == "validation" and metrics["step"] in (5, 10)
    assert metrics["training"]["finished"] and metrics["training"]["step"] == 10
    compute = metrics["training"]["compute"]  # what the model card's compute section reports
    assert compute["processes"] == 1 and compute["batch_size_per_device"] == 5 and compute["wall_seconds"] > 0
    model = hf_cxr.CRMSNetForImageClassification.from_pretrained(tmp_path)
    assert (tmp_path / "preprocessor_config.json").is_file() and (tmp_path / "modeling_cr_msnet.py").is_file()
    final = load_file(str(latest_checkpoint(tmp_path) / "model.safetensors"))
    last = hf_cxr.build_model("cr_msnet", "tiny")
    last.load_state_dict(final, strict=False)
    assert train_loss(last, tiny_dataset) < before
    assert train_loss(model, tiny_dataset) < before
    assert (tmp_path / "logs" / "run" / "metrics.csv").read_text().count("train/loss") == 10
    # --log-with defaults to csv plus TensorBoard (installed by the test extra), both under logs/run.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "logs" / "run")).Reload()
    assert len(events.Scalars("train/loss")) == 10
    assert [event.step for event in events.Scalars("validation/auc_macro")] == [5, 10]


def test_killed_run_resumes_to_the_same_weights(tiny_dataset, tmp_path) -> None:
    """Two-stage curriculum, augmentation, dropout and EMA: interrupted at step 5 of 8, resumed, same weights."""
    common = ("--recipe", "cr_msnet_chestxray14", "--max-steps", "8", "--checkpointing-steps", "2",
              "--set", "optimization.ema={enabled: true, decay: 0.9}", "--seed", "3")  # fmt: skip
    train(run_args(tiny_dataset, tmp_path / "straight", *common))
    train(run_args(tiny_dataset, tmp_path / "resumed", *common, "--stop-after-steps", "5"))
    assert latest_checkpoint(tmp_path / "resumed").name == "step-00000005"
    summary = train(run_args(tiny_dataset, tmp_path / "resumed", *common, "--resume-from-checkpoint", "latest"))
    assert summary["finished"] and summary["step"] == 8
    straight = latest_checkpoint(tmp_path / "straight")
    resumed = latest_checkpoint(tmp_path / "resumed")
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ema_a, ema_b = load_file(str(straight / "ema.safetensors")), load_file(str(resumed / "ema.safetensors"))
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    assert not list(resumed.glob("*.pkl")) or {p.name for p in resumed.glob("*.pkl")} == {"random_states_0.pkl"}
    # Stage 1 (abnormal images only) took round(8 * 5 / 25) = 2 steps; stage 2 switched to the class-balanced loss.
    stages = summary["stages"]
    assert [(s["steps"], s["exclude_no_finding"], s["loss"]) for s in stages] == [
        (2, True, "bce"),
        (6, False, "class_balanced_focal"),
    ]
    config = json.loads((tmp_path / "straight" / "config.json").read_text())
    assert len(config["class_positive_counts"]) == 14 and config["num_train_samples"] == 10


# Two gloo processes on the CPU. `accelerate launch --cpu --num_processes 2` starts ONE process (it expects mpirun
# for several CPU processes); torchrun's launcher (`--multi_gpu`) with ACCELERATE_USE_CPU starts two.
TWO_CPU_PROCESSES = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                     "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
TWO_CPU_PROCESSES_ENV = {"ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def test_two_processes_report_the_same_validation_auc_as_one(tiny_dataset, tmp_path) -> None:
    env = {**os.environ, **TWO_CPU_PROCESSES_ENV}
    command = [*TWO_CPU_PROCESSES,
               str(REPO / "training_scripts" / "train.py"), "--model", "cr_msnet", "--preset", "tiny",
               "--dataset", str(tiny_dataset), "--output-dir", str(tmp_path), "--max-steps", "3",
               "--per-device-batch-size", "2", "--eval-steps", "3"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    training = json.loads((tmp_path / "metrics.json").read_text())["training"]
    assert training["compute"]["processes"] == 2  # really two processes
    logged = training["history"][-1]
    # The same weights scored by one process over the whole validation split.
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    from hf_cxr.training import _evaluate

    model = hf_cxr.build_model("cr_msnet", "tiny")
    model.load_state_dict(load_file(str(latest_checkpoint(tmp_path) / "model.safetensors")), strict=False)
    validation = datasets.load_from_disk(str(tiny_dataset))["validation"]
    loader = DataLoader(validation.with_transform(eval_transform(hf_cxr.build_image_processor("cr_msnet", "tiny"))),
                        batch_size=2)  # fmt: skip
    single = _evaluate(Accelerator(cpu=True), model, loader, model.config.id2label)
    assert logged["validation/auc_macro"] == pytest.approx(single["auc_macro"], abs=1e-6)
    assert logged["validation/auc_micro"] == pytest.approx(single["auc_micro"], abs=1e-6)


def test_every_recipe_validates_and_names_its_model(tmp_path) -> None:
    from hf_cxr.recipes import available_recipes

    names = available_recipes()
    assert {
        "cr_msnet_chestxray14",
        "ma_msf_chestxray14",
        "mxa_efficientvit_chexpert",
        "mmcaf_net_lung_pet_ct_dx",
    } <= set(names)
    for name in names:
        model_type = name.removesuffix("_chestxray14").removesuffix("_chexpert").removesuffix("_lung_pet_ct_dx")
        assert load_recipe(name)["model"]["model_type"] == model_type
    with pytest.raises(ValueError, match="'nope' is not one of them"):
        train(run_args(tmp_path, tmp_path / "out", "--model", "nope"))
    with pytest.raises(ValueError, match="apply to CT models"):  # a CT-only key is refused for a 2D model
        train(run_args(tmp_path, tmp_path / "out", "--set", "data.processor={size: 32}"))


def test_log_with_names_trackers_and_refuses_unknown_ones(tmp_path) -> None:
    from hf_cxr.training import CSVTracker, tracker_list

    assert tracker_list("none", tmp_path) is None
    csv, *others = tracker_list("csv,tensorboard,wandb", tmp_path)
    assert isinstance(csv, CSVTracker) and others == ["tensorboard", "wandb"]
    assert [getattr(t, "name", t) for t in tracker_list("auto", tmp_path)] == ["csv", "tensorboard"]  # test extra
    with pytest.raises(ValueError, match=r"--log-with: unknown tracker\(s\) \['tensorbord'\]"):
        tracker_list("csv,tensorbord", tmp_path)


def test_recipes_are_validated_and_scheduled() -> None:
    recipe = load_recipe("cr_msnet_chestxray14")
    stages = stages_from_recipe(recipe)
    assert [s.name for s in stages] == ["stage1", "stage2"] and stages[0].exclude_no_finding
    stages[0].steps, stages[1].steps = 30, 40
    opt = recipe["optimization"]
    assert lr_at(0, stages, opt, [10, 10]) == pytest.approx(3e-4 / 10)  # warm-up over the first epoch
    assert lr_at(9, stages, opt, [10, 10]) == pytest.approx(3e-4)
    assert lr_at(20, stages, opt, [10, 10]) < lr_at(11, stages, opt, [10, 10]) < 3e-4  # cosine decay
    assert lr_at(30, stages, opt, [10, 10]) == pytest.approx(1e-4)  # stage 2 restarts at its own rate
    assert lr_at(69, stages, opt, [10, 10]) == pytest.approx(1e-6, abs=1e-6)
    with pytest.raises(ValueError, match=r"unknown recipe keys.*optimization\.learning_rat"):
        apply_overrides(recipe, ["optimization.learning_rat=1"])
    with pytest.raises(ValueError, match="no recipe 'nope'"):
        load_recipe("nope")


def test_ma_msf_anchor_is_updated_after_every_optimizer_step(tiny_dataset, tmp_path) -> None:
    torch.manual_seed(0)
    initial = {k: v.clone() for k, v in hf_cxr.build_model("ma_msf", "tiny").state_dict().items()}
    args = run_args(tiny_dataset, tmp_path, "--model", "ma_msf", "--max-steps", "3", "--learning-rate", "1e-2",
                    "--seed", "0", "--set", "model.overrides={anchor_momentum: 0.5}")  # fmt: skip
    torch.manual_seed(0)
    train(args)
    trained = load_file(str(latest_checkpoint(tmp_path) / "model.safetensors"))
    anchor_keys = [k for k in trained if ".anchor." in k and k.endswith("weight")]
    assert anchor_keys, "MA-MSF checkpoint has no anchor weights"
    for key in anchor_keys:
        online_key = key.replace("anchor.", "backbone.", 1)
        assert not torch.equal(trained[key], initial[key])  # the EMA moved the anchor ...
        if online_key in trained:
            assert not torch.equal(trained[key], trained[online_key])  # ... but not onto the online block


def test_distillation_from_a_local_teacher(tiny_dataset, tmp_path) -> None:
    teacher = hf_cxr.build_model("cr_msnet", "tiny")
    teacher.save_pretrained(tmp_path / "teacher")
    common = ("--max-steps", "2", "--seed", "0", "--learning-rate", "1e-2")
    plain = train(run_args(tiny_dataset, tmp_path / "plain", *common))
    teacher_flags = ("--teacher", str(tmp_path / "teacher"), "--set", "distillation.teacher_outputs=logits")
    distilled = train(run_args(tiny_dataset, tmp_path / "distilled", *common, *teacher_flags))
    assert plain["finished"] and distilled["finished"]
    a = load_file(str(latest_checkpoint(tmp_path / "plain") / "model.safetensors"))
    b = load_file(str(latest_checkpoint(tmp_path / "distilled") / "model.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the teacher's targets changed the updates
