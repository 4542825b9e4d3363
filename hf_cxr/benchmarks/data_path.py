"""Speed of the data path feeding the models: `measure_data_path` times raw PNG decoding (PIL, torchvision),
the image processor, and a converted-style dataset read by a DataLoader with N workers, as evaluation reads it and
as training reads it (the architecture's recipe augmentation, in the loader or batched on the training device), so
that a user sees whether the loader or the model is the bottleneck.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hf_cxr.benchmarks.timing import images_per_second
from hf_cxr.registry import build_image_processor

EVAL_LOADER = "dataset + DataLoader"
TRAIN_LOADER = "dataset + DataLoader + augmentation"
DEVICE_LOADER = "dataset + DataLoader, augmentation on the device"


def recipe_augmentation(model_type: str) -> tuple[str | None, Any]:
    """(recipe name, `RadiographAugmentation`) of the first shipped recipe for `model_type` (None and no
    augmentation when it has none): what training applies to each image."""
    from hf_cxr.training.augment import augmentation_from_recipe
    from hf_cxr.training.config import AugmentationSection, available_recipes, load_recipe

    for name in available_recipes():
        recipe = load_recipe(name)
        if recipe.model.model_type == model_type:
            return name, augmentation_from_recipe(recipe.augmentation)
    return None, augmentation_from_recipe(AugmentationSection())


@dataclass
class DataPathResult:
    stage: str
    workers: int
    images: int
    images_per_second: float
    detail: str = ""


def measure_data_path(
    model_type: str = "ma_msf",
    preset: str = "paper",
    workers: Sequence[int] = (0, 2),
    images: int = 200,
    batch_size: int = 32,
    repeats: int = 3,
    device: str | torch.device = "cpu",
) -> list[DataPathResult]:
    """Images/s of raw PNG decoding (PIL, torchvision), the image processor, and the dataset read by a DataLoader
    with each number of workers: as evaluation reads it (`with_transform(eval_transform(processor))`), and as
    training reads it (`hf_cxr.training.data.TrainingImages` with the recipe's augmentation) in the loader
    (`augment_on="cpu"`) and on `device` (`"device"`: the loader reads and collates, the batch is augmented and
    normalised on `device`, included in the time).

    Uses the bundled real NIH sample (128-px PNGs; converted full datasets store 512 px by default, which costs
    more per image to decode and resize).
    """
    from PIL import Image
    from torch.utils.data import DataLoader
    from torchvision.io import decode_png, read_file

    from hf_cxr.data.transforms import eval_transform
    from hf_cxr.sample import SAMPLE_DIR, load_labelled_folder
    from hf_cxr.training.data import SeededShuffleSampler, TrainingImages, finish_images

    device = torch.device(device)
    files = sorted((Path(SAMPLE_DIR) / "images").glob("*.png"))[:images]
    count = len(files)

    def decode_pil() -> None:
        for path in files:
            with Image.open(path) as image:
                image.load()

    def decode_torchvision() -> None:
        for path in files:
            decode_png(read_file(str(path)))

    decoded = []
    for path in files:
        with Image.open(path) as image:
            decoded.append(image.copy())
    processor = build_image_processor(model_type, preset)

    def process() -> None:
        for start in range(0, count, batch_size):
            processor(decoded[start : start + batch_size], return_tensors="pt")

    size = processor.size
    detail = f"{model_type} {preset} processor -> {size['height']}x{size['width']}"
    results = []
    for stage, run, note in (
        ("PNG decode (PIL)", decode_pil, "Image.open + load"),
        ("PNG decode (torchvision)", decode_torchvision, "read_file + decode_png"),
        ("image processor", process, f"{detail}, batches of {batch_size}, on decoded images"),
    ):
        rates = [images_per_second(run, count, 1) for _ in range(repeats)]
        results.append(DataPathResult(stage, 0, count, statistics.median(rates), note))

    rows = load_labelled_folder().select(range(count))
    recipe_name, augmentation = recipe_augmentation(model_type)
    augmented = f"the {recipe_name} recipe's augmentation" if recipe_name else "no augmentation (no recipe)"
    readers = (
        (EVAL_LOADER, rows.with_transform(eval_transform(processor)), None, "with_transform(eval_transform)"),
        (TRAIN_LOADER, TrainingImages(rows, processor, augmentation, "cpu"), None,
         f"TrainingImages, {augmented} in the loader"),
        (DEVICE_LOADER, TrainingImages(rows, processor, augmentation, "device"), device,
         f"TrainingImages, {augmented} batched on {device.type}"),
    )  # fmt: skip
    for stage, dataset, finish_on, how in readers:
        for num_workers in workers:
            sampler = SeededShuffleSampler(count, seed=0) if isinstance(dataset, TrainingImages) else None

            def read_all(dataset: Any = dataset, num_workers: int = num_workers, sampler: Any = sampler,
                         finish_on: torch.device | None = finish_on) -> None:  # fmt: skip
                loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, sampler=sampler,
                                    pin_memory=finish_on is not None and finish_on.type == "cuda")  # fmt: skip
                for batch in loader:
                    if finish_on is not None:
                        batch = {name: value.to(finish_on, non_blocking=True) for name, value in batch.items()}
                        finish_images(batch, processor, augmentation)
                if finish_on is not None and finish_on.type == "cuda":
                    torch.cuda.synchronize(finish_on)

            rates = [images_per_second(read_all, count, 1) for _ in range(repeats)]
            note = f"{how}, {detail}, DataLoader start-up included"
            results.append(DataPathResult(stage, num_workers, count, statistics.median(rates), note))
    return results
