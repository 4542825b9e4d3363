"""The Accelerate training loop behind `training_scripts/train.py` and `hf-cxr train`.

One loop for every architecture and every machine: CPU, one GPU, or many GPUs/nodes under
`accelerate launch` (DDP; FSDP/DeepSpeed through Accelerate's own config), mixed precision, gradient
accumulation and an optional `torch.compile`. A recipe (YAML, see `hf_cxr.recipes`) gives the paper's
hyper-parameters: a curriculum of stages (e.g. abnormal images first, then all images with a class-balanced
loss), optimiser and schedule, augmentation, gradient clipping, model EMA and distillation.

What differs by architecture sits in small functions chosen by `model_type`: the 2D classifiers read images with
their image processor and are scored by macro AUC over findings; MMCAF-Net (3D CT + 7 clinical values) reads
converted Lung-PET-CT-Dx rows with `MMCAFNetProcessor` (one lesion-centred window per row), trains stage by stage
(`classification_head`, `frozen_parts`) with SGD and is scored per patient (max over sliding windows: AUROC, or
accuracy for four classes).

Checkpoints (`accelerator.save_state`: model, optimiser, scheduler, RNG, EMA, position in the data) are written
atomically every `checkpointing_steps`; `--resume-from-checkpoint latest` continues the same run and ends with
the same weights as an uninterrupted one. The best model on the validation split (never the test split) is
written to the output folder with `save_pretrained`, with its image processor and `metrics.json`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import yaml
from accelerate import Accelerator
from accelerate.tracking import GeneralTracker
from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, ProjectConfiguration, set_seed
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from torchvision.transforms import v2
from tqdm.auto import tqdm
from transformers.utils import logging as transformers_logging

from hf_cxr.callbacks import update_model_anchor
from hf_cxr.data._common import load_converted, read_conversion_report, strict_json
from hf_cxr.data.transforms import AUGMENTATION_SEED, eval_transform, seeded, train_transform
from hf_cxr.evaluation.single_label import (
    dataset_class_indices,
    score_single_label,
)
from hf_cxr.inference.ct import CLINICAL_COLUMNS, ct_input_rows, predict_ct_windows
from hf_cxr.labels import LABEL_SETS
from hf_cxr.losses import build_loss_from_config
from hf_cxr.metrics import macro_roc_auc, per_class_roc_auc
from hf_cxr.recipes import apply_overrides, load_recipe
from hf_cxr.registry import CT_MODEL_TYPES, build_image_processor, build_model, is_ct_model, load_model

CHECKPOINT_PREFIX = "step-"
LOSS_FIELDS = (
    "loss", "focal_gamma", "class_balance_mode", "class_balance_beta",
    "asymmetric_gamma_pos", "asymmetric_gamma_neg", "asymmetric_clip",
)  # fmt: skip


@dataclass
class Stage:
    """One curriculum stage: which images, which loss, how long, at which learning rate."""

    name: str
    exclude_no_finding: bool = False
    loss_fields: dict[str, Any] = field(default_factory=dict)
    epochs: float = 1.0
    learning_rate: float | None = None
    classification_head: str | None = None  # MMCAF-Net: which head's logits are trained (image, table, fused)
    frozen_parts: list[str] | None = None  # MMCAF-Net: parts frozen (and kept in eval mode) during the stage
    steps: int = 0  # optimizer steps, resolved once the data is known


class TrainingProgress:
    """The position in the run and the best validation result so far (saved as JSON in each checkpoint)."""

    def __init__(self) -> None:
        self.step = 0
        self.best_metric = -math.inf
        self.best_step = -1
        self.history: list[dict[str, Any]] = []
        self.seconds = 0.0  # wall-clock training time over every session of the run, validation included
        self._clock: tuple[float, float] | None = None

    def start_clock(self) -> None:
        self._clock = (time.perf_counter(), self.seconds)

    def tick(self) -> None:
        if self._clock is not None:
            self.seconds = self._clock[1] + time.perf_counter() - self._clock[0]

    def state_dict(self) -> dict[str, Any]:
        self.tick()
        # Strict JSON: no validation yet is `null`, not -Infinity.
        best = self.best_metric if math.isfinite(self.best_metric) else None
        return {"step": self.step, "best_metric": best, "best_step": self.best_step,
                "history": self.history, "seconds": round(self.seconds, 3)}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.best_step = state["step"], state["best_step"]
        self.best_metric = -math.inf if state["best_metric"] is None else float(state["best_metric"])
        self.history = state["history"]
        self.seconds = float(state.get("seconds", 0.0))  # absent from checkpoints written before it was recorded
        self.start_clock()


class CSVTracker(GeneralTracker):
    """Accelerate tracker writing one `metrics.csv` row per logged step (no extra dependency)."""

    name = "csv"
    requires_logging_directory = True
    main_process_only = True

    def __init__(self, run_name: str, logging_dir: str | os.PathLike) -> None:
        super().__init__()
        self.path = Path(logging_dir) / run_name / "metrics.csv"  # created on the first write

    @property
    def tracker(self) -> Path:
        return self.path

    def store_init_configuration(self, values: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        (self.path.parent / "config.json").write_text(json.dumps(values, indent=2, default=str, allow_nan=False))

    def log(self, values: dict, step: int | None = None, **kwargs: Any) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            if handle.tell() == 0:  # a new file (a resumed run appends to the one it has)
                handle.write("step,name,value\n")
            for key, value in values.items():
                handle.write(f"{step},{key},{value}\n")


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The `train.py` / `hf-cxr train` command line; flags override the recipe."""
    parser.add_argument("--model", required=True, help="model_type: cr_msnet, ma_msf, mxa_efficientvit, mmcaf_net")
    parser.add_argument("--preset", default=None, help="paper (the published configuration) or tiny")
    parser.add_argument("--dataset", required=True, help="a converted dataset folder (hf-cxr convert) or a Hub id")
    parser.add_argument("--output-dir", required=True, help="the final model, checkpoints and logs go here")
    parser.add_argument("--recipe", default=None, help="recipe name in training_scripts/recipes or a YAML path")
    parser.add_argument("--max-steps", type=int, default=None, help="total optimizer steps (overrides epochs)")
    parser.add_argument(
        "--resume-from-checkpoint",
        default=None,
        help="a checkpoint folder, or 'latest' (the newest in OUTPUT_DIR/checkpoints; none: start)",
    )
    parser.add_argument(
        "--overwrite-output-dir",
        action="store_true",
        help="start a new run in an OUTPUT_DIR that holds one (its checkpoints, logs and model go)",
    )
    parser.add_argument("--per-device-batch-size", type=int, default=None)
    parser.add_argument("--gradient-accumulation-steps", type=int, default=None)
    parser.add_argument("--learning-rate", type=float, default=None, help="overrides every stage's learning rate")
    parser.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default=None)
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--checkpointing-steps", type=int, default=500)
    parser.add_argument("--keep-checkpoints", type=int, default=2, help="how many recent checkpoints to keep")
    parser.add_argument("--eval-steps", type=int, default=None, help="validate every N steps (default: per epoch)")
    parser.add_argument("--stop-after-steps", type=int, default=None,
                        help="leave after N optimizer steps of this invocation (e.g. a preemptible job's slot); "
                        "resume with --resume-from-checkpoint latest")  # fmt: skip
    parser.add_argument("--num-workers", type=int, default=0, help="data-loader worker processes")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--teacher", default=None, help="distillation teacher: local path or Hub id")
    parser.add_argument(
        "--log-with",
        default="auto",
        help="comma-separated trackers: csv, tensorboard, wandb, none; auto = csv, plus tensorboard when installed. "
        "All write under OUTPUT_DIR/logs/run",
    )
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override any recipe field, e.g. --set optimization.weight_decay=0.05")  # fmt: skip

    def backbone_weights(text: str) -> str:
        field, separator, value = text.partition("=")
        if not separator or not field.strip().endswith("backbone_weights") or not value.strip():
            raise argparse.ArgumentTypeError(f"expects FIELD=VALUE with a *backbone_weights FIELD, got {text!r}")
        return text

    parser.add_argument("--backbone-weights", action="append", default=[], type=backbone_weights,
                        metavar="FIELD=VALUE",
                        help="start a backbone from pretrained timm weights (a model.overrides entry, recorded in "
                        "recipe.yaml): FIELD is backbone_weights (ma_msf, mxa_efficientvit) or "
                        "global_backbone_weights / local_backbone_weights (cr_msnet); VALUE is true (timm's default "
                        "tag), a tag such as resnet50.a1_in1k, a local .safetensors file, or null. Hub tags are read "
                        "through huggingface_hub (HF_HUB_OFFLINE=1: from the HF cache); repeatable")  # fmt: skip
    return parser


