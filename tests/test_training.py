"""The Accelerate training script: a run trains and selects on validation, a killed run resumes to the same
weights, two processes report the same validation AUC as one, and recipes are validated."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

import hf_cxr
from hf_cxr.cli import main as cli_main
from hf_cxr.data.transforms import eval_transform
from hf_cxr.registry import load_model
from hf_cxr.training import (
    add_train_arguments,
    apply_data_section,
    latest_checkpoint,
    lr_at,
    stages_from_recipe,
    train,
)
from hf_cxr.training.arguments import config_from_arguments
from hf_cxr.training.config import TrainingConfig, apply_overrides, available_recipes, load_recipe, parse_recipe

REPO = Path(__file__).resolve().parents[1]


def refuse_constant(name: str) -> None:
    raise ValueError(f"not strict JSON: {name}")


def run_args(dataset: Path, output: Path, *extra: str):
    import argparse

    argv = ["--model", "cr_msnet", "--preset", "tiny", "--dataset", str(dataset), "--output-dir", str(output),
            "--per-device-batch-size", "4", "--log-with", "csv", *extra]  # fmt: skip
    return add_train_arguments(argparse.ArgumentParser()).parse_args(argv)


def run_config(dataset: Path, output: Path, *extra: str) -> TrainingConfig:
    """The `TrainingConfig` that `hf-cxr train` builds from these flags (see `run_args`)."""
    return config_from_arguments(run_args(dataset, output, *extra))


def train_loss(model, dataset: Path) -> float:
    split = datasets.load_from_disk(str(dataset))["train"]
    batch = split.with_transform(eval_transform(hf_cxr.build_image_processor("cr_msnet", "tiny")))[: len(split)]
    model.eval()
    with torch.no_grad():
        return model(pixel_values=batch["pixel_values"], labels=batch["labels"]).loss.item()


def test_a_run_lowers_the_loss_and_keeps_the_best_validation_model(tiny_dataset, tmp_path, capsys) -> None:
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
    # On CPU the default is no loader workers; the run measured how much of its step time went to waiting for data.
    assert compute["dataloader_workers"] == 0 and 0 < compute["data_wait_share"] < 1
    assert "of step time waiting for data (0 loader workers, no augmentation)" in capsys.readouterr().out
    assert compute["augment_on"] == "none" and "augment_on" not in metrics["run"]  # the recipe augments nothing
    model = hf_cxr.CRMSNetForImageClassification.from_pretrained(tmp_path)
    assert (tmp_path / "preprocessor_config.json").is_file() and (tmp_path / "modeling_cr_msnet.py").is_file()
    final = load_file(str(latest_checkpoint(tmp_path) / "model.safetensors"))
    last = hf_cxr.build_model("cr_msnet", "tiny")
    last.load_state_dict(final, strict=False)
    assert train_loss(last, tiny_dataset) < before
    assert train_loss(model, tiny_dataset) < before
    csv_lines = (tmp_path / "logs" / "run" / "metrics.csv").read_text().splitlines()
    assert csv_lines[0] == "step,name,value" and sum("train/loss" in line for line in csv_lines) == 10
    # Every JSON file the run wrote is strict JSON (no NaN, Infinity): the validation AUCs of 5 images are NaN.
    written = sorted(tmp_path.rglob("*.json"))
    assert {"metrics.json", "config.json", "training_state.json"} <= {path.name for path in written}
    for path in written:
        json.loads(path.read_text(), parse_constant=refuse_constant)
    run = metrics["run"]  # what the model card states: the run that happened
    assert run["preset"] == "tiny" and run["image_size"] == 64 and run["max_steps"] == 10 and run["recipe"] is None
    assert run["dataset"]["rows"] == {"train": 10, "validation": 5} and run["dataset"]["conversion"] is None
    assert run["command_line"] == ["hf-cxr", *argv]  # the command, not the Python process's argv (pytest's here)
    assert yaml.safe_load((tmp_path / "recipe.yaml").read_text())["model"]["preset"] == "tiny"
    # --log-with defaults to csv plus TensorBoard (installed by the test extra), both under logs/run.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "logs" / "run")).Reload()
    assert len(events.Scalars("train/loss")) == 10
    assert [event.step for event in events.Scalars("validation/auc_macro")] == [5, 10]


def test_killed_run_resumes_to_the_same_weights_at_any_step(tiny_dataset, tmp_path) -> None:
    """Two-stage curriculum, augmentation, dropout and EMA: a run interrupted three times, twice in the middle of an
    epoch and once in the middle of stage 1, ends with the same weights as an uninterrupted one, and so does every
    checkpoint on the way (10 training images, batch 4: stage 2 has 3 batches per epoch, steps 3-5 and 6-8)."""
    common = ("--recipe", "cr_msnet_chestxray14", "--max-steps", "8", "--checkpointing-steps", "1",
              "--keep-checkpoints", "8", "--set", "optimization.ema={enabled: true, decay: 0.9}",
              "--seed", "3")  # fmt: skip
    train(run_config(tiny_dataset, tmp_path / "straight", *common))
    resumed = tmp_path / "resumed"
    for stop_at, after in ((1, "1"), (4, "3"), (7, "3")):
        resume = ("--resume-from-checkpoint", "latest") if stop_at > 1 else ()
        train(run_config(tiny_dataset, resumed, *common, *resume, "--stop-after-steps", after))
        assert latest_checkpoint(resumed).name == f"step-{stop_at:08d}"
    summary = train(run_config(tiny_dataset, resumed, *common, "--resume-from-checkpoint", "latest"))
    assert summary["finished"] and summary["step"] == 8
    for step in range(1, 9):
        a = load_file(str(tmp_path / "straight" / "checkpoints" / f"step-{step:08d}" / "model.safetensors"))
        b = load_file(str(resumed / "checkpoints" / f"step-{step:08d}" / "model.safetensors"))
        differing = [k for k in a if not torch.equal(a[k], b[k])]
        assert a.keys() == b.keys() and not differing, f"step {step}: {len(differing)} of {len(a)} tensors differ"
    straight, final = latest_checkpoint(tmp_path / "straight"), latest_checkpoint(resumed)
    ema_a, ema_b = load_file(str(straight / "ema.safetensors")), load_file(str(final / "ema.safetensors"))
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    assert not list(final.glob("*.pkl")) or {p.name for p in final.glob("*.pkl")} == {"random_states_0.pkl"}
    # Stage 1 (abnormal images only) took round(8 * 5 / 25) = 2 steps; stage 2 switched to the class-balanced loss.
    stages = summary["stages"]
    assert [(s["steps"], s["exclude_no_finding"], s["loss"]) for s in stages] == [
        (2, True, "bce"),
        (6, False, "class_balanced_focal"),
    ]
    config = json.loads((tmp_path / "straight" / "config.json").read_text())
    assert len(config["class_positive_counts"]) == 14 and config["num_train_samples"] == 10


def test_augmenting_on_the_device_trains_the_same_weights_as_in_the_loader(tiny_dataset, tmp_path) -> None:
    """Every 2D augmentation step, run in the data loader's workers (`--augment-on cpu`) or batched after the batch
    reached the training device (`device`; the CPU here): the same images, so the same weights after 3 steps."""
    augmentation = ("augmentation.random_resized_crop={scale: [0.6, 1.0], p: 0.9}",
                    "augmentation.horizontal_flip={p: 0.5}", "augmentation.rotate={degrees: 10, p: 0.5}",
                    "augmentation.affine={translate: [0.1, 0.1], scale: [0.9, 1.1], shear: 5, p: 0.5}",
                    "augmentation.elastic={alpha: 30.0, sigma: 5.0, p: 0.5}",
                    "augmentation.gaussian_blur={kernel_size: 3, sigma: [0.1, 1.0], p: 0.5}")  # fmt: skip
    common = ["--max-steps", "3", "--seed", "1"] + [part for item in augmentation for part in ("--set", item)]
    weights = {}
    for where, workers in (("cpu", "1"), ("device", "0")):
        train(run_config(tiny_dataset, tmp_path / where, *common, "--augment-on", where, "--num-workers", workers))
        weights[where] = load_file(str(tmp_path / where / "model.safetensors"))
        metrics = json.loads((tmp_path / where / "metrics.json").read_text())
        assert metrics["training"]["compute"]["augment_on"] == where
    assert all(torch.equal(weights["cpu"][key], weights["device"][key]) for key in weights["cpu"])
    train(run_config(tiny_dataset, tmp_path / "plain", "--max-steps", "3", "--seed", "1"))  # the augmentation mattered
    plain = load_file(str(tmp_path / "plain" / "model.safetensors"))
    assert any(not torch.equal(plain[key], weights["cpu"][key]) for key in plain)


# Two gloo processes on the CPU. `accelerate launch --cpu --num_processes 2` starts ONE process (it expects mpirun
# for several CPU processes); torchrun's launcher (`--multi_gpu`) with ACCELERATE_USE_CPU starts two.
TWO_CPU_PROCESSES = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                     "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
TWO_CPU_PROCESSES_ENV = {"ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.mark.slow
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

    from hf_cxr.training.validation import evaluate_images

    model = hf_cxr.build_model("cr_msnet", "tiny")
    model.load_state_dict(load_file(str(latest_checkpoint(tmp_path) / "model.safetensors")), strict=False)
    validation = datasets.load_from_disk(str(tiny_dataset))["validation"]
    loader = DataLoader(validation.with_transform(eval_transform(hf_cxr.build_image_processor("cr_msnet", "tiny"))),
                        batch_size=2)  # fmt: skip
    single = evaluate_images(Accelerator(cpu=True), model, loader, model.config.id2label)
    assert logged["validation/auc_macro"] == pytest.approx(single["auc_macro"], abs=1e-6)
    assert logged["validation/auc_micro"] == pytest.approx(single["auc_micro"], abs=1e-6)


def test_every_recipe_validates_and_names_its_model(tmp_path) -> None:
    names = available_recipes()
    assert {
        "cr_msnet_chestxray14",
        "ma_msf_chestxray14",
        "mxa_efficientvit_chexpert",
        "mmcaf_net_lung_pet_ct_dx",
    } <= set(names)
    for name in names:
        model_type = name.removesuffix("_chestxray14").removesuffix("_chexpert").removesuffix("_lung_pet_ct_dx")
        assert load_recipe(name).model.model_type == model_type
    with pytest.raises(ValueError, match="'nope' is not one of them"):
        train(run_config(tmp_path, tmp_path / "out", "--model", "nope"))
    with pytest.raises(ValueError, match="apply to CT models"):  # a CT-only key is refused for a 2D model
        train(run_config(tmp_path, tmp_path / "out", "--set", "data.processor={size: 32}"))


def test_loader_defaults_follow_the_device_and_the_cores(monkeypatch) -> None:
    from hf_cxr.training import data

    monkeypatch.setattr(data, "usable_cores", lambda: 16)
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert data.default_num_workers(cpu, 1) == 0  # on CPU the model's threads use every core
    assert data.default_num_workers(gpu, 1) == 8 and data.default_num_workers(gpu, 4) == 3  # 16 / 4 - 1
    monkeypatch.setattr(data, "usable_cores", lambda: 1)
    assert data.default_num_workers(gpu, 2) == 0
    assert data.loader_options(0, cpu) == {"num_workers": 0, "pin_memory": False}
    assert data.loader_options(3, gpu) == {
        "num_workers": 3, "pin_memory": True, "persistent_workers": True, "prefetch_factor": data.GPU_PREFETCH_FACTOR,
    }  # fmt: skip


def test_the_data_wait_clock_splits_step_time_and_leaves_out_validation() -> None:
    from hf_cxr.training.tracking import DataWaitClock

    now = [0.0]

    def loader():
        for item in range(3):
            now[0] += 3.0  # the loader's time: waiting
            yield item

    clock = DataWaitClock(timer=lambda: now[0])
    assert math.isnan(clock.share)
    for _ in clock.batches(loader()):
        now[0] += 1.0  # the step's time: computing
        with clock.excluded():
            now[0] += 10.0  # validation: neither
    assert (clock.waiting, clock.computing, clock.share) == (9.0, 3.0, 0.75)


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
    opt = recipe.optimization
    assert lr_at(0, stages, opt, [10, 10]) == pytest.approx(3e-4 / 10)  # warm-up over the first epoch
    assert lr_at(9, stages, opt, [10, 10]) == pytest.approx(3e-4)
    assert lr_at(20, stages, opt, [10, 10]) < lr_at(11, stages, opt, [10, 10]) < 3e-4  # cosine decay
    assert lr_at(30, stages, opt, [10, 10]) == pytest.approx(1e-4)  # stage 2 restarts at its own rate
    assert lr_at(69, stages, opt, [10, 10]) == pytest.approx(1e-6, abs=1e-6)
    with pytest.raises(ValueError, match=r"unknown recipe keys.*optimization\.learning_rat"):
        apply_overrides(recipe, ["optimization.learning_rat=1"])
    with pytest.raises(ValueError, match="no recipe 'nope'"):
        load_recipe("nope")


def test_an_unknown_key_or_a_wrong_value_is_refused_by_its_path(tmp_path) -> None:
    """A recipe key that train.py would not read, or a value of the wrong type, in a YAML recipe or through `--set`,
    is refused with a `ValueError` naming its dotted path, before anything is written."""
    path = tmp_path / "recipe.yaml"
    path.write_text("optimization:\n  batch_size: many\n  learning_rat: 1.0e-3\ncurriculum:\n  s1: {focal_gama: 2}\n")
    with pytest.raises(ValueError) as refused:
        load_recipe(path)
    message = str(refused.value)
    assert message.startswith(f"{path}: unknown recipe keys ")
    assert "'optimization.learning_rat'" in message and "'curriculum.s1.focal_gama'" in message
    assert "optimization.batch_size: Input should be a valid integer" in message and "(got 'many')" in message
    with pytest.raises(ValueError, match=r"^recipe: augmentation\.rotate\.degrees: Input should be a valid number"):
        parse_recipe({"augmentation": {"rotate": {"degrees": [1, 2]}}})
    with pytest.raises(ValueError, match=r"data\.split_protocol\.seed: Field required"):
        parse_recipe({"data": {"split_protocol": {"fractions": {"train": 1.0}}}})
    with pytest.raises(ValueError, match=r"^recipe after --set: unknown recipe keys \['evaluation\.threshold'\]$"):
        train(run_config(tmp_path, tmp_path / "out", "--set", "evaluation.threshold=0.5"))
    with pytest.raises(ValueError, match=r"^recipe after --set: optimization\.epochs: Input should be a valid number"):
        train(
            run_config(
                tmp_path, tmp_path / "out", "--recipe", "cr_msnet_chestxray14", "--set", "optimization.epochs=[1]"
            )
        )
    assert not (tmp_path / "out").exists()


def test_max_steps_is_the_run_length_or_refused(tmp_path) -> None:
    """`--max-steps 1` with a two-stage recipe ran two steps ("finished at step 2 of 2"): fewer steps than stages is
    refused before anything is written, and otherwise the stages' steps add up to exactly `max_steps` (they could
    exceed it when the last stage's share rounded below one step)."""
    from hf_cxr.training.schedule import Stage, resolve_steps

    with pytest.raises(ValueError, match=r"max_steps 1 is fewer than the recipe's 2 curriculum stages"):
        run_config(tmp_path, tmp_path / "out", "--recipe", "cr_msnet_chestxray14", "--max-steps", "1")
    assert not (tmp_path / "out").exists()
    stages = [Stage(name=str(index), epochs=epochs) for index, epochs in enumerate((1.0, 1.0, 1.0, 0.001))]
    assert resolve_steps(stages, [10] * 4, 5) == 5 and [stage.steps for stage in stages] == [1, 1, 1, 2]
    with pytest.raises(ValueError, match="fewer than the recipe's 4"):
        resolve_steps(stages, [10] * 4, 3)


