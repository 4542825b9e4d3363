"""What every hf-cxr 2D classifier promises a Hugging Face user, checked for each registered architecture.

Auto classes, exact save/load, remote code without hf_cxr, Hub-cache loading by repo id, the
image-classification pipeline (sigmoid scores), Trainer fine-tuning with AUC metrics, PEFT/LoRA, and
gradient checkpointing. Tiny presets keep each check to seconds on a CPU.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import NIH_DIR
from hf_cxr.modeling.common.losses import SINGLE_LABEL_LOSS_TYPES
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    Trainer,
    TrainingArguments,
    pipeline,
)

import hf_cxr
from hf_cxr.hub import add_to_cache
from hf_cxr.labels import CHESTXRAY14_LABELS
from hf_cxr.losses import LOSS_TYPES
from hf_cxr.metrics import make_compute_metrics
from hf_cxr.registry import ARCHITECTURES
from hf_cxr.sample import load_labelled_folder

IMAGE_CLASSIFIERS = sorted(
    name for name, arch in ARCHITECTURES.items() if arch.task_auto_class is AutoModelForImageClassification
)
HELPER = Path(__file__).parent / "helpers" / "load_without_hf_cxr.py"


def build(model_type: str, preset: str = "tiny"):
    model = hf_cxr.build_model(model_type, preset=preset, labels=list(CHESTXRAY14_LABELS))
    return model, hf_cxr.build_image_processor(model_type, preset=preset)


def save(model, processor, folder: Path) -> Path:
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def processed_fixture_batch(processor, count: int = 2) -> torch.Tensor:
    images = sorted((NIH_DIR / "images").glob("*.png"))[:count]
    return processor([str(path) for path in images], return_tensors="pt")["pixel_values"]


@pytest.mark.parametrize("model_type", IMAGE_CLASSIFIERS)
def test_auto_classes_resolve_to_hf_cxr_classes(model_type: str) -> None:
    arch = ARCHITECTURES[model_type]
    config = AutoConfig.for_model(model_type)
    assert isinstance(config, arch.config_class)
    assert config.problem_type == "multi_label_classification"
    assert config.num_labels == len(config.id2label) > 1
    assert type(AutoModel.from_config(hf_cxr.build_config(model_type, "tiny"))) is arch.base_model_class
    model = AutoModelForImageClassification.from_config(hf_cxr.build_config(model_type, "tiny"))
    assert type(model) is arch.task_model_class
    assert model.config_class is arch.config_class and model.main_input_name == "pixel_values"
    assert model.base_model_prefix and getattr(model, model.base_model_prefix) is not None


def test_build_model_defaults_to_chestxray14_findings_for_cr_msnet() -> None:
    model = hf_cxr.build_model("cr_msnet", preset="tiny")
    assert [model.config.id2label[i] for i in range(14)] == list(CHESTXRAY14_LABELS)
    assert model.config.label2id["Hernia"] == 13
    with pytest.raises(ValueError, match="unknown model_type"):
        hf_cxr.build_model("densenet")
    with pytest.raises(ValueError, match="preset"):
        hf_cxr.build_model("cr_msnet", preset="huge")


@pytest.mark.parametrize("model_type", IMAGE_CLASSIFIERS)
@pytest.mark.parametrize("preset", ["tiny", pytest.param("paper", marks=pytest.mark.slow)])
def test_save_and_reload_is_exact(model_type: str, preset: str, tmp_path: Path) -> None:
    model, processor = build(model_type, preset)
    model.eval()
    pixels = torch.randn(2, *processed_fixture_batch(processor, 1).shape[1:])
    with torch.no_grad():
        before = model(pixel_values=pixels).logits
    save(model, processor, tmp_path)
    files = {path.name for path in tmp_path.iterdir()}
    assert {"model.safetensors", "config.json", "preprocessor_config.json"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pth", ".pkl")) for name in files)
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        after = reloaded(pixel_values=pixels).logits
    assert torch.equal(before, after)
    reloaded_processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(reloaded_processor) is type(processor)
    assert reloaded_processor.to_dict() == processor.to_dict()


@pytest.mark.parametrize("model_type", IMAGE_CLASSIFIERS)
def test_saved_folder_carries_remote_code_and_loads_without_hf_cxr(model_type: str, tmp_path: Path) -> None:
    model, processor = build(model_type)
    folder = save(model.eval(), processor, tmp_path / "model")
    config = (folder / "config.json").read_text()
    for auto_class in ("AutoConfig", "AutoModel", "AutoModelForImageClassification"):
        assert f'"{auto_class}"' in config
    assert '"AutoImageProcessor"' in (folder / "preprocessor_config.json").read_text()
    for source in folder.glob("*.py"):  # remote code may only import from its own folder
        assert not re.search(r"^\s*(from|import)\s+hf_cxr", source.read_text(), re.MULTILINE), source.name
    pixels = processed_fixture_batch(processor)
    with torch.no_grad():
        logits = model(pixel_values=pixels).logits.numpy()
    np.save(tmp_path / "pixels.npy", pixels.numpy())
    np.save(tmp_path / "logits.npy", logits)
    image = sorted((NIH_DIR / "images").glob("*.png"))[0]
    result = subprocess.run(
        [sys.executable, str(HELPER), str(folder), str(tmp_path / "pixels.npy"), str(tmp_path / "logits.npy"),
         str(image), "block", str(torch.get_num_threads())],
        capture_output=True, text=True, cwd=tmp_path, stdin=subprocess.DEVNULL, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "transformers_modules" in result.stdout


@pytest.mark.parametrize("mode", ["import", "block"])
def test_load_by_repo_id_from_the_hub_cache_offline(mode: str, tmp_path: Path) -> None:
    model, processor = build("cr_msnet")
    folder = save(model.eval(), processor, tmp_path / "model")
    add_to_cache(folder, "org/cr-msnet", cache_dir=tmp_path / "cache")
    pixels = processed_fixture_batch(processor)
    with torch.no_grad():
        np.save(tmp_path / "logits.npy", model(pixel_values=pixels).logits.numpy())
    np.save(tmp_path / "pixels.npy", pixels.numpy())
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_CACHE": str(tmp_path / "cache"),
           "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}  # fmt: skip
    image = sorted((NIH_DIR / "images").glob("*.png"))[0]
    result = subprocess.run(
        [sys.executable, str(HELPER), "org/cr-msnet", str(tmp_path / "pixels.npy"), str(tmp_path / "logits.npy"),
         str(image), mode, str(torch.get_num_threads())],
        capture_output=True, text=True, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    expected_module = "transformers_modules" if mode == "block" else "hf_cxr.modeling"
    assert expected_module in result.stdout


@pytest.mark.parametrize("model_type", IMAGE_CLASSIFIERS)
def test_pipeline_returns_per_finding_sigmoids(model_type: str, tmp_path: Path) -> None:
    model, processor = build(model_type)
    folder = save(model.eval(), processor, tmp_path)
    image = sorted((NIH_DIR / "images").glob("*.png"))[0]
    with torch.no_grad():
        expected = torch.sigmoid(model(pixel_values=processor(str(image), return_tensors="pt")["pixel_values"]).logits)
    classifier = pipeline("image-classification", model=str(folder))
    scores = {item["label"]: item["score"] for item in classifier(str(image), top_k=model.config.num_labels)}
    assert set(scores) == set(CHESTXRAY14_LABELS)
    got = torch.tensor([scores[model.config.id2label[i]] for i in range(model.config.num_labels)])
    assert torch.allclose(got, expected[0], atol=1e-6)
    assert len(classifier(str(image))) == 5  # the stock task keeps its top_k=5 default
    everything = pipeline(hf_cxr.CXR_TASK, model=str(folder))(str(image))
    assert len(everything) == model.config.num_labels  # the hf-cxr task returns every finding


def labelled_fixture(processor):
    def transform(batch):
        encoded = processor(batch["image"], return_tensors="pt")
        return {"pixel_values": encoded["pixel_values"], "labels": torch.tensor(batch["labels"])}

    return load_labelled_folder(NIH_DIR).with_transform(transform)


LOSS_CASES = [(model_type, loss) for model_type in IMAGE_CLASSIFIERS for loss in LOSS_TYPES] + [
    ("mmcaf_net", loss) for loss in SINGLE_LABEL_LOSS_TYPES
]


def loss_case_model(model_type: str, loss: str):
    """A tiny model of `model_type` with `loss`; the class-balanced losses get training-split counts."""
    labels = hf_cxr.build_config(model_type, "tiny").num_labels
    counts = {"class_positive_counts": [40, 3] if labels == 2 else list(range(3, 3 + labels)), "num_train_samples": 60}
    return hf_cxr.build_model(model_type, "tiny", loss=loss, **(counts if loss == "class_balanced_focal" else {}))


def loss_case_rows(model, count: int = 4) -> list[dict[str, torch.Tensor]]:
    """`count` training rows with random inputs of the model's shape and labels of its kind (seeded)."""
    config, generator = model.config, torch.Generator().manual_seed(1)
    rows = []
    for index in range(count):
        if config.model_type == "mmcaf_net":
            shape = (1, config.num_slices, config.image_size, config.image_size)
            row = {"clinical_values": torch.rand(7, generator=generator) * 2 - 1, "labels": torch.tensor(index % 2)}
        else:
            shape = (config.num_channels, config.image_size, config.image_size)
            row = {"labels": (torch.rand(config.num_labels, generator=generator) < 0.3).float()}
        rows.append({"pixel_values": torch.randn(shape, generator=generator), **row})
    return rows


