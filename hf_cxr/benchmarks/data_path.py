"""Speed of the data path feeding the models: `measure_data_path` times raw PNG decoding (PIL, torchvision),
the image processor, and a converted-style dataset read through `with_transform` by a DataLoader with N workers,
as evaluation reads it and as training reads it (with the architecture's recipe augmentation), so that a user sees
whether the loader or the model is the bottleneck.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import transformers

from hf_cxr.benchmarks.timing import images_per_second
from hf_cxr.registry import build_image_processor

EVAL_LOADER = "dataset + DataLoader"
TRAIN_LOADER = "dataset + DataLoader + augmentation"


def recipe_augmentation(model_type: str) -> tuple[str | None, Any]:
    """(recipe name, augmentation module) of the first shipped recipe for `model_type` (None, the default
    augmentation, when it has none): what training applies to each image before the processor."""
    from hf_cxr.data.transforms import train_augmentation
    from hf_cxr.training.augment import augmentation_from_recipe
    from hf_cxr.training.config import available_recipes, load_recipe

    for name in available_recipes():
        recipe = load_recipe(name)
        if recipe.model.model_type == model_type:
            return name, augmentation_from_recipe(recipe.augmentation)
    return None, train_augmentation()


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
) -> list[DataPathResult]:
    """Images/s of raw PNG decoding (PIL, torchvision), the image processor, and the dataset through
    `with_transform(eval_transform(processor))` read by a DataLoader with each number of workers.

    Uses the bundled real NIH sample (128-px PNGs; converted full datasets store 512 px by default, which costs
    more per image to decode and resize).
    """
    from PIL import Image
    from torch.utils.data import DataLoader
    from torchvision.io import decode_png, read_file

    from hf_cxr.data.transforms import eval_transform, train_transform
    from hf_cxr.sample import SAMPLE_DIR, load_labelled_folder

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
    augmented = f"the {recipe_name} recipe's augmentation" if recipe_name else "the default augmentation"
    readers = (
        (EVAL_LOADER, rows.with_transform(eval_transform(processor)), "with_transform(eval_transform)"),
        (TRAIN_LOADER, rows.with_transform(train_transform(processor, augmentation=augmentation)),
         f"with_transform(train_transform), {augmented} on the CPU"),
    )  # fmt: skip
    for stage, dataset, how in readers:
        for num_workers in workers:

            def read_all(dataset: Any = dataset, num_workers: int = num_workers) -> None:
                loader = DataLoader(
                    dataset,
                    batch_size=batch_size,
                    num_workers=num_workers,
                    collate_fn=transformers.default_data_collator,
                )
                for _ in loader:
                    pass

            rates = [images_per_second(read_all, count, 1) for _ in range(repeats)]
            note = f"{how}, {detail}, DataLoader start-up included"
            results.append(DataPathResult(stage, num_workers, count, statistics.median(rates), note))
    return results