def test_a_field_set_after_parsing_is_checked_as_the_recipe_is(tmp_path) -> None:
    """Code that edits a parsed config (the demo, a notebook) gets the recipe's checks: a value of the wrong type or a
    misspelled attribute raises, naming the field; and `train()` takes only a `TrainingConfig`."""
    config = run_config(tmp_path, tmp_path / "out")
    with pytest.raises(ValueError, match=r"batch_size\n.*valid integer"):
        config.recipe.optimization.batch_size = "many"
    with pytest.raises(ValueError, match=r"batchsize\n.*no attribute"):
        config.recipe.optimization.batchsize = 3
    config.recipe.optimization.batch_size = 8
    assert config.recipe.optimization.batch_size == 8
    with pytest.raises(TypeError, match=r"train\(\) takes a TrainingConfig, got Namespace"):
        train(run_args(tmp_path, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_flags_and_assignments_give_a_typed_configuration(tmp_path) -> None:
    """`--set` values are parsed to the field's type, and the explicit flags land on the recipe's fields."""
    args = run_args(tmp_path, tmp_path / "out", "--recipe", "cr_msnet_chestxray14", "--learning-rate", "1e-2",
                    "--set", "optimization.weight_decay=5e-2", "--set", "optimization.mixed_precision=no")  # fmt: skip
    config = config_from_arguments(args)
    assert isinstance(config, TrainingConfig) and config.recipe_name == "cr_msnet_chestxray14"
    recipe = config.recipe
    assert recipe.optimization.weight_decay == 0.05 and recipe.optimization.mixed_precision == "no"
    assert recipe.optimization.batch_size == 4 and recipe.optimization.learning_rate == 0.01
    assert [stage.learning_rate for stage in recipe.curriculum.values()] == [0.01, 0.01]
    assert not config.use_cpu and config_from_arguments(run_args(tmp_path, tmp_path / "out", "--use-cpu")).use_cpu
    assert recipe.curriculum["stage2"].given() == {
        "loss": "class_balanced_focal", "focal_gamma": 2.0, "class_balance_mode": "effective_number",
        "class_balance_beta": 0.9999,
    }  # fmt: skip
    with pytest.raises(ValueError, match=r"is for model 'cr_msnet', not 'ma_msf'"):
        config_from_arguments(run_args(tmp_path, tmp_path / "out", "--recipe", "cr_msnet_chestxray14",
                                       "--model", "ma_msf"))  # fmt: skip


def test_ma_msf_anchor_is_updated_after_every_optimizer_step(tiny_dataset, tmp_path) -> None:
    torch.manual_seed(0)
    initial = {k: v.clone() for k, v in hf_cxr.build_model("ma_msf", "tiny").state_dict().items()}
    args = run_args(tiny_dataset, tmp_path, "--model", "ma_msf", "--max-steps", "3", "--learning-rate", "1e-2",
                    "--seed", "0", "--set", "model.overrides={anchor_momentum: 0.5}")  # fmt: skip
    torch.manual_seed(0)
    train(config_from_arguments(args))
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
    with pytest.raises(FileNotFoundError, match=r"preprocessor_config\.json"):  # a model's inputs are never guessed
        load_model(tmp_path / "teacher")
    hf_cxr.build_image_processor("cr_msnet", "tiny").save_pretrained(tmp_path / "teacher")
    common = ("--max-steps", "2", "--seed", "0", "--learning-rate", "1e-2")
    plain = train(run_config(tiny_dataset, tmp_path / "plain", *common))
    teacher_flags = ("--teacher", str(tmp_path / "teacher"), "--set", "distillation.teacher_outputs=logits")
    distilled = train(run_config(tiny_dataset, tmp_path / "distilled", *common, *teacher_flags))
    assert plain["finished"] and distilled["finished"]
    a = load_file(str(latest_checkpoint(tmp_path / "plain") / "model.safetensors"))
    b = load_file(str(latest_checkpoint(tmp_path / "distilled") / "model.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the teacher's targets changed the updates


def converted_like(tmp_path: Path, settings: dict, views: list[str] | None = None, name: str = "chexpert") -> Path:
    """A DatasetDict folder with a conversion report as `hf-cxr convert` writes it (settings as given)."""
    rows = {"labels": [[0.0] * 14] * 4, "patient_id": ["a", "b", "c", "d"]}
    if views is not None:
        rows["frontal_lateral"] = views
    split = datasets.Dataset.from_dict(rows)
    folder = tmp_path / "converted"
    datasets.DatasetDict({"train": split, "validation": split}).save_to_disk(str(folder))
    (folder / "conversion_report.json").write_text(json.dumps({"dataset": name, "settings": settings}))
    return folder


def test_the_recipe_data_section_is_applied_or_refused(tmp_path) -> None:
    """The MXA recipe's U-Ones labels on a dataset converted with `--uncertain ignore` are refused (they would train
    on -100 labels while recipe.yaml and the card said "ones"); views select rows; the policy used is recorded."""
    chexpert = [hf_cxr.CHEXPERT_LABELS[i] for i in range(14)]
    recipe = load_recipe("mxa_efficientvit_chexpert")
    views = ["Frontal", "Lateral", "Frontal", "Frontal"]
    folder = converted_like(tmp_path, {"uncertain": "ignore", "frontal_only": False}, views)
    data = datasets.load_from_disk(str(folder))
    with pytest.raises(ValueError, match=r"data\.uncertain_labels is 'ones' but .* converted with uncertain='ignore'"):
        apply_data_section(recipe, str(folder), data, chexpert)
    recipe.data.uncertain_labels = "ignore"
    train_split, _, record = apply_data_section(recipe, str(folder), data, chexpert)
    assert train_split.num_rows == 4 and record["conversion"]["uncertain"] == "ignore" and not record["unverified"]
    recipe.data.views = ["frontal"]  # takes effect: the lateral row leaves both splits
    train_split, _, record = apply_data_section(recipe, str(folder), data, chexpert)
    assert train_split["frontal_lateral"] == ["Frontal"] * 3 and record["rows"] == {"train": 3, "validation": 3}
    recipe.data.uncertain_labels = None  # left out: filled in from the conversion, so recipe.yaml states it
    apply_data_section(recipe, str(folder), data, chexpert)
    assert recipe.data.uncertain_labels == "ignore"
    frontal_only = converted_like(tmp_path / "f", {"uncertain": "ignore", "frontal_only": True}, ["Frontal"] * 4)
    recipe.data.views = ["frontal", "lateral"]
    with pytest.raises(ValueError, match=r"data\.views asks for \['lateral'\] views .* --frontal-only"):
        apply_data_section(recipe, str(frontal_only), datasets.load_from_disk(str(frontal_only)), chexpert)
    with pytest.raises(ValueError, match=r"is a converted chexpert dataset .* but the model predicts \['Atelectasis'"):
        apply_data_section(recipe, str(folder), data, list(hf_cxr.CHESTXRAY14_LABELS))  # a ChestX-ray14 model
    unconverted = datasets.load_from_disk(str(folder))  # the same rows, no conversion report beside them
    unconverted.save_to_disk(str(tmp_path / "unconverted"))
    with pytest.raises(ValueError, match=r"data\.labels is 'chexpert' but the model predicts"):
        apply_data_section(recipe, str(tmp_path / "unconverted"), unconverted, list(hf_cxr.CHESTXRAY14_LABELS))
    nih = converted_like(tmp_path / "n", {"split_protocol": "random_patient", "seed": 0}, name="chestxray14")
    cr_recipe = load_recipe("cr_msnet_chestxray14")
    with pytest.raises(ValueError, match=r"data\.split_protocol is 'official' but .* split with 'random_patient'"):
        apply_data_section(cr_recipe, str(nih), datasets.load_from_disk(str(nih)), list(hf_cxr.CHESTXRAY14_LABELS))
    with pytest.raises(ValueError, match=r"data\.dataset is 'chestxray14' but .* is a converted chexpert dataset"):
        apply_data_section(cr_recipe, str(folder), data, list(hf_cxr.CHESTXRAY14_LABELS))


def test_a_dataset_without_conversion_report_lists_what_could_not_be_checked(tiny_dataset, capsys) -> None:
    recipe = load_recipe("cr_msnet_chestxray14")
    data = datasets.load_from_disk(str(tiny_dataset))
    *_, record = apply_data_section(recipe, str(tiny_dataset), data, list(hf_cxr.CHESTXRAY14_LABELS))
    assert record["conversion"] is None and record["unverified"] == ["data.dataset", "data.split_protocol"]
    assert "could not be checked" in capsys.readouterr().out


def test_a_misspelled_model_override_is_refused_before_training(tiny_dataset, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"has no field fusion_dimm \(did you mean fusion_dim\?\)"):
        train(run_config(tiny_dataset, tmp_path / "out", "--set", "model.overrides={fusion_dimm: 64}"))
    assert not (tmp_path / "out").exists()


def test_the_processor_reads_at_the_image_size_the_model_is_built_with(tiny_dataset, tmp_path) -> None:
    """`model.overrides.image_size` changes the model's input: training reads and saves the processor at that size
    (it was built at the preset's 64 px, feeding the 96-px model 64-px images)."""
    train(run_config(tiny_dataset, tmp_path, "--max-steps", "1", "--set", "model.overrides.image_size=96"))
    model, processor = load_model(tmp_path)
    assert model.config.image_size == 96
    assert processor.size == {"height": 96, "width": 96} and processor.num_channels == model.config.num_channels
    assert processor(np.zeros((80, 70), np.float32), return_tensors="pt")["pixel_values"].shape[-2:] == (96, 96)


def test_an_output_folder_holding_a_run_is_refused_before_any_work(tiny_dataset, tmp_path, capsys) -> None:
    from hf_cxr.training import prepare_output_dir

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "metrics.json").write_text("{}")
    (tmp_path / "modeling_cr_msnet.py").write_text("")
    (tmp_path / "notes.txt").write_text("mine")
    argv = ["train", "--model", "cr_msnet", "--preset", "tiny", "--dataset", str(tiny_dataset), "--output-dir",
            str(tmp_path), "--max-steps", "1"]  # fmt: skip
    assert cli_main(argv) == 1  # one line on stderr, no traceback
    error = capsys.readouterr().err
    assert error.startswith("hf-cxr train: error: ") and error.count("\n") == 1
    assert "already holds a training run (checkpoints, metrics.json); resume it with" in error
    prepare_output_dir(tmp_path, None, overwrite=True)  # --overwrite-output-dir: the run's files go, others stay
    assert [path.name for path in tmp_path.iterdir()] == ["notes.txt"]
    with pytest.raises(FileNotFoundError, match=r"is not a checkpoint folder of train\.py"):
        prepare_output_dir(tmp_path, str(tmp_path), overwrite=False)