def one_trainer_step(model, rows: list[dict[str, torch.Tensor]], folder: Path) -> float:
    """One optimizer step of `Trainer` on `rows` (one batch); returns the training loss it reports."""
    args = TrainingArguments(
        output_dir=str(folder), per_device_train_batch_size=len(rows), max_steps=1, learning_rate=1e-3,
        remove_unused_columns=False, report_to=[], save_strategy="no", use_cpu=True, seed=0, dataloader_num_workers=0,
        disable_tqdm=True,
    )  # fmt: skip
    return Trainer(model=model, args=args, train_dataset=rows).train().training_loss


@pytest.mark.parametrize(("model_type", "loss"), LOSS_CASES)
def test_reload_restores_every_buffer_the_logits_and_the_loss(model_type: str, loss: str, tmp_path: Path) -> None:
    """Buffers computed at construction (the class-balanced loss's weights, timm's index tables) come back after
    `from_pretrained`, which builds the model on the meta device: every buffer, the logits, the loss and one
    Trainer step of the reloaded model equal the original's."""
    model = loss_case_model(model_type, loss).eval()
    rows = loss_case_rows(model)
    batch = {key: torch.stack([row[key] for row in rows]) for key in rows[0]}
    model.save_pretrained(tmp_path / "model")
    reloaded = type(model).from_pretrained(tmp_path / "model").eval()
    original_buffers, reloaded_buffers = dict(model.named_buffers()), dict(reloaded.named_buffers())
    assert original_buffers.keys() == reloaded_buffers.keys()
    differing = [name for name, value in original_buffers.items() if not torch.equal(value, reloaded_buffers[name])]
    assert not differing, f"buffers differ after reload: {differing}"
    with torch.no_grad():
        before, after = model(**batch), reloaded(**batch)
    assert torch.equal(before.logits, after.logits)
    assert torch.isfinite(before.loss) and torch.equal(before.loss, after.loss)
    trained = one_trainer_step(model, rows, tmp_path / "original")
    retrained = one_trainer_step(reloaded, rows, tmp_path / "reloaded")
    assert math.isfinite(trained) and trained == retrained


