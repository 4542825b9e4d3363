"""The data of a training run: the recipe's `data` section applied to (or checked against) the converted dataset,
seeded training order and augmentation, the 2D and CT training datasets, and what each architecture's path trains
and validates on."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import datasets
import numpy as np
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from hf_cxr.data._common import read_conversion_report
from hf_cxr.data.transforms import AUGMENTATION_SEED, eval_transform, seeded
from hf_cxr.evaluation.ct_scores import dataset_class_indices
from hf_cxr.imaging import load_radiograph
from hf_cxr.inference.ct import CLINICAL_COLUMNS, ct_input_rows
from hf_cxr.labels import LABEL_SETS
from hf_cxr.machine import usable_cores
from hf_cxr.registry import build_image_processor
from hf_cxr.training.augment import RadiographAugmentation, augmentation_from_recipe, ct_augmentation_from_recipe
from hf_cxr.training.config import Oversampling, Recipe, SplitFractions, TrainingConfig
from hf_cxr.training.schedule import stages_from_recipe
from hf_cxr.training.teacher import Teacher
from hf_cxr.training.validation import evaluate_ct, evaluate_images

# Batches each DataLoader worker prepares ahead on a GPU (PyTorch's default is 2): enough to ride out a slow image.
GPU_PREFETCH_FACTOR = 4
MAX_DEFAULT_WORKERS = 8


def default_num_workers(device: torch.device, num_processes: int) -> int:
    """DataLoader workers per training process when `--num-workers` is not given: on a GPU, the process's share of
    the usable CPU cores less one (the process itself), at most `MAX_DEFAULT_WORKERS`; on CPU 0, since workers
    would take cores from the model's own threads."""
    if device.type != "cuda":
        return 0
    return max(0, min(MAX_DEFAULT_WORKERS, usable_cores() // max(num_processes, 1) - 1))


def loader_options(num_workers: int, device: torch.device) -> dict[str, Any]:
    """DataLoader settings for `num_workers` workers feeding `device`: pinned memory on a GPU (faster, asynchronous
    copies), workers kept alive between epochs and validation passes, and `GPU_PREFETCH_FACTOR` batches prefetched
    per worker on a GPU."""
    options: dict[str, Any] = {"num_workers": num_workers, "pin_memory": device.type == "cuda"}
    if num_workers > 0:
        options["persistent_workers"] = True
        if device.type == "cuda":
            options["prefetch_factor"] = GPU_PREFETCH_FACTOR
    return options


# Recipe `data` keys that describe how the dataset was converted, and the converter setting each must equal.
CONVERSION_SETTINGS = {"uncertain_labels": "uncertain", "task": "task"}
VIEWS = ("frontal", "lateral")


class Inputs(NamedTuple):
    """What an architecture's path gives the training loop."""

    processor: Any
    """The image processor saved with the model."""
    stage_data: list[Any]
    """The training dataset of each curriculum stage."""
    eval_loaders: list[DataLoader]
    """Validation loaders (prepared by Accelerate with the model)."""
    scorer: Callable[[Accelerator, Any, list[DataLoader]], dict[str, float]]
    """Validation numbers of the model."""
    finish_batch: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]
    """Applied by the loop to each training batch once it is on the training device (augmentation there)."""
    augment_on: str | None
    """2D: where augmentation runs (`cpu`, `device` or `none`, see `resolve_augment_on`); None for CT."""


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
        """The epoch whose order and seeds the next iteration gives."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = np.random.default_rng([self.seed, self.epoch, 0]).permutation(self.size)
        seeds = np.random.SeedSequence([self.seed, self.epoch, 1]).generate_state(self.size)
        return iter(zip(order.tolist(), seeds.tolist(), strict=True))


class TrainingImages(torch.utils.data.Dataset):
    """A 2D training split read in batches of the (row, augmentation seed) keys `SeededShuffleSampler` yields.

    Each image is read as grey at the model's size (`processor.grey_pixel_values`). With `augment_on="cpu"` the
    batch is augmented and normalised here, in the DataLoader's workers (`finish_images`); with `"device"` it leaves
    as `grey_pixel_values` [1, H, W] with its `augmentation_seed`, and the training loop finishes it on the
    training device (`finish_images` again, on the whole batch there). Same seeds, same images, either way.

    With `teacher_processor` (a distillation teacher that reads other pixels than the student, e.g.
    torchxrayvision's centre crop where the student stretches) each image is augmented at its stored size, here,
    and both processors read that one augmented image (`teacher_pixel_values`): resizing first would hand the
    teacher the student's stretched image. Raises `ValueError` for `augment_on` other than `cpu`/`device`, or
    `device` with a teacher processor.
    """

    def __init__(
        self, split: datasets.Dataset, processor: Any, augmentation: RadiographAugmentation, augment_on: str,
        teacher_processor: Any | None = None,
    ) -> None:  # fmt: skip
        if augment_on not in ("cpu", "device"):
            raise ValueError(f"augment_on must be 'cpu' or 'device', got {augment_on!r}")
        if augment_on == "device" and teacher_processor is not None:
            raise ValueError("augmentation on the device cannot serve a distillation teacher that reads other "
                             "pixels than the student (augmented at their stored size): use cpu")  # fmt: skip
        self.split, self.processor, self.augmentation = split, processor, augmentation
        self.augment_on, self.teacher_processor = augment_on, teacher_processor

    def __len__(self) -> int:
        return len(self.split)

    def __getitems__(self, keys: list[tuple[int, int]]) -> list[dict[str, torch.Tensor]]:
        batch = self.split[[row for row, _ in keys]]
        seeds = [seed for _, seed in keys]
        labels = torch.as_tensor(np.asarray(batch["labels"], dtype=np.float32))
        if self.teacher_processor is not None:
            output = self._with_teacher(batch["image"], seeds, labels)
        else:
            output = {
                "grey_pixel_values": self.processor.grey_pixel_values(batch["image"]),
                AUGMENTATION_SEED: torch.tensor(seeds, dtype=torch.int64),
                "labels": labels,
            }
            if self.augment_on == "cpu":
                output = finish_images(output, self.processor, self.augmentation)
        return [{name: value[index] for name, value in output.items()} for index in range(len(keys))]

    @torch.no_grad()
    def _with_teacher(self, images: list[Any], seeds: list[int], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        augmented = []
        for index, (image, seed) in enumerate(zip(images, seeds, strict=True)):
            grey = torch.from_numpy(load_radiograph(image, name=f"image[{index}]"))[None, None]  # stored size
            augmented.append(self.augmentation(grey, [seed])[0].clamp_(0.0, 1.0))
        return {
            "pixel_values": self.processor(augmented, return_tensors="pt")["pixel_values"],
            "teacher_pixel_values": self.teacher_processor(augmented, return_tensors="pt")["pixel_values"],
            "labels": labels,
        }

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        return self.__getitems__([key])[0]


@torch.no_grad()
def finish_images(
    batch: dict[str, torch.Tensor], processor: Any, augmentation: RadiographAugmentation
) -> dict[str, torch.Tensor]:
    """A batch of `TrainingImages` made model inputs where it is (CPU or the training device): `grey_pixel_values`
    [B, 1, H, W] augmented with each row's `augmentation_seed`, clamped to [0, 1] and normalised by the processor
    (`pixel_values` [B, C, H, W]). Other keys pass unchanged."""
    batch = dict(batch)
    grey, seeds = batch.pop("grey_pixel_values"), batch.pop(AUGMENTATION_SEED)
    augmented = augmentation(grey, seeds.tolist()).clamp_(0.0, 1.0)
    batch["pixel_values"] = processor.normalize_grey(augmented)
    return batch


class CTTrainingSlabs(torch.utils.data.Dataset):
    """Training rows of a converted Lung-PET-CT-Dx split as model inputs: one slab per row (the processor's
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


def oversampled_indices(
    classes: np.ndarray, label_names: Sequence[str], section: Oversampling | None, seed: int
) -> list[int]:
    """Every training row, plus random repeats of `section.class_`'s rows until it has `target_count` rows
    (`data.oversample_minority`; the validation split is never oversampled). Raises `ValueError` when `train_only`
    is false or the class is not one of the model's labels."""
    indices = list(range(len(classes)))
    if section is None:
        return indices
    if not section.train_only:
        raise ValueError("data.oversample_minority.train_only must be true: validation is never oversampled")
    name = section.class_
    if name not in label_names:
        raise ValueError(f"data.oversample_minority.class {name!r} is not one of the model's labels {label_names}")
    minority = [i for i in indices if classes[i] == list(label_names).index(name)]
    extra = section.target_count - len(minority)
    if minority and extra > 0:
        indices += np.random.default_rng(seed).choice(minority, size=extra, replace=True).tolist()
    return indices


def build_ct_processor(
    model_type: str, preset: str, config: Any, options: dict[str, Any] | None, train_split: datasets.Dataset
) -> Any:
    """MMCAF-Net's processor from `data.processor`; `fit_clinical_statistics: train` fits the clinical ranges and fill
    values on the training split (saved with the model). Raises `ValueError` when its slab does not match the
    model's input (`image_size`, `num_slices`) or `fit_clinical_statistics` is not `train`."""
    options = dict(options or {})
    fit = options.pop("fit_clinical_statistics", None)
    options = {"num_slices": config.num_slices, **options}
    processor = build_image_processor(model_type, preset=preset, **options)
    if processor.size["height"] != config.image_size or processor.num_slices != config.num_slices:
        raise ValueError(
            f"data.processor gives {processor.num_slices} x {processor.size['height']} slabs but the '{preset}' "
            f"model takes {config.num_slices} x {config.image_size}: set data.processor.size / num_slices"
        )
    if fit not in (None, False, "train"):
        raise ValueError(f"data.processor.fit_clinical_statistics must be 'train' or absent, got {fit!r}")
    if fit == "train":
        processor.fit_clinical_statistics(train_split.select_columns(list(CLINICAL_COLUMNS)))
    return processor


def _label_counts(split: datasets.Dataset) -> tuple[list[int], int]:
    labels = np.asarray(split.with_format("numpy")["labels"], dtype=np.float32)
    return (labels == 1).sum(axis=0).astype(int).tolist(), int(labels.shape[0])


def _no_finding_mask(split: datasets.Dataset) -> list[bool]:
    labels = np.asarray(split.with_format("numpy")["labels"], dtype=np.float32)
    return (labels != 1).all(axis=1).tolist()


def apply_data_section(
    recipe: Recipe, dataset: str, data: datasets.DatasetDict, label_names: Sequence[str]
) -> tuple[datasets.Dataset, datasets.Dataset, dict[str, Any]]:
    """(training split, validation split, the record of the data used) for the recipe's `data` section.

    Every key takes effect or is checked: the splits are picked by `train_split`/`validation_split`; `views` keeps
    those views (CheXpert's `frontal_lateral`) in both splits; `dataset`, `split_protocol`, `uncertain_labels` and
    `task` must equal what `hf-cxr convert` recorded in the dataset's conversion report, and `labels` must name the
    model's label set. A mismatch raises `ValueError` naming the key, both values and the fix. A key the recipe
    leaves out is filled in from the report (in `recipe.data`), so `recipe.yaml` states the policy used. A dataset
    without a conversion report (a Hub id, a hand-built DatasetDict) cannot be checked: the keys that could not be
    are listed in the record (`unverified`) and printed.
    """
    section = recipe.data
    train_name, validation_name = section.train_split, section.validation_split
    report = read_conversion_report(dataset)
    settings = (report or {}).get("settings") or {}
    converted = (report or {}).get("dataset")

    def refuse(key: str, wanted: Any, found: Any, fix: str) -> None:
        raise ValueError(f"recipe data.{key} is {wanted!r} but {found}; {fix}")

    if section.dataset and converted and section.dataset != converted:
        refuse("dataset", section.dataset, f"'{dataset}' is a converted {converted} dataset", "train on the "
               f"dataset the recipe is for, or pass --set data.dataset={converted}")  # fmt: skip
    if converted and not section.dataset:
        section.dataset = converted
    if converted in LABEL_SETS and list(LABEL_SETS[converted]) != list(label_names):
        raise ValueError(f"'{dataset}' is a converted {converted} dataset (its labels are {converted}'s findings) but "
                         f"the model predicts {list(label_names)}; build it with {converted}'s labels (--set "
                         f"model.overrides.labels={converted}, or the recipe's model.overrides.labels)")  # fmt: skip
    if section.labels:
        if section.labels not in LABEL_SETS:
            refuse("labels", section.labels, f"hf-cxr knows the label sets {sorted(LABEL_SETS)}", "name one")
        if list(LABEL_SETS[section.labels]) != list(label_names):
            refuse("labels", section.labels, f"the model predicts {list(label_names)}", "build the model with "
                   "that label set (model.overrides.labels) or change data.labels")  # fmt: skip
    for key, setting in CONVERSION_SETTINGS.items():
        if setting not in settings:
            continue
        if getattr(section, key) is not None and getattr(section, key) != settings[setting]:
            refuse(key, getattr(section, key), f"'{dataset}' was converted with {setting}={settings[setting]!r}",
                   f"convert it again with that setting, or pass --set data.{key}={settings[setting]}")  # fmt: skip
        setattr(section, key, settings[setting])
    protocol = section.split_protocol
    if protocol is not None and "split_protocol" in settings and protocol != settings["split_protocol"]:
        used = settings["split_protocol"]
        flag = str(protocol).replace("_", "-")
        refuse("split_protocol", protocol, f"'{dataset}' was split with {used!r}",
               f"convert with --split-protocol {flag}, or pass --set data.split_protocol={used}")  # fmt: skip
    if isinstance(protocol, SplitFractions) and "fractions" in settings:
        wanted = {"fractions": protocol.fractions, "seed": protocol.seed}
        found = {"fractions": settings.get("fractions"), "seed": settings.get("seed")}
        if wanted != found:
            refuse("split_protocol", wanted, f"'{dataset}' was split with {found}", "convert with the recipe's "
                   "fractions and seed, or change data.split_protocol")  # fmt: skip
    if protocol is None and "split_protocol" in settings:
        section.split_protocol = settings["split_protocol"]
    if train_name not in data or validation_name not in data:
        missing = [name for name in (train_name, validation_name) if name not in data]
        raise ValueError(f"dataset '{dataset}' has no split {missing} (it has {sorted(data)})")
    train_split, validation_split = data[train_name], data[validation_name]
    if section.views:
        train_split = _keep_views(train_split, section.views, dataset, train_name, every_view=True)
        validation_split = _keep_views(validation_split, section.views, dataset, validation_name, every_view=False)
    checkable = ("dataset", "split_protocol", *CONVERSION_SETTINGS)
    unverified = [f"data.{key}" for key in checkable if report is None and getattr(section, key) is not None]
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
    split) each view asked for must be there. Raises `ValueError` for an unknown view, a split without views and,
    with `every_view`, a view the split lacks."""
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


def resolve_augment_on(
    augment_on: str, device: torch.device, augmentation: RadiographAugmentation, teacher_processor: Any | None = None
) -> str:
    """Where 2D training augments (`TrainingConfig.augment_on`): `none` when the recipe has no augmentation; `auto`
    is `device` on a GPU (batched there, the CPU workers only read and collate) and `cpu` elsewhere, and `cpu`
    whenever a distillation teacher reads its own pixels (see `TrainingImages`)."""
    if augmentation.is_identity:
        return "none"
    if augment_on == "auto":
        return "device" if device.type == "cuda" and teacher_processor is None else "cpu"
    return augment_on


def training_image_processor(model_type: str, preset: str, model_config: Any, resize_mode: str | None = None) -> Any:
    """The 2D image processor a run trains and validates with: the preset's, at the input of the model as built
    (`model_config.image_size` and `num_channels`, which `model.overrides` may change), with `data.resize_mode`."""
    resize = {"resize_mode": resize_mode} if resize_mode else {}
    return build_image_processor(model_type, preset=preset, size=model_config.image_size,
                                 num_channels=model_config.num_channels, **resize)  # fmt: skip


def image_inputs(
    config: TrainingConfig, model: Any, train_split: datasets.Dataset, validation_split: datasets.Dataset,
    teacher: Teacher | None, device: torch.device,
) -> Inputs:  # fmt: skip
    """2D: the image processor (at the model's `image_size` and `num_channels`), `TrainingImages` per stage
    (augmented where `config.augment_on` resolves to; the abnormal-only stages filtered; the distillation teacher's
    processor applied when it reads other pixels), validation over the findings' AUCs (loaded for `device` with
    `config.num_workers` workers) and the batch finishing for augmentation on the device. Sets the model's class
    counts (for a class-balanced loss)."""
    recipe = config.recipe
    processor = training_image_processor(config.model_type, config.built_preset, model.config, recipe.data.resize_mode)
    teacher_processor = teacher.processor if teacher is not None and not teacher.reads(processor) else None
    augmentation = augmentation_from_recipe(recipe.augmentation)
    augment_on = resolve_augment_on(config.augment_on, device, augmentation, teacher_processor)
    loader_side = "cpu" if augment_on == "none" else augment_on  # identity: read and normalised in the loader
    stage_data = []
    for stage in stages_from_recipe(recipe):
        split = train_split
        if stage.exclude_no_finding:
            keep = [i for i, empty in enumerate(_no_finding_mask(split)) if not empty]
            split = split.select(keep)
        stage_data.append(TrainingImages(split, processor, augmentation, loader_side, teacher_processor))
    eval_loader = DataLoader(
        validation_split.with_transform(eval_transform(processor)), batch_size=recipe.optimization.batch_size,
        **loader_options(config.num_workers, device),
        generator=torch.Generator(),  # starting an epoch draws its worker seed here, not from the global generator
    )  # fmt: skip
    positive_counts, num_samples = _label_counts(train_split)
    model.config.class_positive_counts, model.config.num_train_samples = positive_counts, num_samples

    def score(accelerator: Accelerator, scored: Any, loaders: list[DataLoader]) -> dict[str, float]:
        return evaluate_images(accelerator, scored, loaders[0], accelerator.unwrap_model(scored).config.id2label)

    def finish_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return finish_images(batch, processor, augmentation) if "grey_pixel_values" in batch else batch

    return Inputs(processor, stage_data, [eval_loader], score, finish_batch, augment_on)


def ct_inputs(
    config: TrainingConfig, model: Any, train_split: datasets.Dataset, validation_split: datasets.Dataset
) -> Inputs:
    """CT: (MMCAF-Net processor, training slabs per stage, no validation loader, validation scorer): one slab
    per converted row (oversampled as `data.oversample_minority` says), patient-level numbers on validation. Sets
    the model's rows per class (for a class-balanced loss); raises `ValueError` when a split holds classes the model
    does not predict."""
    recipe, preset = config.recipe, config.built_preset
    section = recipe.data
    if preset != recipe.model.preset and section.processor:
        # `--preset tiny` with a paper recipe: the slab follows the model; recipe.yaml records what was used.
        section.processor = {**section.processor, "size": model.config.image_size,
                             "num_slices": model.config.num_slices}  # fmt: skip
    processor = build_ct_processor(config.model_type, preset, model.config, section.processor, train_split)
    names = [model.config.id2label[i] for i in sorted(model.config.id2label)]
    classes = dataset_class_indices(train_split, names)
    indices = oversampled_indices(classes, names, section.oversample_minority, recipe.optimization.seed)
    counts = np.bincount(classes[indices], minlength=len(names))  # for a class-balanced loss: rows per class served
    model.config.class_positive_counts, model.config.num_train_samples = counts.tolist(), len(indices)
    augment = ct_augmentation_from_recipe(recipe.augmentation)
    slabs = CTTrainingSlabs(train_split, processor, classes, indices, augment)
    dataset_class_indices(validation_split, names)  # fail before training when validation has other classes

    def score(accelerator: Accelerator, scored: Any, loaders: list[DataLoader]) -> dict[str, float]:
        # Every process scores the whole (small) validation split: no gather, the same numbers everywhere.
        unwrapped = accelerator.unwrap_model(scored)
        return evaluate_ct(unwrapped, processor, validation_split, recipe.evaluation, accelerator.device)

    return Inputs(processor, [slabs for _ in stages_from_recipe(recipe)], [], score, lambda batch: batch, None)
