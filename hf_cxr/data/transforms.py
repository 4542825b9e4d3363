"""`dataset.with_transform(...)` functions that turn converted rows into model inputs.

Both take the model's image processor, which owns all intensity handling (bit depth, grey -> channels,
normalisation), so training and inference see identical preprocessing. Output per batch: `pixel_values`
float32 [B, C, H, W] and `labels` float32 [B, K] (the Trainer's BCE needs floats; -100 marks an ignored
label, as the CheXpert converter writes for `--uncertain ignore`). Use with
`TrainingArguments(remove_unused_columns=False)`: the transform needs the raw `image` column.

Training augmentation is a recipe's `augmentation` section, applied to the grey image in [0, 1] before the
processor resizes it (`hf_cxr.training.augment.per_image_augmentation`). By default it is the mild geometric one
of the CR-MSNet and MA-MSF recipes (`mild_geometric_augmentation`: rotation and shift/scale). No horizontal flip by
default: it moves the heart to the right, which is itself a finding (dextrocardia) and changes what left/right-sided
labels mean.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from hf_cxr.imaging import load_radiograph

# A batch column holding one augmentation seed per row (see `train_transform`).
AUGMENTATION_SEED = "augmentation_seed"


def seeded(augment: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, seed: int | None) -> torch.Tensor:
    """`augment(image)`, drawing its random numbers from a CPU generator seeded with `seed` when one is given, and
    leaving torch's global generator as it was (the augmentations draw from the global one)."""
    if seed is None:
        return augment(image)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return augment(image)


def _labels_tensor(values: Sequence[Any]) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.float32))


def eval_transform(
    image_processor: Any, image_column: str = "image", label_column: str = "labels"
) -> Callable[[dict[str, list[Any]]], dict[str, torch.Tensor]]:
    """Deterministic preprocessing: the processor on each image, labels as float32."""

    def transform(batch: dict[str, list[Any]]) -> dict[str, torch.Tensor]:
        output = {"pixel_values": image_processor(list(batch[image_column]), return_tensors="pt")["pixel_values"]}
        if label_column in batch:
            output["labels"] = _labels_tensor(batch[label_column])
        return output

    return transform


def train_transform(
    image_processor: Any,
    image_column: str = "image",
    label_column: str = "labels",
    augmentation: Callable[[torch.Tensor], torch.Tensor] | None = None,
    teacher_processor: Any | None = None,
) -> Callable[[dict[str, list[Any]]], dict[str, torch.Tensor]]:
    """`eval_transform` plus random augmentation before the processor: `augmentation` takes a grey [1, H, W] image
    (e.g. `per_image_augmentation(recipe.augmentation)`); by default the recipes' mild geometric one
    (`hf_cxr.training.augment.mild_geometric_augmentation`).

    Each image is read at full precision as grey [0, 1], augmented as a [1, H, W] tensor, clamped back to
    [0, 1] and handed to the processor, which resizes and normalises it as at inference. The augmentation draws
    from torch's global random generator, unless the batch carries an `AUGMENTATION_SEED` column (one integer per
    row, as `hf_cxr.training` adds): each row is then augmented with its own seed, whatever process reads it and
    whatever was drawn before, which is what makes a resumed run exact. With `teacher_processor` (a distillation
    teacher that reads other pixels than the student, e.g. torchxrayvision's centre crop), the same augmented image
    also goes through it, as `teacher_pixel_values`.
    """
    if augmentation is None:
        from hf_cxr.training.augment import mild_geometric_augmentation, per_image_augmentation

        augmentation = per_image_augmentation(mild_geometric_augmentation())

    def transform(batch: dict[str, list[Any]]) -> dict[str, torch.Tensor]:
        images = []
        seeds = batch.get(AUGMENTATION_SEED)
        for index, image in enumerate(batch[image_column]):
            grey = torch.from_numpy(load_radiograph(image, name=f"{image_column}[{index}]"))[None]
            images.append(seeded(augmentation, grey, None if seeds is None else int(seeds[index])).clamp_(0.0, 1.0))
        output = {"pixel_values": image_processor(images, return_tensors="pt")["pixel_values"]}
        if teacher_processor is not None:
            output["teacher_pixel_values"] = teacher_processor(images, return_tensors="pt")["pixel_values"]
        if label_column in batch:
            output["labels"] = _labels_tensor(batch[label_column])
        return output

    return transform