def mean_loss(model, dataset) -> float:
    model.eval()
    batch = dataset[: len(dataset)]
    with torch.no_grad():
        return model(pixel_values=batch["pixel_values"], labels=batch["labels"]).loss.item()


@pytest.mark.parametrize("model_type", IMAGE_CLASSIFIERS)
def test_trainer_fine_tuning_lowers_the_loss_and_reports_auc(model_type: str, tmp_path: Path) -> None:
    model, processor = build(model_type)
    dataset = labelled_fixture(processor)
    before = mean_loss(model, dataset)
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=8, per_device_eval_batch_size=8, max_steps=12,
        learning_rate=3e-3, remove_unused_columns=False, report_to=[], save_strategy="no", logging_steps=4,
        use_cpu=True, seed=0, dataloader_num_workers=0,
    )  # fmt: skip
    trainer = Trainer(
        model=model, args=args, train_dataset=dataset, eval_dataset=dataset,
        compute_metrics=make_compute_metrics(model.config.id2label),
    )  # fmt: skip
    trainer.train()
    assert mean_loss(model, dataset) < before
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["eval_auc_macro"] <= 1.0
    assert {f"eval_auc_{name}" for name in CHESTXRAY14_LABELS} <= set(metrics)


@pytest.mark.parametrize("model_type", IMAGE_CLASSIFIERS)
def test_lora_trains_only_adapters_and_reloads_exactly(model_type: str, tmp_path: Path) -> None:
    from peft import LoraConfig, PeftModel, get_peft_model

    model, processor = build(model_type)
    save(model, processor, tmp_path / "base")
    model = AutoModelForImageClassification.from_pretrained(tmp_path / "base")  # as a user starts from a checkpoint
    targets = list(ARCHITECTURES[model_type].lora_target_modules)
    assert targets, f"{model_type} documents no LoRA target modules"
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, modules_to_save=["classifier"]))
    trainable = [name for name, param in lora.named_parameters() if param.requires_grad]
    assert trainable and all("lora_" in name or "classifier" in name for name in trainable)
    frozen_before = {n: p.detach().clone() for n, p in lora.named_parameters() if not p.requires_grad}
    dataset = labelled_fixture(processor)
    batch = dataset[:8]
    optimizer = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-2)
    # BatchNorm running statistics are buffers of the frozen base model, not part of an adapter: train with
    # them fixed (eval mode) so that base + adapter reproduces the trained model (documented in the README).
    lora.eval()
    for _ in range(3):
        optimizer.zero_grad()
        lora(pixel_values=batch["pixel_values"], labels=batch["labels"]).loss.backward()
        optimizer.step()
    assert all(torch.equal(p, frozen_before[n]) for n, p in lora.named_parameters() if n in frozen_before)
    lora.eval()
    with torch.no_grad():
        expected = lora(pixel_values=batch["pixel_values"]).logits
    lora.save_pretrained(tmp_path / "adapter")
    base = AutoModelForImageClassification.from_pretrained(tmp_path / "base")
    reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    with torch.no_grad():
        reloaded_logits = reloaded(pixel_values=batch["pixel_values"]).logits
    # The adapter's weights come back bit-identical (checked below); PEFT rebuilds the LoRA layers, and the
    # logits agree to float32 rounding rather than bit for bit.
    torch.testing.assert_close(reloaded_logits, expected, rtol=0, atol=1e-6)
    trained = {n: p for n, p in lora.named_parameters() if p.requires_grad}
    restored = dict(reloaded.named_parameters())
    assert all(torch.equal(value, restored[name]) for name, value in trained.items())