def resolve_recipe(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe named by `--recipe` (or an empty one) with `--set` and the explicit flags applied."""
    from transformers import AutoModelForImageClassification

    from hf_cxr.registry import ARCHITECTURES

    trainable = sorted(k for k, a in ARCHITECTURES.items() if a.task_auto_class is AutoModelForImageClassification)
    trainable += sorted(CT_MODEL_TYPES)
    if args.model not in trainable:
        raise ValueError(f"train.py trains {trainable}; {args.model!r} is not one of them")
    recipe = load_recipe(args.recipe) if args.recipe else {}
    model_type = (recipe.get("model") or {}).get("model_type")
    if model_type and model_type != args.model:
        raise ValueError(f"recipe '{args.recipe}' is for model {model_type!r}, not {args.model!r}")
    recipe = apply_overrides(recipe, list(args.set))
    opt = recipe.setdefault("optimization", {})
    for flag, key in (
        ("per_device_batch_size", "batch_size"),
        ("gradient_accumulation_steps", "gradient_accumulation_steps"),
        ("mixed_precision", "mixed_precision"),
        ("seed", "seed"),
    ):
        if getattr(args, flag) is not None:
            opt[key] = getattr(args, flag)
    if args.learning_rate is not None:
        opt["learning_rate"] = args.learning_rate
        for stage in (recipe.get("curriculum") or {}).values():
            stage["learning_rate"] = args.learning_rate
    if args.teacher:
        recipe.setdefault("distillation", {}).update({"enabled": True, "teacher": args.teacher})
    _check_stage_keys(recipe, is_ct_model(args.model))
    return recipe


def _check_stage_keys(recipe: dict[str, Any], ct: bool) -> None:
    """Refuse recipe keys that the chosen architecture's path would ignore."""
    wrong = ("exclude_no_finding",) if ct else ("classification_head", "frozen_parts")
    for name, values in (recipe.get("curriculum") or {}).items():
        used = [key for key in wrong if (values or {}).get(key)]
        if used:
            raise ValueError(f"curriculum.{name}: {used} do not apply to {'CT' if ct else '2D'} models")
    if ct and (recipe.get("data") or {}).get("resize_mode"):
        raise ValueError("data.resize_mode applies to 2D models; a CT window's size is data.processor's")
    if ct and (recipe.get("distillation") or {}).get("enabled"):
        raise ValueError("distillation is implemented for the 2D classifiers only")
    if not ct:
        data = recipe.get("data") or {}
        ct_only = [f"data.{key}" for key in ("processor", "oversample_minority", "task") if data.get(key)]
        ct_only += ["augmentation.sharpen"] if (recipe.get("augmentation") or {}).get("sharpen") else []
        if ct_only:
            raise ValueError(f"{ct_only} apply to CT models (MMCAF-Net) only")


def stages_from_recipe(recipe: dict[str, Any]) -> list[Stage]:
    """The curriculum stages, in order; a recipe without a curriculum is one stage on all images."""
    opt = recipe.get("optimization") or {}
    curriculum = recipe.get("curriculum") or {"all": {"epochs": opt.get("epochs", 1)}}
    stages = []
    for name, values in curriculum.items():
        values = values or {}
        stages.append(
            Stage(
                name=name,
                exclude_no_finding=bool(values.get("exclude_no_finding", False)),
                loss_fields={key: values[key] for key in LOSS_FIELDS if key in values},
                epochs=float(values.get("epochs", opt.get("epochs", 1))),
                learning_rate=values.get("learning_rate", opt.get("learning_rate")),
                classification_head=values.get("classification_head"),
                frozen_parts=list(values["frozen_parts"]) if values.get("frozen_parts") is not None else None,
            )
        )
    return stages


def augmentation_from_recipe(section: dict[str, Any] | None) -> torch.nn.Module:
    """torchvision v2 transforms for a grey [1, H, W] image in [0, 1], from the recipe's `augmentation`."""
    section = section or {}
    steps: list[Any] = []

    def maybe(transform: Any, p: float) -> Any:
        return transform if p >= 1.0 else v2.RandomApply([transform], p=p)

    if (crop := section.get("random_resized_crop")) and crop.get("p", 1.0) > 0:
        # Crop a region and scale it back to the input size; the processor resizes to the model's size after.
        steps.append(_ResizedCrop(tuple(crop.get("scale", (0.8, 1.0))), tuple(crop.get("ratio", (0.75, 4 / 3)))))
    if (flip := section.get("horizontal_flip")) and flip.get("p", 0) > 0:
        steps.append(v2.RandomHorizontalFlip(p=flip["p"]))
    if (rotate := section.get("rotate")) and rotate.get("p", 1.0) > 0:
        steps.append(maybe(v2.RandomRotation(rotate["degrees"]), rotate.get("p", 1.0)))
    if (affine := section.get("affine")) and affine.get("p", 1.0) > 0:
        transform = v2.RandomAffine(
            degrees=0, translate=tuple(affine.get("translate", (0, 0))), scale=tuple(affine.get("scale", (1, 1))),
            shear=affine.get("shear", 0) or None,
        )  # fmt: skip
        steps.append(maybe(transform, affine.get("p", 1.0)))
    if (elastic := section.get("elastic")) and elastic.get("p", 1.0) > 0:
        transform = v2.ElasticTransform(alpha=elastic.get("alpha", 50.0), sigma=elastic.get("sigma", 5.0))
        steps.append(maybe(transform, elastic.get("p", 1.0)))
    if (blur := section.get("gaussian_blur")) and blur.get("p", 1.0) > 0:
        transform = v2.GaussianBlur(blur.get("kernel_size", 3), sigma=tuple(blur.get("sigma", (0.1, 1.0))))
        steps.append(maybe(transform, blur.get("p", 1.0)))
    for unsupported in ("mixup", "cutmix"):
        if section.get(unsupported):
            raise ValueError(f"augmentation.{unsupported} is not supported by train.py; set it to 0")
    return v2.Compose(steps) if steps else v2.Identity()


class _ResizedCrop(torch.nn.Module):
    """RandomResizedCrop back to the input's own size (the processor resizes to the model's size later)."""

    def __init__(self, scale: tuple[float, float], ratio: tuple[float, float]) -> None:
        super().__init__()
        self.scale, self.ratio = scale, ratio

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return v2.RandomResizedCrop(tuple(image.shape[-2:]), scale=self.scale, ratio=self.ratio)(image)


# ------------------------------------------------------------------------------------------- CT (MMCAF-Net)


def ct_augmentation_from_recipe(section: dict[str, Any] | None) -> torch.nn.Module:
    """Augmentation of one processed CT window [1, D, H, W] (already windowed and normalised) from the recipe:
    `rotate` (every slice by the same in-plane angle; the fill is the window's darkest value) and `sharpen`
    (an unsharp blend `x + alpha (sharp(x) - x)`, alpha uniform in the given range)."""
    section = dict(section or {})
    if section.pop("normalization", "processor") != "processor":
        raise ValueError("augmentation.normalization must be 'processor' (windowing is the processor's)")
    rotate, sharpen = section.pop("rotate", None), section.pop("sharpen", None)
    unsupported = sorted(key for key, value in section.items() if value)
    if unsupported:
        raise ValueError(f"augmentation {unsupported} is not supported for CT windows; use rotate and sharpen")
    if rotate and rotate.get("plane", "axial") != "axial":
        raise ValueError("augmentation.rotate.plane must be 'axial' for CT windows")
    return _CTAugmentation(rotate or {}, sharpen or {})


class _CTAugmentation(torch.nn.Module):
    """Random axial rotation and sharpening of a [1, D, H, W] window (see `ct_augmentation_from_recipe`)."""

    def __init__(self, rotate: dict[str, Any], sharpen: dict[str, Any]) -> None:
        super().__init__()
        self.degrees = float(rotate.get("degrees", 0.0))
        self.rotate_p = float(rotate.get("p", 1.0)) if self.degrees else 0.0
        self.alpha = tuple(float(a) for a in sharpen.get("alpha", (0.0, 0.0)))
        self.sharpen_p = float(sharpen.get("p", 1.0)) if max(self.alpha) > 0 else 0.0

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        if self.rotate_p and torch.rand(()) < self.rotate_p:
            angle = float(torch.empty(()).uniform_(-self.degrees, self.degrees))
            window = v2.functional.rotate(window, angle, fill=float(window.min()))
        if self.sharpen_p and torch.rand(()) < self.sharpen_p:
            alpha = float(torch.empty(()).uniform_(*self.alpha))
            kernel = torch.tensor([[0.0, -1.0, 0.0], [-1.0, 5.0, -1.0], [0.0, -1.0, 0.0]]).view(1, 1, 3, 3)
            slices = window.reshape(-1, 1, *window.shape[-2:])
            sharp = torch.nn.functional.conv2d(torch.nn.functional.pad(slices, (1, 1, 1, 1), mode="replicate"), kernel)
            low, high = window.min(), window.max()
            window = (window + alpha * (sharp.reshape(window.shape) - window)).clamp(low, high)
        return window


class SeededShuffleSampler(torch.utils.data.Sampler):
    """A new order of `size` rows every epoch, each draw with its own augmentation seed: yields (row, seed).

    Both come from (seed, epoch) alone, never from torch's global generator. A run resumed in the middle of an epoch
    (Accelerate skips the batches already done at the sampler level) then gets the rows of the uninterrupted run, in
    its order and augmented in its way, with or without DataLoader workers; the global generator, which dropout
    draws from, is the one the checkpoint restored. The loop calls `set_epoch` (through Accelerate's DataLoader)
    before each epoch.
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = np.random.default_rng([self.seed, self.epoch, 0]).permutation(self.size)
        seeds = np.random.SeedSequence([self.seed, self.epoch, 1]).generate_state(self.size)
        return iter(zip(order.tolist(), seeds.tolist(), strict=True))


class TrainingRows(torch.utils.data.Dataset):
    """A 2D training split read through `transform` (`train_transform`) in batches of the (row, augmentation seed)
    keys `SeededShuffleSampler` yields; the seeds reach the transform as its `AUGMENTATION_SEED` column."""

    def __init__(self, split: datasets.Dataset, transform: Callable[[dict[str, Any]], dict[str, torch.Tensor]]) -> None:
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitems__(self, keys: list[tuple[int, int]]) -> list[dict[str, torch.Tensor]]:
        batch = self.split[[row for row, _ in keys]]
        batch[AUGMENTATION_SEED] = [seed for _, seed in keys]
        output = self.transform(batch)
        return [{name: value[index] for name, value in output.items()} for index in range(len(keys))]

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        return self.__getitems__([key])[0]


class CTTrainingWindows(torch.utils.data.Dataset):
    """Training rows of a converted Lung-PET-CT-Dx split as model inputs: one window per row (the processor's
    `slice_selection`, lesion-centred in the recipe), the encoded clinical values and the model's class index.
    `indices` lists the rows to serve (a row repeated by oversampling appears several times)."""

    def __init__(
        self, split: datasets.Dataset, processor: Any, classes: np.ndarray, indices: Sequence[int],
        augment: torch.nn.Module,
    ) -> None:  # fmt: skip
        self.rows = ct_input_rows(split)
        self.processor, self.classes, self.indices, self.augment = processor, classes, list(indices), augment

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        """`key`: a position in `indices`, or (position, augmentation seed) as `SeededShuffleSampler` yields."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        row = self.indices[index]
        inputs = self.processor(self.rows[row], return_tensors="pt")
        return {
            "pixel_values": seeded(self.augment, inputs["pixel_values"][0], seed),
            "clinical_values": inputs["clinical_values"][0],
            "labels": torch.tensor(int(self.classes[row]), dtype=torch.long),
        }


def oversampled_indices(classes: np.ndarray, label_names: Sequence[str], section: dict[str, Any] | None,
                        seed: int) -> list[int]:  # fmt: skip
    """Every training row, plus random repeats of `section["class"]`'s rows until it has `target_count` rows
    (`data.oversample_minority`; the validation split is never oversampled)."""
    indices = list(range(len(classes)))
    if not section:
        return indices
    if not section.get("train_only", True):
        raise ValueError("data.oversample_minority.train_only must be true: validation is never oversampled")
    name = section["class"]
    if name not in label_names:
        raise ValueError(f"data.oversample_minority.class {name!r} is not one of the model's labels {label_names}")
    minority = [i for i in indices if classes[i] == list(label_names).index(name)]
    extra = int(section["target_count"]) - len(minority)
    if minority and extra > 0:
        indices += np.random.default_rng(seed).choice(minority, size=extra, replace=True).tolist()
    return indices


def build_ct_processor(model_type: str, preset: str, config: Any, section: dict[str, Any] | None,
                       train_split: datasets.Dataset) -> Any:  # fmt: skip
    """MMCAF-Net's processor from `data.processor`; its window must match the model's input (`image_size`,
    `num_slices`), and `fit_clinical_statistics: train` fits the clinical ranges and fill values on the training
    split (saved with the model)."""
    options = dict(section or {})
    fit = options.pop("fit_clinical_statistics", None)
    options = {"num_slices": config.num_slices, **options}
    processor = build_image_processor(model_type, preset=preset, **options)
    if processor.size["height"] != config.image_size or processor.num_slices != config.num_slices:
        raise ValueError(
            f"data.processor gives {processor.num_slices} x {processor.size['height']} windows but the '{preset}' "
            f"model takes {config.num_slices} x {config.image_size}: set data.processor.size / num_slices"
        )
    if fit not in (None, False, "train"):
        raise ValueError(f"data.processor.fit_clinical_statistics must be 'train' or absent, got {fit!r}")
    if fit == "train":
        processor.fit_clinical_statistics(train_split.select_columns(list(CLINICAL_COLUMNS)))
    return processor


def evaluate_ct(model: Any, processor: Any, split: datasets.Dataset, section: dict[str, Any] | None,
                device: torch.device) -> dict[str, float]:  # fmt: skip
    """Patient-level validation numbers (`evaluation.patient_level`: sliding windows, max per patient) and the
    window-level cross-entropy as `loss`; the model is put back in training mode."""
    section = section or {}
    windows = section.get("patient_level") or {}
    names = [model.config.id2label[i] for i in sorted(model.config.id2label)]
    try:
        probabilities, rows = predict_ct_windows(
            model, processor, split, device=device, slice_selection=windows.get("windows"),
            window_stride=windows.get("window_stride"),
        )  # fmt: skip
    finally:
        model.train()
    classes = dataset_class_indices(split, names)[rows]
    patients = np.asarray(split.select_columns(["patient_id"])["patient_id"])[rows]
    scores = score_single_label(
        probabilities, classes, patients.tolist(), names, aggregate=windows.get("aggregate", "max"), n_bootstrap=0,
        positive_class=section.get("positive_class") if len(names) == 2 else None,
    )  # fmt: skip
    picked = np.clip(probabilities[np.arange(len(rows)), classes], 1e-12, None)
    return {"loss": float(-np.log(picked).mean()), **scores.metrics}


def _selection_metric(metrics: dict[str, float], name: str | None, ct: bool) -> str:
    """The validation number that picks the best model: `evaluation.select_best_by`, or per architecture the
    macro AUC (2D), the patient AUROC (two CT classes) or accuracy (more CT classes)."""
    if name is None:
        name = "auc_macro" if not ct else ("auroc" if "auroc" in metrics else "accuracy")
    if ct and name == "auroc" and "auroc" not in metrics:
        name = "auroc_macro"  # four classes: the macro mean of one-vs-rest AUROCs
    if name not in metrics:
        raise ValueError(f"evaluation.select_best_by {name!r} is not a validation number ({sorted(metrics)})")
    return name


def build_optimizer(opt: dict[str, Any], parameters: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """`optimization.optimizer`: adamw (default) or sgd (with `momentum`); base lr 1.0, scaled by `lr_at`."""
    name = str(opt.get("optimizer", "adamw")).lower()
    weight_decay = float(opt.get("weight_decay", 0.01))
    if name == "adamw":
        return torch.optim.AdamW(
            parameters, lr=1.0, weight_decay=weight_decay, betas=tuple(opt.get("betas", (0.9, 0.999))),
            eps=float(opt.get("eps", 1e-8)),
        )  # fmt: skip
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=1.0, momentum=float(opt.get("momentum", 0.0)), weight_decay=weight_decay)
    raise ValueError(f"optimization.optimizer must be 'adamw' or 'sgd', got {name!r}")


def lr_at(step: int, stages: Sequence[Stage], opt: dict[str, Any], steps_per_epoch: Sequence[int]) -> float:
    """The learning rate after `step` optimizer steps: per stage, linear warm-up (first stage), cosine decay
    to `min_learning_rate`, then `cooldown_epochs` at the minimum."""
    min_lr = float(opt.get("min_learning_rate", 0.0))
    start = 0
    for index, stage in enumerate(stages):
        if step < start + stage.steps or index == len(stages) - 1:
            within = step - start
            base = float(stage.learning_rate)
            warmup = round(float(opt.get("warmup_epochs", 0)) * steps_per_epoch[index]) if index == 0 else 0
            cooldown = round(float(opt.get("cooldown_epochs", 0)) * steps_per_epoch[index])
            warmup, cooldown = min(warmup, stage.steps // 2), min(cooldown, stage.steps // 2)
            if within < warmup:
                warm_start = float(opt.get("warmup_learning_rate", 0.0))
                return warm_start + (base - warm_start) * (within + 1) / warmup
            decay_steps = max(stage.steps - warmup - cooldown, 1)
            progress = min(max(within - warmup, 0) / decay_steps, 1.0)
            if opt.get("scheduler", "cosine") == "constant":
                return base
            return min_lr + (base - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
        start += stage.steps
    raise AssertionError("unreachable")


def _label_counts(split: datasets.Dataset) -> tuple[list[int], int]:
    labels = np.asarray(split.with_format("numpy")["labels"], dtype=np.float32)
    return (labels == 1).sum(axis=0).astype(int).tolist(), int(labels.shape[0])


def _no_finding_mask(split: datasets.Dataset) -> list[bool]:
    labels = np.asarray(split.with_format("numpy")["labels"], dtype=np.float32)
    return (labels != 1).all(axis=1).tolist()


# Recipe `data` keys that describe how the dataset was converted, and the converter setting each must equal.
CONVERSION_SETTINGS = {"uncertain_labels": "uncertain", "task": "task"}
VIEWS = ("frontal", "lateral")


def apply_data_section(
    recipe: dict[str, Any], dataset: str, data: datasets.DatasetDict, label_names: Sequence[str]
) -> tuple[datasets.Dataset, datasets.Dataset, dict[str, Any]]:
    """(training split, validation split, the record of the data used) for the recipe's `data` section.

    Every key takes effect or is checked: the splits are picked by `train_split`/`validation_split`; `views`
    keeps those views (CheXpert's `frontal_lateral`) in both splits; `dataset`, `split_protocol`,
    `uncertain_labels` and `task` must equal what `hf-cxr convert` recorded in the dataset's conversion report,
    and `labels` must name the model's label set. A mismatch raises `ValueError` naming the key, both values and
    the fix. A key the recipe leaves out is filled in from the report, so `recipe.yaml` states the policy used. A
    dataset without a conversion report (a Hub id, a hand-built DatasetDict) cannot be checked: the keys that
    could not be are listed in the record (`unverified`) and printed.
    """
    section = recipe.setdefault("data", {})
    train_name = section.get("train_split", "train")
    validation_name = section.get("validation_split", "validation")
    report = read_conversion_report(dataset)
    settings = (report or {}).get("settings") or {}
    converted = (report or {}).get("dataset")

    def refuse(key: str, wanted: Any, found: Any, fix: str) -> None:
        raise ValueError(f"recipe data.{key} is {wanted!r} but {found}; {fix}")

    if section.get("dataset") and converted and section["dataset"] != converted:
        refuse("dataset", section["dataset"], f"'{dataset}' is a converted {converted} dataset", "train on the "
               f"dataset the recipe is for, or pass --set data.dataset={converted}")  # fmt: skip
    if converted and not section.get("dataset"):
        section["dataset"] = converted
    if converted in LABEL_SETS and list(LABEL_SETS[converted]) != list(label_names):
        raise ValueError(f"'{dataset}' is a converted {converted} dataset (its labels are {converted}'s findings) but "
                         f"the model predicts {list(label_names)}; build it with {converted}'s labels (the recipe's "
                         "model.overrides.labels)")  # fmt: skip
    if section.get("labels"):
        if section["labels"] not in LABEL_SETS:
            refuse("labels", section["labels"], f"hf-cxr knows the label sets {sorted(LABEL_SETS)}", "name one")
        if list(LABEL_SETS[section["labels"]]) != list(label_names):
            refuse("labels", section["labels"], f"the model predicts {list(label_names)}", "build the model with "
                   "that label set (model.overrides.labels) or change data.labels")  # fmt: skip
    for key, setting in CONVERSION_SETTINGS.items():
        if setting not in settings:
            continue
        if key in section and section[key] != settings[setting]:
            refuse(key, section[key], f"'{dataset}' was converted with {setting}={settings[setting]!r}",
                   f"convert it again with that setting, or pass --set data.{key}={settings[setting]}")  # fmt: skip
        section[key] = settings[setting]
    protocol = section.get("split_protocol")
    if protocol is not None and "split_protocol" in settings and protocol != settings["split_protocol"]:
        used = settings["split_protocol"]
        flag = str(protocol).replace("_", "-")
        refuse("split_protocol", protocol, f"'{dataset}' was split with {used!r}",
               f"convert with --split-protocol {flag}, or pass --set data.split_protocol={used}")  # fmt: skip
    if isinstance(protocol, dict) and "fractions" in settings:
        wanted = {"fractions": protocol.get("fractions"), "seed": protocol.get("seed")}
        found = {"fractions": settings.get("fractions"), "seed": settings.get("seed")}
        if wanted != found:
            refuse("split_protocol", wanted, f"'{dataset}' was split with {found}", "convert with the recipe's "
                   "fractions and seed, or change data.split_protocol")  # fmt: skip
    if protocol is None and "split_protocol" in settings:
        section["split_protocol"] = settings["split_protocol"]
    if train_name not in data or validation_name not in data:
        missing = [name for name in (train_name, validation_name) if name not in data]
        raise ValueError(f"dataset '{dataset}' has no split {missing} (it has {sorted(data)})")
    train_split, validation_split = data[train_name], data[validation_name]
    if section.get("views"):
        train_split = _keep_views(train_split, section["views"], dataset, train_name, every_view=True)
        validation_split = _keep_views(validation_split, section["views"], dataset, validation_name, every_view=False)
    checkable = ("dataset", "split_protocol", *CONVERSION_SETTINGS)
    unverified = [f"data.{key}" for key in checkable if report is None and section.get(key) is not None]
    if unverified:
        print(f"note: '{dataset}' has no conversion report (it was not made by `hf-cxr convert`), so "
              f"{', '.join(unverified)} could not be checked against it")  # fmt: skip
    record = {
        "source": str(dataset),
        "name": converted,
        "train_split": train_name,
        "validation_split": validation_name,
        "rows": {train_name: train_split.num_rows, validation_name: validation_split.num_rows},
        "conversion": settings or None,
        "unverified": unverified,
    }
    return train_split, validation_split, record


def _keep_views(
    split: datasets.Dataset, views: Sequence[str], dataset: str, name: str, every_view: bool
) -> datasets.Dataset:
    """The rows of `split` whose `frontal_lateral` is one of `views` (data.views); with `every_view` (the training
    split) each view asked for must be there."""
    wanted = [str(view).lower() for view in views]
    unknown = sorted(set(wanted) - set(VIEWS))
    if unknown:
        raise ValueError(f"recipe data.views names {unknown}; the views are {list(VIEWS)}")
    if "frontal_lateral" not in split.column_names:
        raise ValueError(f"recipe data.views is {list(views)} but the '{name}' split of '{dataset}' has no "
                         "`frontal_lateral` column to select views by; remove data.views")  # fmt: skip
    found = [str(view).lower() for view in split["frontal_lateral"]]
    absent = [view for view in wanted if view not in found]
    if absent and every_view:
        raise ValueError(f"recipe data.views asks for {absent} views but the '{name}' split of '{dataset}' has none "
                         "(was it converted with --frontal-only?)")  # fmt: skip
    return split.select([index for index, view in enumerate(found) if view in wanted])


def _evaluate(accelerator: Accelerator, model: torch.nn.Module, loader: DataLoader, id2label: dict) -> dict:
    """Validation loss and AUCs from every process's predictions (`gather_for_metrics` drops the padding)."""
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
    keep = labels != -100
    micro = math.nan
    if keep.any() and np.unique(labels[keep]).size == 2:
        from sklearn.metrics import roc_auc_score

        micro = float(roc_auc_score(labels[keep], probabilities[keep]))
    return {"loss": float(torch.stack(losses).mean()), "auc_macro": macro_roc_auc(per_class), "auc_micro": micro,
            **{f"auc_{name}": value for name, value in per_class.items()}}  # fmt: skip


TRAINING_STATE = "training_state.json"
EMA_WEIGHTS = "ema.safetensors"


def _save_checkpoint(
    accelerator: Accelerator, checkpoints: Path, keep: int, progress: TrainingProgress, scheduler: Any, ema: Any
) -> None:
    """`save_state` (model, optimiser, RNG) plus the run's position, schedule and EMA weights (JSON and
    safetensors: no pickled objects), into a temporary folder renamed when complete, so that a crash never
    leaves a half-written checkpoint."""
    final = checkpoints / f"{CHECKPOINT_PREFIX}{progress.step:08d}"
    partial = checkpoints / f".{final.name}.partial"
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    if accelerator.is_main_process:
        state = {"progress": progress.state_dict(), "scheduler": scheduler.state_dict()}
        (partial / TRAINING_STATE).write_text(strict_json(state))
        if ema is not None:
            save_file({k: v.contiguous() for k, v in ema.module.state_dict().items()}, str(partial / EMA_WEIGHTS))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
        for old in sorted(checkpoints.glob(f"{CHECKPOINT_PREFIX}*"))[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def _load_checkpoint(
    accelerator: Accelerator, folder: Path, progress: TrainingProgress, scheduler: Any, ema: Any
) -> None:
    accelerator.load_state(str(folder))
    state = json.loads((folder / TRAINING_STATE).read_text())
    progress.load_state_dict(state["progress"])
    scheduler.load_state_dict(state["scheduler"])
    if ema is not None:
        ema.module.load_state_dict(load_file(str(folder / EMA_WEIGHTS)))


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = sorted((Path(output_dir) / "checkpoints").glob(f"{CHECKPOINT_PREFIX}*"))
    return found[-1] if found else None


def _save_model(model: Any, processor: Any, output_dir: Path, metrics: dict[str, Any], recipe: dict[str, Any]) -> None:
    """Write the model folder atomically: weights, config with remote code, processor, metrics, and the recipe
    it was trained with (`recipe.yaml`, which the model card quotes)."""
    staging = output_dir / ".model.partial"
    if staging.exists():
        shutil.rmtree(staging)
    bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()  # no "Writing model shards" bar inside the training bar
    try:
        model.save_pretrained(staging)
    finally:
        if bars:
            transformers_logging.enable_progress_bar()
    processor.save_pretrained(staging)
    (staging / "metrics.json").write_text(strict_json(metrics))
    (staging / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    for path in staging.iterdir():
        os.replace(path, output_dir / path.name)
    staging.rmdir()


def tracker_list(log_with: str, logging_dir: Path) -> list[Any] | None:
    """`--log-with` as Accelerate's `log_with`: our CSV tracker as an instance, the others by name."""
    names = [name.strip() for name in log_with.split(",") if name.strip()]
    if names == ["none"]:
        return None
    if names == ["auto"]:
        names = ["csv"] + (["tensorboard"] if importlib.util.find_spec("tensorboard") is not None else [])
    unknown = sorted(set(names) - {"csv", "tensorboard", "wandb"})
    if unknown:
        raise ValueError(f"--log-with: unknown tracker(s) {unknown}; use csv, tensorboard, wandb, auto or none")
    return [CSVTracker("run", logging_dir) if name == "csv" else name for name in names]


# What a run writes in its output folder (besides the saved model's *.py remote code).
RUN_OUTPUTS = ("checkpoints", "logs", "config.json", "model.safetensors", "preprocessor_config.json",
               "processor_config.json", "metrics.json", "recipe.yaml")  # fmt: skip


def prepare_output_dir(output_dir: Path, resume: str | None, overwrite: bool) -> None:
    """Before any work: an output folder that already holds a run is refused (`FileExistsError`) unless the run is
    resumed (`--resume-from-checkpoint`) or replaced (`--overwrite-output-dir`: its checkpoints, logs and model
    files are removed first, so the new run's logs and checkpoints are not mixed with the old ones). A checkpoint
    path that is not one of train.py's raises `FileNotFoundError`."""
    if resume not in (None, "latest") and not (Path(resume) / TRAINING_STATE).is_file():
        checkpoints = output_dir / "checkpoints"
        raise FileNotFoundError(f"--resume-from-checkpoint '{resume}' is not a checkpoint folder of train.py (no "
                                f"{TRAINING_STATE}); pass one of '{checkpoints}'/step-* or 'latest'")  # fmt: skip
    if not output_dir.exists():
        return
    if not output_dir.is_dir():
        raise FileExistsError(f"--output-dir '{output_dir}' is a file, not a folder")
    held = [name for name in RUN_OUTPUTS if (output_dir / name).exists()]
    if not held or resume:
        return
    if not overwrite:
        raise FileExistsError(
            f"'{output_dir}' already holds a training run ({', '.join(held)}); resume it with "
            "--resume-from-checkpoint latest, start again with --overwrite-output-dir, or choose another --output-dir"
        )
    for name in held:
        target = output_dir / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    for code in output_dir.glob("*.py"):  # the previous model's remote code
        code.unlink()


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Run (or resume) a training run; returns the metrics written to `metrics.json`.

    Everything that can be refused is checked before training starts: the output folder (`prepare_output_dir`), the
    recipe and flags, the model's config, the dataset and the recipe's data section (`apply_data_section`); each
    raises `ValueError` or `FileExistsError`/`FileNotFoundError` naming the value and what to do."""
    prepare_output_dir(Path(args.output_dir), args.resume_from_checkpoint, args.overwrite_output_dir)
    recipe = resolve_recipe(args)
    ct = is_ct_model(args.model)
    model_section = recipe.get("model") or {}
    opt = recipe.get("optimization") or {}
    output_dir = Path(args.output_dir)
    seed = int(opt.get("seed", 0))
    grad_accumulation = int(opt.get("gradient_accumulation_steps", 1))
    log_with = tracker_list(args.log_with, output_dir / "logs")
    # Everything that can be refused (the model's config, the data and the recipe's data section) is checked
    # before the Accelerator and its trackers write anything under the output folder.
    set_seed(seed)
    preset = args.preset or model_section.get("preset", "paper")
    overrides = dict(model_section.get("overrides") or {})
    if getattr(args, "backbone_weights", None):  # --backbone-weights: model.overrides entries, kept in recipe.yaml
        from hf_cxr.recipes import apply_assignments

        apply_assignments(overrides, list(args.backbone_weights), "--backbone-weights")
        recipe.setdefault("model", {})["overrides"] = overrides
    model = build_model(args.model, preset=preset, **overrides)
    data = load_converted(args.dataset)
    label_names = [model.config.id2label[index] for index in sorted(model.config.id2label)]
    train_split, validation_split, dataset_record = apply_data_section(recipe, args.dataset, data, label_names)
    run_record = {
        "command_line": list(sys.argv),
        "model_type": args.model,
        "preset": preset,
        "image_size": model.config.image_size,
        "recipe": args.recipe,
        "seed": seed,
        "max_steps": args.max_steps,
        "dataset": dataset_record,
    }
    accelerator = Accelerator(
        gradient_accumulation_steps=grad_accumulation,
        mixed_precision=opt.get("mixed_precision") or "no",
        log_with=log_with,
        # Every tracker (ours, TensorBoard, W&B's local files) writes under OUTPUT_DIR/logs/run.
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        # MMCAF-Net's stages leave heads (and frozen parts) without gradients.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)] if ct else None,
    )

    stages = stages_from_recipe(recipe)
    for stage in stages:
        stage.learning_rate = float(stage.learning_rate if stage.learning_rate is not None else 1e-4)
    batch_size = int(opt.get("batch_size", 32))
    teacher = load_teacher(recipe.get("distillation"), label_names)
    if ct:
        inputs = _ct_inputs(args, recipe, preset, model, train_split, validation_split, seed)
    else:
        inputs = _image_inputs(args, recipe, preset, model, train_split, validation_split, teacher)
    processor, stage_data, eval_loaders, scorer = inputs
    recipe.setdefault("model", {})["preset"] = preset  # recipe.yaml records the preset built, not the file's
    # Each stage's rows come from a seeded sampler; the loader's own generator (not the global one, which the
    # checkpoint restores) gives each epoch's worker seed, so starting the epoch anew on resume draws nothing.
    loader_options = {"batch_size": batch_size, "num_workers": args.num_workers, "drop_last": False}
    loaders = [
        DataLoader(split, sampler=SeededShuffleSampler(len(split), seed), generator=torch.Generator(), **loader_options)
        for split in stage_data
    ]

    # One optimizer for the whole run; its learning rate comes from `lr_at` (base lr 1.0 x the absolute rate).
    # CT stages freeze and unfreeze parts: every parameter is in it (a frozen one has no gradient and is skipped).
    parameters = [p for p in model.parameters() if p.requires_grad or ct]
    optimizer = build_optimizer(opt, parameters)
    if args.compile:
        model = torch.compile(model)
    model, optimizer, *prepared = accelerator.prepare(model, optimizer, *eval_loaders, *loaders)
    eval_loaders, loaders = prepared[: len(eval_loaders)], prepared[len(eval_loaders) :]

    def score(accelerator: Accelerator, scored: Any) -> dict[str, float]:
        return scorer(accelerator, scored, eval_loaders)

    steps_per_epoch = [max(math.ceil(len(loader) / grad_accumulation), 1) for loader in loaders]
    for stage, per_epoch in zip(stages, steps_per_epoch, strict=True):
        stage.steps = max(round(stage.epochs * per_epoch), 1)
    if args.max_steps is not None:  # split the budget over the stages in proportion to their epochs
        total_epochs = sum(stage.epochs for stage in stages)
        for stage in stages:
            stage.steps = max(round(args.max_steps * stage.epochs / total_epochs), 1)
        stages[-1].steps = max(args.max_steps - sum(stage.steps for stage in stages[:-1]), 1)
    total_steps = sum(stage.steps for stage in stages)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_at(step, stages, opt, steps_per_epoch))

    ema = None
    if (opt.get("ema") or {}).get("enabled"):
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(accelerator.unwrap_model(model), decay=float(opt["ema"].get("decay", 0.9998)))
    progress = TrainingProgress()
    progress.start_clock()
    distiller = _build_distillation(recipe.get("distillation"), teacher, label_names, accelerator)

    resume = args.resume_from_checkpoint
    if resume == "latest":
        resume = latest_checkpoint(output_dir)
        if resume is None:
            accelerator.print(f"no checkpoint in '{output_dir / 'checkpoints'}' yet: starting the run")
    if resume:
        _load_checkpoint(accelerator, Path(resume), progress, scheduler, ema)
        accelerator.print(f"resumed from {resume} at step {progress.step}")
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    accelerator.init_trackers("run", config={"model": args.model, "preset": preset, "recipe": args.recipe,
                                             "total_steps": total_steps, "seed": seed})  # fmt: skip
    clipping = opt.get("gradient_clipping") or {}
    unwrapped = accelerator.unwrap_model(model)
    eval_every = args.eval_steps or min(steps_per_epoch)
    stopped_early = False
    start_step = progress.step
    bar = tqdm(total=total_steps, initial=progress.step, disable=not accelerator.is_main_process, desc="training")
    say = bar.write if accelerator.is_main_process else (lambda _: None)
    keep_best = (accelerator, model, ema, score, processor, progress, recipe, output_dir, ct, run_record, say)
    model.train()
    stage_start = 0
    for index, (stage, loader) in enumerate(zip(stages, loaders, strict=True)):
        stage_end = stage_start + stage.steps
        if progress.step >= stage_end:
            stage_start = stage_end
            continue
        apply_stage(unwrapped, stage)
        if len(stages) > 1:
            say(f"stage {index + 1}/{len(stages)} '{stage.name}' from step {max(progress.step, stage_start) + 1}: "
                f"{describe_stage(stage, unwrapped.config)}")  # fmt: skip
        while progress.step < stage_end and not stopped_early:
            within = progress.step - stage_start
            epoch, step_in_epoch = divmod(within, steps_per_epoch[stages.index(stage)])
            loader.set_epoch(epoch + 1000 * stages.index(stage))
            batches = (
                accelerator.skip_first_batches(loader, step_in_epoch * grad_accumulation) if step_in_epoch else loader
            )
            for batch in batches:
                with accelerator.accumulate(model):
                    loss = _training_loss(model, batch, distiller)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        _clip(accelerator, parameters, clipping)
                    optimizer.step()
                    optimizer.zero_grad()
                if not accelerator.sync_gradients:
                    continue
                scheduler.step()
                progress.step += 1
                update_model_anchor(unwrapped)
                if ema is not None:
                    ema.update(unwrapped, step=progress.step)
                bar.update(1)
                accelerator.log({"train/loss": loss.item(), "train/lr": scheduler.get_last_lr()[0]}, step=progress.step)
                if progress.step % eval_every == 0 or progress.step == total_steps:
                    say(f"step {progress.step}/{total_steps}: training loss {loss.item():.4f}")
                    _validate_and_keep_best(*keep_best)
                checkpoint = (output_dir / "checkpoints", args.keep_checkpoints, progress, scheduler, ema)
                if progress.step % args.checkpointing_steps == 0 or progress.step == total_steps:
                    _save_checkpoint(accelerator, *checkpoint)
                if args.stop_after_steps is not None and progress.step - start_step >= args.stop_after_steps:
                    stopped_early = progress.step < total_steps
                    if stopped_early and progress.step % args.checkpointing_steps:
                        _save_checkpoint(accelerator, *checkpoint)
                    break
                if progress.step >= stage_end:
                    break
        stage_start = stage_end
        if stopped_early:
            break
    bar.close()
    accelerator.end_training()
    progress.tick()
    summary = {"step": progress.step, "total_steps": total_steps, "best_step": progress.best_step,
               "best_validation_metric": progress.best_metric, "finished": not stopped_early,
               "stages": [{"name": st.name, "steps": st.steps, "exclude_no_finding": st.exclude_no_finding,
                           "learning_rate": st.learning_rate, **st.loss_fields} for st in stages],
               "history": progress.history,
               "compute": _compute_summary(accelerator, batch_size, progress.seconds)}  # fmt: skip
    if accelerator.is_main_process and not stopped_early and (output_dir / "metrics.json").is_file():
        best = json.loads((output_dir / "metrics.json").read_text())
        (output_dir / "metrics.json").write_text(strict_json({**best, "training": summary}))
    if accelerator.is_main_process:
        _print_outputs(output_dir, summary, progress)
    return summary


def describe_stage(stage: Stage, config: Any) -> str:
    """One line on what a curriculum stage trains: its steps, images, loss and learning rate."""
    parts = [f"{stage.steps} steps"]
    if stage.exclude_no_finding:
        parts.append("abnormal images only")
    if stage.classification_head is not None:
        parts.append(f"{stage.classification_head} head")
    if stage.frozen_parts:
        parts.append(f"frozen: {', '.join(stage.frozen_parts)}")
    parts += [f"loss {config.loss}", f"learning rate {stage.learning_rate:g}"]
    return ", ".join(parts)


def _print_outputs(output_dir: Path, summary: dict[str, Any], progress: TrainingProgress) -> None:
    """Where the run's outputs went, printed at its end."""
    state = "finished" if summary["finished"] else "stopped"
    print(f"training {state} at step {summary['step']} of {summary['total_steps']}")
    if (output_dir / "config.json").is_file():
        best = "undefined" if not math.isfinite(progress.best_metric) else f"{progress.best_metric:.4f}"
        print(f"  model folder (best on validation, step {progress.best_step}, {best}): {output_dir}/")
        print(f"  its validation numbers and the run record: {output_dir / 'metrics.json'}")
    print(f"  checkpoints (--resume-from-checkpoint latest): {output_dir / 'checkpoints'}/")
    print(f"  logs (CSV, TensorBoard when installed): {output_dir / 'logs' / 'run'}/")


def _compute_summary(accelerator: Accelerator, batch_size: int, seconds: float) -> dict[str, Any]:
    """What the run trained on, for the model card's compute section."""
    device = accelerator.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} logical cores)"
    return {"device": name, "processes": accelerator.num_processes, "mixed_precision": accelerator.mixed_precision,
            "batch_size_per_device": batch_size,
            "gradient_accumulation_steps": accelerator.gradient_accumulation_steps,
            "wall_seconds": round(seconds, 1)}  # fmt: skip


def _image_inputs(
    args: argparse.Namespace, recipe: dict[str, Any], preset: str, model: Any, train_split: datasets.Dataset,
    validation_split: datasets.Dataset, teacher: Teacher | None,
) -> tuple[Any, list[Any], list[DataLoader], Any]:  # fmt: skip
    """2D: (image processor, training data per stage, validation loaders, validation scorer): images through
    `train_transform` (and the distillation teacher's processor when it reads other pixels), the abnormal-only
    stages filtered, macro AUC over findings on validation."""
    resize = {"resize_mode": recipe["data"]["resize_mode"]} if recipe["data"].get("resize_mode") else {}
    processor = build_image_processor(args.model, preset=preset, **resize)
    teacher_processor = teacher.processor if teacher is not None and not teacher.reads(processor) else None
    augment = augmentation_from_recipe(recipe.get("augmentation"))
    stage_data = []
    for stage in stages_from_recipe(recipe):
        split = train_split
        if stage.exclude_no_finding:
            keep = [i for i, empty in enumerate(_no_finding_mask(split)) if not empty]
            split = split.select(keep)
        transform = train_transform(processor, augmentation=augment, teacher_processor=teacher_processor)
        stage_data.append(TrainingRows(split, transform))
    batch_size = int((recipe.get("optimization") or {}).get("batch_size", 32))
    eval_loader = DataLoader(
        validation_split.with_transform(eval_transform(processor)), batch_size=batch_size, num_workers=args.num_workers,
        generator=torch.Generator(),  # starting an epoch draws its worker seed here, not from the global generator
    )  # fmt: skip
    positive_counts, num_samples = _label_counts(train_split)
    model.config.class_positive_counts, model.config.num_train_samples = positive_counts, num_samples

    def score(accelerator: Accelerator, scored: Any, loaders: list[DataLoader]) -> dict[str, float]:
        return _evaluate(accelerator, scored, loaders[0], accelerator.unwrap_model(scored).config.id2label)

    return processor, stage_data, [eval_loader], score


def _ct_inputs(
    args: argparse.Namespace, recipe: dict[str, Any], preset: str, model: Any, train_split: datasets.Dataset,
    validation_split: datasets.Dataset, seed: int,
) -> tuple[Any, list[Any], list[DataLoader], Any]:  # fmt: skip
    """CT: (MMCAF-Net processor, training windows per stage, no validation loader, validation scorer): one window
    per converted row (oversampled as `data.oversample_minority` says), patient-level numbers on validation."""
    data_section = recipe.get("data") or {}
    if preset != (recipe.get("model") or {}).get("preset", "paper") and data_section.get("processor"):
        # `--preset tiny` with a paper recipe: the window follows the model; recipe.yaml records what was used.
        data_section["processor"] = {
            **data_section["processor"],
            "size": model.config.image_size,
            "num_slices": model.config.num_slices,
        }
    processor = build_ct_processor(args.model, preset, model.config, data_section.get("processor"), train_split)
    names = [model.config.id2label[i] for i in sorted(model.config.id2label)]
    classes = dataset_class_indices(train_split, names)
    indices = oversampled_indices(classes, names, data_section.get("oversample_minority"), seed)
    counts = np.bincount(classes[indices], minlength=len(names))  # for a class-balanced loss: rows per class served
    model.config.class_positive_counts, model.config.num_train_samples = counts.tolist(), len(indices)
    augment = ct_augmentation_from_recipe(recipe.get("augmentation"))
    windows = CTTrainingWindows(train_split, processor, classes, indices, augment)
    dataset_class_indices(validation_split, names)  # fail before training when validation has other classes

    def score(accelerator: Accelerator, scored: Any, loaders: list[DataLoader]) -> dict[str, float]:
        # Every process scores the whole (small) validation split: no gather, the same numbers everywhere.
        unwrapped = accelerator.unwrap_model(scored)
        return evaluate_ct(unwrapped, processor, validation_split, recipe.get("evaluation"), accelerator.device)

    return processor, [windows for _ in stages_from_recipe(recipe)], [], score


def apply_stage(model: Any, stage: Stage) -> None:
    """The stage's effect on the model: its loss (e.g. class-balanced focal in stage 2) and, for MMCAF-Net, the
    head whose logits are trained and the frozen parts (kept in eval mode)."""
    if stage.classification_head is not None:
        model.config.classification_head = stage.classification_head
    if stage.frozen_parts is not None:
        model.set_frozen_parts(stage.frozen_parts)
    if not stage.loss_fields:
        return
    for key, value in stage.loss_fields.items():
        setattr(model.config, key, value)
    if is_ct_model(model.config.model_type):
        from hf_cxr.modeling.mmcaf_net.losses import build_single_label_loss_from_config as build
    else:
        build = build_loss_from_config
    model.criterion = build(model.config).to(next(model.parameters()).device)


def _training_loss(model: Any, batch: dict[str, torch.Tensor], distiller: Any) -> torch.Tensor:
    if distiller is None:
        inputs = {key: batch[key] for key in ("pixel_values", "clinical_values") if key in batch}
        return model(**inputs, labels=batch["labels"]).loss
    teacher, loss_fn = distiller
    output = model(pixel_values=batch["pixel_values"])
    cls_logits = getattr(output, "cls_logits", None)
    with torch.no_grad():
        teacher_out = teacher.scores(batch.get("teacher_pixel_values", batch["pixel_values"]))
    return loss_fn(
        cls_logits if cls_logits is not None else output.logits,
        batch["labels"],
        teacher_out,
        distillation_logits=getattr(output, "distillation_logits", None),
    )


@dataclass
class Teacher:
    """A frozen distillation teacher: the model, its image processor, and whether its targets start from its
    operating-point scores (torchxrayvision's op_norm of the sigmoids; `teacher_outputs` operating_point_scores or
    reference)."""

    model: Any
    processor: Any
    operating_point_scores: bool  # teacher_outputs operating_point_scores or reference

    def reads(self, processor: Any) -> bool:
        """Whether the teacher's processor makes the same pixels as `processor` (then the student's batch serves)."""
        return _pixel_settings(self.processor) == _pixel_settings(processor)

    @torch.no_grad()
    def scores(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The teacher's per-label outputs for a batch of its pixels: logits, or operating-point scores."""
        logits = self.model(pixel_values=pixel_values.to(next(self.model.parameters()).dtype)).logits
        if not self.operating_point_scores:
            return logits
        unwrapped = getattr(self.model, "module", self.model)
        return unwrapped.operating_point_scores(logits.float())


def _pixel_settings(processor: Any) -> tuple[Any, ...]:
    """What decides a CXR image processor's pixels (its class name and other bookkeeping aside)."""
    fields = ("size", "resize_mode", "num_channels", "do_rescale", "do_normalize", "image_mean", "image_std")
    return tuple(getattr(processor, name, None) for name in fields)


# What a teacher's targets are (train.py's teachers are hf-cxr models, which return logits): `logits` their sigmoids;
# `operating_point_scores` torchxrayvision's op_norm of them (what its models return, the MXA paper's targets);
# `reference` a sigmoid of those (the MXA public code's double sigmoid). `hf_cxr.distillation` also takes teachers
# that return probabilities, through its Python API.
TEACHER_OUTPUTS_OPTIONS = ("logits", "operating_point_scores", "reference")


def load_teacher(section: dict[str, Any] | None, student_labels: Sequence[str]) -> Teacher | None:
    """The distillation teacher the recipe's `distillation` section names (`teacher`: a saved model folder or a Hub
    id in the local cache, e.g. `hf-cxr import-torchxrayvision densenet121-res224-chex --out DIR`), in eval mode and
    frozen, with its own image processor; None without distillation. Raises `ValueError` without a teacher, for an
    unknown `teacher_outputs`, for `operating_point_scores` with a teacher that has none, and when the teacher's
    labels share no finding with the student's; `FileNotFoundError` for a teacher that cannot be found."""
    if not section or not section.get("enabled"):
        return None
    source = section.get("teacher")
    if not source:
        raise ValueError("distillation is enabled but names no teacher: pass --teacher DIR (hf-cxr "
                         "import-torchxrayvision densenet121-res224-chex --out DIR makes the MXA paper's)")  # fmt: skip
    outputs = section.get("teacher_outputs", "logits")
    if outputs not in TEACHER_OUTPUTS_OPTIONS:
        raise ValueError(f"distillation.teacher_outputs must be one of {TEACHER_OUTPUTS_OPTIONS}, got {outputs!r}")
    model, processor = load_model(source, device="cpu")
    model.requires_grad_(False)
    if outputs in ("operating_point_scores", "reference") and not hasattr(model, "operating_point_scores"):
        raise ValueError(f"distillation.teacher_outputs {outputs} needs a teacher with operating points (a "
                         f"torchxrayvision import); '{source}' ({model.config.model_type}) has none: use "
                         "logits")  # fmt: skip
    from hf_cxr.distillation import TeacherOutputAdapter

    teacher_labels = [model.config.id2label[i] for i in sorted(model.config.id2label)]
    if not TeacherOutputAdapter(teacher_labels, student_labels).mapping:
        raise ValueError(f"the teacher '{source}' predicts {teacher_labels}: none of the student's findings "
                         f"{list(student_labels)}")  # fmt: skip
    return Teacher(model, processor, outputs in ("operating_point_scores", "reference"))


def _build_distillation(
    section: dict[str, Any] | None, teacher: Teacher | None, student_labels: Sequence[str], accelerator: Accelerator
) -> Any:
    """(the teacher on the training device, the distillation loss) from the recipe's `distillation` section, or None.
    The teacher's label names are mapped to the student's by `TeacherOutputAdapter`."""
    if teacher is None:
        return None
    from hf_cxr.distillation import MultiLabelDistillationLoss, TeacherOutputAdapter

    config = teacher.model.config
    teacher_labels = [config.id2label[i] for i in sorted(config.id2label)]
    outputs = section.get("teacher_outputs", "logits")
    loss = MultiLabelDistillationLoss(
        alpha=float(section.get("alpha", 0.5)),
        distillation_type=section.get("type", "soft"),
        teacher_outputs={"operating_point_scores": "probabilities"}.get(outputs, outputs),
        adapter=TeacherOutputAdapter(teacher_labels=teacher_labels, student_labels=student_labels),
        dynamic_weights=bool(section.get("dynamic_weights", True)),
    )
    teacher.model = accelerator.prepare(teacher.model)
    return teacher, loss.to(accelerator.device)


def _clip(accelerator: Accelerator, parameters: list[torch.nn.Parameter], clipping: dict[str, Any]) -> None:
    mode, value = clipping.get("mode"), clipping.get("value")
    if not mode or value is None:
        return
    if mode == "norm":
        accelerator.clip_grad_norm_(parameters, float(value))
    elif mode == "agc":
        from timm.utils import adaptive_clip_grad

        adaptive_clip_grad(parameters, clip_factor=float(value))
    else:
        raise ValueError(f"optimization.gradient_clipping.mode must be 'norm' or 'agc', got {mode!r}")


def _validate_and_keep_best(
    accelerator: Accelerator, model: Any, ema: Any, score: Any, processor: Any, progress: TrainingProgress,
    recipe: dict[str, Any], output_dir: Path, ct: bool, run_record: dict[str, Any], say: Callable[[str], None],
) -> None:  # fmt: skip
    """Score the validation split (`score(accelerator, model)`) and print the numbers; when the selection metric
    improves, the model folder is rewritten with this model and `metrics.json` with its numbers and the run
    record."""
    scored = ema.module if ema is not None else model
    metrics = score(accelerator, scored)
    metric_name = _selection_metric(metrics, (recipe.get("evaluation") or {}).get("select_best_by"), ct)
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
            _save_model(accelerator.unwrap_model(scored), processor, output_dir, best, recipe)
    accelerator.wait_for_everyone()


def main(argv: Sequence[str] | None = None) -> int:
    args = add_train_arguments(argparse.ArgumentParser(description=__doc__.split("\n\n")[0])).parse_args(argv)
    summary = train(args)
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))
    return 0
