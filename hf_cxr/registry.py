"""The architectures hf-cxr provides, their Auto-class registration, `build_model` and `load_model`.

Adding an architecture is one `Architecture` entry in `ARCHITECTURES`.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForVideoClassification,
    AutoProcessor,
    AutoVideoProcessor,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.image_processing_utils import BaseImageProcessor

from hf_cxr.machine import torch_device
from hf_cxr.modeling import cr_msnet, ma_msf, mmcaf_net, mxa_efficientvit, torchxrayvision


@dataclass(frozen=True)
class Architecture:
    """The classes that make up one architecture, the Auto class its task model belongs to, and what it reads."""

    config_class: type[PretrainedConfig]
    base_model_class: type[PreTrainedModel]
    task_model_class: type[PreTrainedModel]
    image_processor_class: type[BaseImageProcessor]
    task_auto_class: type = AutoModelForImageClassification
    # Module names for `peft.LoraConfig(target_modules=...)` (attention and projection layers); the classifier
    # goes in `modules_to_save`.
    lora_target_modules: tuple[str, ...] = ()
    # What the model reads: "image" (a radiograph, multi-label sigmoid findings) or "ct" (a CT slab and clinical
    # values, one softmax class per series).
    input_kind: str = "image"
    # The dataset the architecture is trained on when its labels name no label set (e.g. histology classes).
    default_training_data: str | None = None


ARCHITECTURES: dict[str, Architecture] = {
    "cr_msnet": Architecture(
        cr_msnet.CRMSNetConfig,
        cr_msnet.CRMSNetModel,
        cr_msnet.CRMSNetForImageClassification,
        cr_msnet.CRMSNetImageProcessor,
        lora_target_modules=("q_proj", "k_proj", "v_proj", "out_proj", "global_proj", "local_proj"),
    ),
    # LoRA on the backbone's pointwise convs and the fusion convs; the momentum anchor (conv_head + bn2) is left
    # out so that it stays an EMA of the online block, never a trainable adapter.
    "ma_msf": Architecture(
        ma_msf.MAMSFConfig,
        ma_msf.MAMSFModel,
        ma_msf.MAMSFForImageClassification,
        ma_msf.MAMSFImageProcessor,
        lora_target_modules=("conv_pw", "conv_pwl", "conv"),
    ),
    # LoRA on the cascaded group attention: per-head query/key/value convs (up to 4 heads) and the output
    # projection; both heads live in `classifier` (modules_to_save).
    "mxa_efficientvit": Architecture(
        mxa_efficientvit.MXAEfficientViTConfig,
        mxa_efficientvit.MXAEfficientViTModel,
        mxa_efficientvit.MXAEfficientViTForImageClassification,
        mxa_efficientvit.MXAEfficientViTImageProcessor,
        lora_target_modules=("qkvs.0.conv", "qkvs.1.conv", "qkvs.2.conv", "qkvs.3.conv", "proj.1.conv"),
    ),
    # torchxrayvision's DenseNet-121 / ResNet-50 (weights imported by `hf-cxr import-torchxrayvision`). LoRA on the
    # convolutions of the dense layers (conv1 1x1, conv2 3x3) or of the ResNet bottlenecks (conv1..conv3).
    "torchxrayvision": Architecture(
        torchxrayvision.TorchXRayVisionConfig,
        torchxrayvision.TorchXRayVisionModel,
        torchxrayvision.TorchXRayVisionForImageClassification,
        torchxrayvision.TorchXRayVisionImageProcessor,
        lora_target_modules=("conv1", "conv2", "conv3"),
    ),
    # 3D CT slab [B, 1, D, H, W] + 7 clinical values: not an image classifier (the 2D contract does not apply).
    # A CT slab is a clip of slices, so the classifier sits under AutoModelForVideoClassification, the existing
    # Auto class whose name a saved auto_map can carry for trust_remote_code loading without hf-cxr. Its processor
    # (a BaseImageProcessor reading DICOM series and clinical records) is also the AutoProcessor.
    "mmcaf_net": Architecture(
        mmcaf_net.MMCAFNetConfig,
        mmcaf_net.MMCAFNetModel,
        mmcaf_net.MMCAFNetForCTClassification,
        mmcaf_net.MMCAFNetProcessor,
        task_auto_class=AutoModelForVideoClassification,
        lora_target_modules=("q_proj", "k_proj", "v_proj", "proj_a", "proj_b"),
        input_kind="ct",
        default_training_data="lung_pet_ct_dx",
    ),
}
IMAGE_MODEL_TYPES = tuple(name for name, architecture in ARCHITECTURES.items() if architecture.input_kind == "image")
CT_MODEL_TYPES = tuple(name for name, architecture in ARCHITECTURES.items() if architecture.input_kind == "ct")


def is_ct_model(model_type: str | None) -> bool:
    """Whether `model_type` reads CT slabs and clinical values (MMCAF-Net) rather than radiographs."""
    return model_type in CT_MODEL_TYPES


def register_architectures() -> None:
    """Register every architecture with the Auto classes and mark it for remote-code saving.

    After this, `AutoModel*.from_pretrained` finds hf-cxr models without `trust_remote_code`, and
    `save_pretrained` writes an `auto_map` plus the model's source so the folder also loads without hf-cxr.
    """
    for model_type, arch in ARCHITECTURES.items():
        AutoConfig.register(model_type, arch.config_class, exist_ok=True)
        AutoModel.register(arch.config_class, arch.base_model_class, exist_ok=True)
        arch.task_auto_class.register(arch.config_class, arch.task_model_class, exist_ok=True)
        AutoImageProcessor.register(
            arch.config_class, image_processor_classes={"torchvision": arch.image_processor_class}, exist_ok=True
        )
        # The pipeline factory also looks for a video processor and, finding our image processor's auto_map,
        # would ask on stdin whether to trust remote code; registering "no video processor" for our config
        # tells it the model type is known locally, so nothing prompts.
        _register_no_video_processor(arch.config_class)
        arch.config_class.register_for_auto_class()
        arch.base_model_class.register_for_auto_class("AutoModel")
        arch.task_model_class.register_for_auto_class(arch.task_auto_class.__name__)
        arch.image_processor_class.register_for_auto_class("AutoImageProcessor")
    AutoProcessor.register(mmcaf_net.MMCAFNetConfig, mmcaf_net.MMCAFNetProcessor, exist_ok=True)


def _register_no_video_processor(config_class: type) -> None:
    """Map `config_class` to "no video processor", in whichever form the installed transformers takes it."""
    if "video_processor_classes" in inspect.signature(AutoVideoProcessor.register).parameters:  # >= 5.2x
        AutoVideoProcessor.register(config_class, video_processor_classes={"torchvision": None}, exist_ok=True)
    else:
        AutoVideoProcessor.register(config_class, None, exist_ok=True)


def _architecture(model_type: str) -> Architecture:
    if model_type not in ARCHITECTURES:
        raise ValueError(f"unknown model_type {model_type!r}; hf-cxr provides {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[model_type]


def build_config(model_type: str, preset: str = "paper", **overrides: Any) -> PretrainedConfig:
    """The config of `model_type` at a preset (`paper`: the published configuration, `tiny`: CPU seconds)."""
    return _architecture(model_type).config_class.from_preset(preset, **overrides)


def build_model(model_type: str, preset: str = "paper", **overrides: Any) -> PreTrainedModel:
    """A freshly initialised task model (e.g. `...ForImageClassification`), random unless a `*backbone_weights`
    override asks for timm's pretrained backbone weights (read through huggingface_hub; see the config docstrings).

    `overrides` set config fields, e.g. `labels=[...]` for your own findings or `loss="asymmetric"`.
    """
    return _architecture(model_type).task_model_class(build_config(model_type, preset, **overrides))


def build_image_processor(model_type: str, preset: str = "paper", **overrides: Any) -> BaseImageProcessor:
    """The image processor that matches `build_model(model_type, preset)` (its input size and channels)."""
    config = build_config(model_type, preset)
    defaults = {"size": config.image_size, "num_channels": config.num_channels}
    return _architecture(model_type).image_processor_class(**{**defaults, **overrides})


def model_source(source: str | os.PathLike) -> str:
    """`source` as `from_pretrained` takes it: a saved model folder, or a Hub id whose files are in the local Hugging
    Face cache. hf-cxr never downloads a model.

    Raises `FileNotFoundError` saying which it is not: a path that is not a folder holding `config.json`, or a name
    that is neither a local folder nor an id in the cache (with the cache's location and how to fill it).
    """
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"'{text}' is a folder but not a saved model (it has no config.json)")
        return str(path)
    from huggingface_hub import constants, try_to_load_from_cache

    looks_like_id = text.count("/") <= 1 and not text.startswith((".", "/", "~")) and not path.suffix
    if looks_like_id and isinstance(try_to_load_from_cache(text, "config.json"), str):
        return text
    raise FileNotFoundError(
        f"'{text}' is neither a local model folder nor a model id in the Hugging Face cache ({constants.HF_HUB_CACHE});"
        " hf-cxr never downloads a model: `hf download ORG/NAME` puts one in the cache"
    )


def load_config(source: str | os.PathLike) -> PretrainedConfig:
    """The config of a saved hf-cxr model (folder or cached Hub id, see `model_source`); `ValueError` when the folder
    holds a model that is not one of hf-cxr's architectures."""
    resolved = model_source(source)
    config = AutoConfig.from_pretrained(resolved, local_files_only=True)
    if config.model_type not in ARCHITECTURES:
        raise ValueError(f"'{os.fspath(source)}' holds a {config.model_type!r} model, not one of hf-cxr's "
                         f"{sorted(ARCHITECTURES)}")  # fmt: skip
    return config


def load_model(source: str | os.PathLike, device: str | None = None) -> tuple[PreTrainedModel, BaseImageProcessor]:
    """(task model in eval mode on `device`, its processor) from a saved folder or a cached Hub id: the one loader
    behind `hf-cxr evaluate`, `predict` and `export-onnx`. The Auto class is the architecture's task class (image
    classification, or video classification for MMCAF-Net's CT slabs); hf-cxr's own classes run, never remote
    code, and nothing is downloaded. `device` defaults to CUDA when available. Raises what `model_source` and
    `load_config` raise, and `FileNotFoundError` for a model saved without its image processor (a model's inputs are
    not guessed: save one with `processor.save_pretrained(folder)`)."""
    from transformers.utils import IMAGE_PROCESSOR_NAME, PROCESSOR_NAME

    config = load_config(source)
    resolved = model_source(source)
    if Path(resolved).is_dir() and not any(
        (Path(resolved) / name).is_file() for name in (IMAGE_PROCESSOR_NAME, PROCESSOR_NAME)
    ):
        raise FileNotFoundError(
            f"'{os.fspath(source)}' holds a model but no {IMAGE_PROCESSOR_NAME}: save its image processor beside it "
            f"(`hf_cxr.build_image_processor({config.model_type!r}, preset).save_pretrained(folder)`)"
        )
    architecture = ARCHITECTURES[config.model_type]
    model = architecture.task_auto_class.from_pretrained(resolved, local_files_only=True, trust_remote_code=False)
    processor = AutoImageProcessor.from_pretrained(resolved, local_files_only=True, trust_remote_code=False)
    return model.to(torch_device(device)).eval(), processor