@pytest.mark.parametrize("model_type", IMAGE_CLASSIFIERS)
def test_gradient_checkpointing_still_trains(model_type: str) -> None:
    """Both entry points (transformers 5.23 renames it "activation checkpointing") switch timm's checkpointing on."""
    model, processor = build(model_type)
    entry = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    entry()
    assert any(getattr(module, "grad_checkpointing", False) for module in model.modules())
    # transformers' own flag too (PEFT and Trainer read it): `is_activation_checkpointing` from 5.23, before it
    # `is_gradient_checkpointing`.
    flag = (
        "is_activation_checkpointing"
        if hasattr(type(model), "is_activation_checkpointing")
        else "is_gradient_checkpointing"
    )
    assert getattr(model, flag)
    model.train()
    batch = labelled_fixture(processor)[:4]
    loss = model(pixel_values=batch["pixel_values"], labels=batch["labels"]).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad and p.ndim > 1)
    (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()
    assert not any(getattr(module, "grad_checkpointing", False) for module in model.modules())
    assert not getattr(model, flag)


@pytest.mark.parametrize("model_type", IMAGE_CLASSIFIERS)
def test_wrong_input_shapes_raise_clear_errors(model_type: str) -> None:
    model, processor = build(model_type)
    size = processed_fixture_batch(processor, 1).shape[-1]
    with pytest.raises(ValueError, match="pixel_values"):
        model(pixel_values=torch.randn(1, 2, size, size))
    with pytest.raises(ValueError, match="labels"):
        model(pixel_values=processed_fixture_batch(processor, 1), labels=torch.zeros(1, 3))


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_every_model_refuses_an_input_of_another_size_by_name(model_type: str) -> None:
    """A tiny model fed the paper preset's 224-px input (the default processor's) says what it expects, the same
    way for every architecture, before anything reaches the backbone."""
    model = hf_cxr.build_model(model_type, "tiny").eval()
    expected = model.config.pixel_values_shape
    paper = hf_cxr.build_config(model_type, "paper").pixel_values_shape
    wanted = ", ".join("slices" if size is None else str(size) for size in expected)
    with pytest.raises(ValueError, match=re.escape(f"pixel_values must be [batch, {wanted}], got (2, {paper[0]}")):
        extra = {"clinical_values": torch.zeros(2, 7)} if model_type == "mmcaf_net" else {}
        model(pixel_values=torch.zeros(2, *(12 if size is None else size for size in paper)), **extra)


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_a_misspelled_config_field_is_refused_by_name(model_type: str) -> None:
    """`build_model`/`build_config` overrides (and so a recipe's `model.overrides`) must name config fields: a typo
    would otherwise be stored in config.json and never read. `labels` is taken and turned into id2label."""
    with pytest.raises(ValueError, match=r"has no field image_sise \(did you mean image_size\?\)"):
        hf_cxr.build_config(model_type, "tiny", image_sise=32)
    with pytest.raises(ValueError, match="has no field not_a_field"):
        hf_cxr.build_model(model_type, "tiny", not_a_field=1)
    if model_type == "cr_msnet":  # a field holding the name's words beats the closest spelling (num_channels)
        with pytest.raises(ValueError, match=r"has no field num_heads \(did you mean num_attention_heads\?\)"):
            hf_cxr.build_config(model_type, "tiny", num_heads=4)
    # A method's or a read-only property's name is no field either: `to_dict=1` would replace the method.
    for name in ("to_dict", "pixel_values_shape"):
        with pytest.raises(ValueError, match=f"has no field {name}"):
            hf_cxr.build_config(model_type, "tiny", **{name: 1})
    assert hf_cxr.build_config(model_type, "tiny", labels=["a", "b"]).id2label == {0: "a", 1: "b"}
    assert hf_cxr.build_config(model_type, "tiny", num_labels=4).num_labels == 4  # a settable property


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_a_config_value_of_the_wrong_kind_is_refused_by_name(model_type: str) -> None:
    """A value of another type (`image_size="64"` built a model that refused every input), a problem type the head
    does not compute (a softmax pipeline over a sigmoid head), and labels that disagree with `num_labels` (the names
    were dropped) are refused at construction, naming the field."""
    with pytest.raises(ValueError, match=r"Field 'image_size' expected int, got str"):
        hf_cxr.build_config(model_type, "tiny", image_size="64")
    with pytest.raises(ValueError, match=r"Field 'image_size' expected int, got float"):
        hf_cxr.build_model(model_type, "tiny", image_size=64.5)
    other = {"multi_label_classification": "single_label_classification"}.get(
        hf_cxr.build_config(model_type, "tiny").problem_type, "multi_label_classification"
    )
    with pytest.raises(ValueError, match=rf"problem_type must be .*, got '{other}'"):
        hf_cxr.build_config(model_type, "tiny", problem_type=other)
    with pytest.raises(ValueError, match=r"num_labels \(3\) disagrees with the 2 labels given"):
        hf_cxr.build_config(model_type, "tiny", labels=["a", "b"], num_labels=3)
    assert hf_cxr.build_config(model_type, "tiny", classifier_dropout=0).classifier_dropout == 0  # YAML's 0 for 0.0
