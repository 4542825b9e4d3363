"""Simulated findings inserted into real radiographs, with exact ground truth (issue 9's learnability benchmark).

A model that cannot find a lesion whose position, size and contrast are known exactly will not find real ones,
so these generators give a sanity check that runs anywhere: take real "No Finding" radiographs, insert findings,
and the labels, masks and boxes are exact by construction.

Conventions, shared with `hf_cxr.inference.explain`:

* images are grey float32 `[H, W]` arrays in `[0, 1]`, as `hf_cxr.imaging.load_radiograph` returns them;
* points are `(x, y)` in pixels (x = column, y = row, floats allowed, pixel centres at integers);
* boxes are `(x0, y0, x1, y1)` integer pixel bounds, end-exclusive, so `image[y0:y1, x0:x1]` is the box and
  `hf_cxr.inference.explain.overlay(..., boxes=[box])` draws it;
* a lesion's mask is where its inserted signal is at least half its peak; `contrast` is the signed change of
  intensity at the peak (positive brighter, i.e. more opaque), before clipping to `[0, 1]`.

Sides follow the patient, as radiologists name them: on a PA film the patient's right lung is on the image's left.
"""

from __future__ import annotations

import csv
import math
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from tqdm.auto import tqdm

from hf_cxr.imaging import load_radiograph
from hf_cxr.sample import SAMPLE_DIR

# NIH ChestX-ray14's Data_Entry_2017 lists the originals' pixel spacing, nearly always 0.143 mm (some 0.139 or
# 0.168), and sizes of about 2500-3000 px a side; NIH released them resized to 1024 x 1024. Assuming a 3000-px
# original at 0.143 mm (a 43-cm detector), a 1024-px image has 0.42 mm pixels and the bundled 128-px sample 3.35 mm.
NIH_PIXEL_SPACING_MM = 0.143
NIH_ORIGINAL_SIZE = 3000

# The lung-field prior: one ellipse per lung in normalised image coordinates, (centre x, centre y, semi-axis x,
# semi-axis y), drawn by eye around the lungs of typical NIH PA films. Coarse on purpose: it keeps simulated nodules
# off the mediastinum, the shoulders and the abdomen, not on exact anatomy.
LUNG_ELLIPSES: dict[str, tuple[float, float, float, float]] = {
    "right": (0.31, 0.47, 0.14, 0.28),  # the patient's right lung, on the image's left
    "left": (0.69, 0.48, 0.13, 0.27),
}

# The benchmark's findings: kind -> label name. "lucency" is the rare one: a dark round lesion (bulla-like), the
# nodule's mirror image, so a model must learn it from few examples rather than from a different shape.
FINDING_NAMES: dict[str, str] = {"nodule": "Nodule", "opacity": "Opacity", "effusion": "Effusion", "lucency": "Lucency"}
DEFAULT_FINDINGS: tuple[str, ...] = ("nodule", "opacity", "effusion", "lucency")
DEFAULT_PREVALENCE: dict[str, float] = {"nodule": 0.3, "opacity": 0.3, "effusion": 0.3, "lucency": 0.02}
# Sizes in mm: nodule and lucency diameter (2-8 mm as issue 9 asks), opacity diameter, effusion meniscus height.
DEFAULT_SIZE_MM: dict[str, tuple[float, float]] = {
    "nodule": (2.0, 8.0),
    "opacity": (40.0, 80.0),
    "effusion": (12.0, 30.0),  # 3 px at least on the 128-px sample (MIN_EFFUSION_HEIGHT_PX)
    "lucency": (4.0, 10.0),
}
DEFAULT_CONTRAST: dict[str, tuple[float, float]] = {
    "nodule": (0.08, 0.15),
    "opacity": (0.06, 0.12),
    "effusion": (0.15, 0.3),
    "lucency": (-0.15, -0.08),
}


# The meniscus ramps up over its outline's first two pixels, so one under 2.25 px high has no pixel at half its peak
# (measured at 48-256 px); 3 px leaves a margin.
MIN_EFFUSION_HEIGHT_PX = 3.0


@dataclass(frozen=True)
class Insertion:
    """A modified radiograph and the exact ground truth of what was inserted."""

    image: np.ndarray  # float32 [H, W] in [0, 1]
    mask: np.ndarray  # bool [H, W]: where the inserted signal is at least half its peak
    box: tuple[int, int, int, int]  # (x0, y0, x1, y1), end-exclusive: the mask's bounding box


def mm_to_pixels(
    mm: float,
    image_size: int,
    pixel_spacing_mm: float = NIH_PIXEL_SPACING_MM,
    original_size: int = NIH_ORIGINAL_SIZE,
) -> float:
    """Pixels that `mm` spans in an `image_size`-px image resized from an `original_size`-px original.

    Defaults assume NIH ChestX-ray14: originals of about 3000 px at 0.143 mm per pixel (see `NIH_PIXEL_SPACING_MM`).
    Raises `ValueError` naming the argument when `mm`, `image_size`, `pixel_spacing_mm` or `original_size` is not a
    finite positive number.
    """
    _check_positive("mm", mm)
    _check_positive("image_size", image_size)
    _check_positive("pixel_spacing_mm", pixel_spacing_mm)
    _check_positive("original_size", original_size)
    return float(mm) / pixel_spacing_mm * image_size / original_size


def in_lung_prior(x: np.ndarray | float, y: np.ndarray | float, shape: tuple[int, int]) -> np.ndarray:
    """Whether pixel points `(x, y)` lie inside either ellipse of the lung-field prior (`LUNG_ELLIPSES`)."""
    height, width = shape
    u, v = np.asarray(x, dtype=np.float64) / width, np.asarray(y, dtype=np.float64) / height
    inside = np.zeros(np.broadcast(u, v).shape, dtype=bool)
    for cx, cy, ax, ay in LUNG_ELLIPSES.values():
        inside |= ((u - cx) / ax) ** 2 + ((v - cy) / ay) ** 2 <= 1.0
    return inside


def sample_lung_position(
    shape: tuple[int, int], rng: np.random.Generator, margin_px: float = 0.0
) -> tuple[float, float]:
    """A point `(x, y)` drawn uniformly from the lung-field prior, at least `margin_px` inside its ellipse's edge.

    The margin keeps a lesion of radius `margin_px` inside the lung: each ellipse is scaled by
    1 - margin / (its shorter semi-axis), which guarantees that distance (conservatively along the longer axis;
    shrinking both semi-axes by the margin would not). The lung is chosen in proportion to its scaled area, so
    positions are uniform over the whole scaled prior. Raises `ValueError` naming the argument when `rng` is not a
    `numpy.random.Generator`, `margin_px` is negative (or NaN), or the margin leaves no room inside the prior of an
    image of `shape`.
    """
    _check_rng(rng)
    if not margin_px >= 0:
        raise ValueError(f"margin_px: must be >= 0, got {margin_px}")
    height, width = shape
    axes = {}
    for side, (_, _, ax, ay) in LUNG_ELLIPSES.items():
        scale = 1.0 - margin_px / min(ax * width, ay * height)
        axes[side] = (scale * ax * width, scale * ay * height)
    if min(min(a) for a in axes.values()) <= 0:
        raise ValueError(f"margin_px: {margin_px} px leaves no room inside the lung prior of a {width}x{height} image")
    sides = list(LUNG_ELLIPSES)
    areas = np.array([axes[side][0] * axes[side][1] for side in sides])
    side = sides[int(rng.choice(len(sides), p=areas / areas.sum()))]
    cx, cy = LUNG_ELLIPSES[side][0] * width, LUNG_ELLIPSES[side][1] * height
    radius, angle = math.sqrt(rng.random()), rng.random() * 2 * math.pi
    return cx + radius * axes[side][0] * math.cos(angle), cy + radius * axes[side][1] * math.sin(angle)


def insert_nodule(
    image: np.ndarray,
    center: tuple[float, float],
    diameter_px: float,
    contrast: float,
    rng: np.random.Generator | None = None,
) -> Insertion:
    """A soft-edged nodule: a Gaussian profile whose full width at half maximum is `diameter_px`.

    The mask (signal at least half the peak) is therefore exactly the disc of that diameter. With `rng`, the
    nodule is made slightly elliptical (axis ratio 0.8-1, random orientation) with the same area, so that
    nodules are not all perfect circles; without it, it is round. Raises `ValueError` naming the argument when
    `image` is not a grey float [H, W] array of finite values in [0, 1], `center` is not a finite (x, y) inside the
    image, `diameter_px` < 1, `contrast` is outside [-1, 1], or a given `rng` is not a `numpy.random.Generator`.
    """
    grey = _check_image(image)
    _check_point("center", center, grey.shape)
    if not diameter_px >= 1.0:
        raise ValueError(f"diameter_px: must be at least 1 pixel, got {diameter_px}")
    _check_contrast(contrast)
    ratio, angle = 1.0, 0.0
    if rng is not None:
        _check_rng(rng)
        ratio, angle = float(rng.uniform(0.8, 1.0)), float(rng.uniform(0.0, math.pi))
    radius = diameter_px / 2
    # Semi-axes radius*sqrt(ratio) and radius/sqrt(ratio): the same area as the disc of `diameter_px`.
    profile = _elliptic_gaussian(grey.shape, center, radius * math.sqrt(ratio), radius / math.sqrt(ratio), angle)
    return _apply(grey, profile, contrast)


def insert_opacity(
    image: np.ndarray,
    center: tuple[float, float],
    size_px: float,
    contrast: float,
    rng: np.random.Generator | None = None,
) -> Insertion:
    """A large diffuse opacity: a broad Gaussian (half-maximum diameter `size_px`) merged with irregular lobes.

    With `rng`, two to four smaller lobes (half-maximum diameter 0.4-0.7 x `size_px`, centres within 0.3 x
    `size_px` of `center`) make the outline irregular, as consolidation is; the profile is the maximum of the lobes,
    so the peak is at `center` and the mask contains the central disc and stays within 0.65 x `size_px` of it.
    Raises `ValueError` naming the argument when `image` is not a grey float [H, W] array of finite values in
    [0, 1], `center` is not a finite (x, y) inside the image, `size_px` < 2, `contrast` is outside [-1, 1], or a
    given `rng` is not a `numpy.random.Generator`.
    """
    grey = _check_image(image)
    _check_point("center", center, grey.shape)
    if not size_px >= 2.0:
        raise ValueError(f"size_px: must be at least 2 pixels, got {size_px}")
    _check_contrast(contrast)
    radius = size_px / 2
    profile = _elliptic_gaussian(grey.shape, center, radius, radius, 0.0)
    if rng is not None:
        _check_rng(rng)
        for _ in range(int(rng.integers(2, 5))):
            distance, direction = rng.uniform(0.0, 0.3 * size_px), rng.uniform(0.0, 2 * math.pi)
            lobe_center = (center[0] + distance * math.cos(direction), center[1] + distance * math.sin(direction))
            lobe_radius = rng.uniform(0.2, 0.35) * size_px
            profile = np.maximum(profile, _elliptic_gaussian(grey.shape, lobe_center, lobe_radius, lobe_radius, 0.0))
    return _apply(grey, profile, contrast)


def blunt_costophrenic_angle(image: np.ndarray, side: str, height_px: float, contrast: float) -> Insertion:
    """An effusion-like meniscus filling the lower lateral corner of one lung (`side`: the patient's "left"/"right").

    Fluid lies on the lung prior's lowest row (its ellipse's bottom) across the lung's width and climbs the
    lateral chest wall to `height_px` above it, thinning medially as a parabola: the upward-concave meniscus that
    blunts the costophrenic angle. Intensity ramps up over the outline's first two pixels, so the mask (half
    the peak) is the fluid region less its outermost pixel; the thin medial tail under a pixel deep is not in it.
    Raises `ValueError` naming the argument when `image` is not a grey float [H, W] array of finite values in
    [0, 1], `side` is not "left" or "right", `height_px` is not between `MIN_EFFUSION_HEIGHT_PX` and the lung
    base's row, or `contrast` is outside [-1, 1].
    """
    grey = _check_image(image)
    if side not in LUNG_ELLIPSES:
        raise ValueError(f"side: must be one of {sorted(LUNG_ELLIPSES)} (the patient's side), got {side!r}")
    height, width = grey.shape
    cx, cy, ax, ay = LUNG_ELLIPSES[side]
    base = (cy + ay) * height
    if not MIN_EFFUSION_HEIGHT_PX <= height_px <= base:
        raise ValueError(
            f"height_px: must be between {MIN_EFFUSION_HEIGHT_PX} (a meniscus with a pixel at half its peak) and "
            f"{base:.1f} (the lung base's row), got {height_px}"
        )
    _check_contrast(contrast)
    lung_width = 2 * ax * width
    lateral = (cx - ax) * width if side == "right" else (cx + ax) * width  # the patient's right is the image's left
    cols, rows = np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64)[:, None]
    medial = (cols - lateral if side == "right" else lateral - cols) / lung_width  # 0 at the chest wall, 1 medially
    surface = np.where((medial >= 0) & (medial <= 1), base - height_px * (1.0 - np.clip(medial, 0, 1)) ** 2, np.inf)
    # Depth inside the fluid (to its surface or to the base, whichever is nearer), ramped over two pixels.
    depth = np.minimum(rows - surface, base - rows)
    return _apply(grey, _smoothstep(depth / 2.0), contrast)


def insert_square(
    image: np.ndarray, box: tuple[int, int, int, int], contrast: float = 0.0, *, at_least: float | None = None
) -> Insertion:
    """A hard-edged square (or rectangle) marker: `contrast` added inside `box`, then raised to `at_least` if given.

    `at_least` makes a marker visible whatever the anatomy underneath, as the explain tests and the predict docs
    example plant it (`contrast=0, at_least=0.95`). Raises `ValueError` naming the argument when `image` is not a
    grey float [H, W] array of finite values in [0, 1], `box` is refused by `box_mask`, `contrast` is outside
    [-1, 1], or `at_least` is outside [0, 1].
    """
    grey = _check_image(image)
    mask = box_mask(grey.shape, box)
    _check_contrast(contrast)
    if at_least is not None and not 0.0 <= at_least <= 1.0:
        raise ValueError(f"at_least: must be in [0, 1], got {at_least}")
    if not mask.any():
        raise ValueError(f"box: {box} is empty")
    planted = grey.copy()
    planted[mask] = np.clip(planted[mask] + np.float32(contrast), 0.0, 1.0)
    if at_least is not None:
        planted[mask] = np.maximum(planted[mask], np.float32(at_least))
    return Insertion(planted, mask, tuple(int(v) for v in box))


def box_mask(shape: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """The boolean mask of `box` (`(x0, y0, x1, y1)`, end-exclusive integer pixels) in an image of `shape` [H, W].
    Raises `ValueError` when `box` is not 4 integers or breaks 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H (so an
    empty box is refused too)."""
    height, width = shape
    if len(box) != 4 or any(int(v) != v for v in box):
        raise ValueError(f"box: must be 4 integers (x0, y0, x1, y1), got {box}")
    x0, y0, x1, y1 = (int(v) for v in box)
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ValueError(f"box: {box} must satisfy 0 <= x0 < x1 <= {width} and 0 <= y0 < y1 <= {height}")
    mask = np.zeros(shape, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def train_planted_signal_model(
    images: Sequence[np.ndarray],
    plant: Callable[[np.ndarray], np.ndarray],
    label: str = "Planted signal",
    model_type: str = "cr_msnet",
    image_size: int = 128,
    steps: int = 60,
    batch_size: int = 16,
    learning_rate: float = 1e-3,
    seed: int = 0,
) -> tuple[Any, Any]:
    """A tiny model trained to tell `images` with `plant` applied from the same images without: a sanity check
    that a model, and its heatmaps, can find a signal whose place is known exactly. Returns (model in eval mode on
    the CPU, its image processor).

    The run is `hf_cxr.training.train` on the CPU (AdamW at a constant `learning_rate`, no augmentation, seeded
    order), with the planted and plain images written as a dataset in a temporary folder. It runs on one thread:
    CPU reductions split over more threads sum in another order, and a few dozen steps amplify that into a different
    model, so a seed gives the same model on any machine of one kind. The amplification is strong: starting weights
    changed by 1e-7 (float32 rounding), or by 1e-13 when trained in float64, give a model that is as good at the task
    but whose Grad-CAM maps differ. So the same seed gives the same model only on the same kind of CPU with the same
    torch and timm versions; a check on one such model is a check on one draw.
    """
    from hf_cxr.data.storage import encode_grey
    from hf_cxr.registry import load_model
    from hf_cxr.training import TrainingConfig, parse_recipe, train

    grey = [plant(image) for image in images] + list(images)
    split = datasets.Dataset.from_dict(
        {"image": [{"bytes": encode_grey(image), "path": None} for image in grey],
         "labels": [[1.0]] * len(images) + [[0.0]] * len(images)},
        features=datasets.Features({"image": datasets.Image(), "labels": datasets.List(datasets.Value("float32"))}),
    )  # fmt: skip
    recipe = parse_recipe({
        "model": {"preset": "tiny", "overrides": {"image_size": image_size, "labels": [label]}},
        "optimization": {"optimizer": "adamw", "learning_rate": learning_rate, "scheduler": "constant",
                         "batch_size": batch_size, "seed": seed},
    }, "planted-signal recipe")  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="hf-cxr-planted-") as folder:
            datasets.DatasetDict({"train": split, "validation": split}).save_to_disk(f"{folder}/data")
            train(TrainingConfig(
                model_type=model_type, dataset=f"{folder}/data", output_dir=Path(folder) / "run", recipe=recipe,
                max_steps=steps, eval_steps=steps, checkpointing_steps=steps, keep_checkpoints=1, log_with="none",
                use_cpu=True,
            ))  # fmt: skip
            model, processor = load_model(Path(folder) / "run", device="cpu")  # the last step: validated once
    finally:
        torch.set_num_threads(threads)
    return model, processor


def no_finding_images(folder: str | Path = SAMPLE_DIR) -> list[np.ndarray]:
    """The labelled folder's radiographs marked "No Finding" (the bundled NIH sample by default), by image name.

    These are the real backgrounds the benchmark inserts findings into: any finding the model detects was inserted.
    Raises `ValueError` when `folder` has no `labels.csv`, or the table has no rows or no "No Finding" column, and
    as `load_radiograph` does for a listed image it cannot read.
    """
    table = Path(folder) / "labels.csv"
    if not table.is_file():
        raise ValueError(f"folder: '{table}' does not exist")
    with table.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "No Finding" not in rows[0]:
        raise ValueError(f"folder: '{table}' has no 'No Finding' column")
    names = sorted(row["Image Index"] for row in rows if float(row["No Finding"]) == 1.0)
    return [load_radiograph(Path(folder) / "images" / name) for name in names]


def no_finding_images_from_dataset(
    path: str | Path,
    image_size: int,
    splits: Sequence[str] = ("train",),
    views: Sequence[str] = ("PA",),
    limit: int | None = None,
) -> list[np.ndarray]:
    """Backgrounds from a converted ChestX-ray14 dataset (`hf-cxr convert chestxray14`): its "No Finding" images
    of `views` (PA by default: the lung prior is drawn for PA films) in `splits`, in dataset order, at most `limit`,
    each resized to `image_size` x `image_size` by area averaging. More backgrounds than the bundled sample's 67
    make remembering them harder than learning the findings.

    Raises `ValueError` naming the argument when `path` holds a single `Dataset` instead of splits, a split of
    `splits` is not in it (listing those there), a split lacks the `image`, `finding_labels` or `view_position`
    column, or no image matches; and as `datasets.load_from_disk` (no dataset at `path`) and `load_radiograph`
    (an image it cannot read) do.
    """
    data = datasets.load_from_disk(str(path))
    if not isinstance(data, datasets.DatasetDict):
        raise ValueError(f"path: '{path}' holds a single Dataset, not a converted DatasetDict with splits")
    images: list[np.ndarray] = []
    for split in splits:
        if split not in data:
            raise ValueError(f"splits: '{path}' has no split {split!r}; it has {sorted(data)}")
        part = data[split]
        missing = sorted({"image", "finding_labels", "view_position"} - set(part.column_names))
        if missing:
            raise ValueError(f"path: '{path}' split {split!r} lacks the ChestX-ray14 column(s) {missing}")
        meta = part.select_columns(["finding_labels", "view_position"])
        rows = [
            index
            for index, (finding, view) in enumerate(zip(meta["finding_labels"], meta["view_position"], strict=True))
            if finding == "No Finding" and view in views
        ]
        for index in tqdm(rows, desc=f"backgrounds ({split})", unit="img", leave=False):
            if limit is not None and len(images) >= limit:
                break
            grey = load_radiograph(part[index]["image"], name=f"{path} [{split} {index}]")
            images.append(resize_square(grey, image_size))
    if not images:
        raise ValueError(f"path: '{path}' has no 'No Finding' image of views {list(views)} in splits {list(splits)}")
    return images


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """A grey [H, W] image as [size, size] float32, by area averaging (no aliasing when shrinking)."""
    if image.shape == (size, size):
        return image
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    return torch.nn.functional.interpolate(tensor, size=(size, size), mode="area").squeeze(0).squeeze(0).numpy()


def make_learnability_dataset(
    images: Sequence[np.ndarray],
    *,
    findings: Sequence[str] = DEFAULT_FINDINGS,
    prevalence: Mapping[str, float] | None = None,
    size_mm: Mapping[str, float | tuple[float, float]] | None = None,
    contrast: Mapping[str, float | tuple[float, float]] | None = None,
    num_samples: int | None = None,
    seed: int = 0,
    image_size_mm: float = NIH_PIXEL_SPACING_MM * NIH_ORIGINAL_SIZE,
) -> datasets.Dataset:
    """Real radiographs with simulated findings inserted, and exact multi-hot labels, masks and boxes.

    Sample `i` starts from `images[i % len(images)]` (all the same shape; meant to be real "No Finding" films, see
    `no_finding_images`); each finding is present independently with its `prevalence` (defaults
    `DEFAULT_PREVALENCE`: 30 % each, 2 % for the rare "lucency"), with size and contrast drawn uniformly from its
    range (a number fixes it; defaults `DEFAULT_SIZE_MM`, `DEFAULT_CONTRAST`). Nodules, lucencies and opacities sit
    inside the lung prior; effusions take a random side. Sample `i` depends only on `seed` and `i`, so a larger
    `num_samples` extends a dataset without changing its first samples.

    Millimetres become pixels assuming the image spans `image_size_mm` (NIH's 3000 px x 0.143 mm by default); at
    the bundled sample's 128 px that is 3.35 mm per pixel, too coarse for the default 2-8 mm nodules (a lesion must
    span at least one pixel, or this raises), so pass larger sizes there, e.g. `size_mm={"nodule": (6, 15)}`.

    Columns: `image` (float32 [H, W]), `labels` (float32 multi-hot in `findings` order), `findings` (the present
    findings' ids; their names are `dataset.features["findings"].feature.names`), `masks` (uint8 [F, H, W], zero
    where absent), `boxes` (`(x0, y0, x1, y1)` per finding, -1 where absent), `size_mm` and `contrast` (per finding,
    NaN where absent), `base_index` (the index into `images`).

    Raises `ValueError` naming the argument, before anything is drawn, for `findings` that are empty, repeated or
    not kinds of `FINDING_NAMES`; a `prevalence`, `size_mm` or `contrast` entry for a finding not in use; a
    prevalence outside [0, 1]; a size or contrast that is neither a number nor a finite (low, high) with low <= high;
    no `images`, one that is not a grey float [H, W] array of finite values in [0, 1], or images of different
    shapes; a `num_samples` that is not a positive integer; an `image_size_mm` or a smallest size that is not
    positive; a smallest size under what the image resolves (1 pixel; 2 for opacity, `MIN_EFFUSION_HEIGHT_PX` for
    effusion); and a contrast bound outside [-1, 1].
    """
    kinds = list(findings)
    if not kinds or len(set(kinds)) != len(kinds) or any(kind not in FINDING_NAMES for kind in kinds):
        raise ValueError(f"findings: must be distinct kinds from {sorted(FINDING_NAMES)}, got {findings}")
    rates = _per_finding("prevalence", prevalence, DEFAULT_PREVALENCE, kinds)
    for kind, rate in rates.items():
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"prevalence: {kind} must be in [0, 1], got {rate}")
    sizes = {
        kind: _range("size_mm", kind, value)
        for kind, value in _per_finding("size_mm", size_mm, DEFAULT_SIZE_MM, kinds).items()
    }
    contrasts = {
        kind: _range("contrast", kind, value)
        for kind, value in _per_finding("contrast", contrast, DEFAULT_CONTRAST, kinds).items()
    }
    pool = [_check_image(image) for image in images]
    if not pool:
        raise ValueError("images: no images given")
    shape = pool[0].shape
    if any(image.shape != shape for image in pool):
        raise ValueError(f"images: all must have the same shape, got {sorted({image.shape for image in pool})}")
    num_samples = len(pool) if num_samples is None else num_samples
    if int(num_samples) != num_samples or num_samples < 1:
        raise ValueError(f"num_samples: must be a positive integer, got {num_samples}")
    _check_positive("image_size_mm", image_size_mm)
    mm_per_px = image_size_mm / max(shape)
    for kind in kinds:
        _check_positive(f"size_mm ({kind})", sizes[kind][0])
        minimum_mm = mm_per_px * {"opacity": 2.0, "effusion": MIN_EFFUSION_HEIGHT_PX}.get(kind, 1.0)
        if sizes[kind][0] < minimum_mm:
            raise ValueError(
                f"size_mm: {kind} from {sizes[kind][0]} mm is under {minimum_mm:.2f} mm, the smallest a "
                f"{shape[1]}x{shape[0]} image resolves ({mm_per_px:.2f} mm per pixel); use larger sizes or images"
            )
        for value in contrasts[kind]:
            _check_contrast(value)

    columns: dict[str, list] = {
        name: [] for name in ("image", "labels", "findings", "masks", "boxes", "size_mm", "contrast", "base_index")
    }
    for index in range(int(num_samples)):
        rng = np.random.default_rng([seed, index])
        base = index % len(pool)
        grey = pool[base]
        present = [bool(rng.random() < rates[kind]) for kind in kinds]  # drawn first, so labels do not shift with sizes
        masks = np.zeros((len(kinds), *shape), dtype=np.uint8)
        boxes, drawn_sizes, drawn_contrasts = [], [], []
        for position, (kind, is_present) in enumerate(zip(kinds, present, strict=True)):
            if not is_present:
                boxes.append([-1, -1, -1, -1])
                drawn_sizes.append(math.nan)
                drawn_contrasts.append(math.nan)
                continue
            size = float(rng.uniform(*sizes[kind]))
            strength = float(rng.uniform(*contrasts[kind]))
            pixels = size / mm_per_px
            if kind == "effusion":
                side = str(rng.choice(sorted(LUNG_ELLIPSES)))
                inserted = blunt_costophrenic_angle(grey, side, pixels, strength)
            else:
                margin = min(pixels / 2, _largest_margin(shape))
                center = sample_lung_position(shape, rng, margin_px=margin)
                insert = insert_opacity if kind == "opacity" else insert_nodule
                inserted = insert(grey, center, pixels, strength, rng)
            grey = inserted.image
            masks[position] = inserted.mask
            boxes.append(list(inserted.box))
            drawn_sizes.append(size)
            drawn_contrasts.append(strength)
        columns["image"].append(grey)
        columns["labels"].append([float(flag) for flag in present])
        columns["findings"].append([position for position, flag in enumerate(present) if flag])
        columns["masks"].append(masks)
        columns["boxes"].append(boxes)
        columns["size_mm"].append(drawn_sizes)
        columns["contrast"].append(drawn_contrasts)
        columns["base_index"].append(base)
    count = len(kinds)
    features = datasets.Features(
        {
            "image": datasets.Array2D(shape=shape, dtype="float32"),
            "labels": datasets.List(datasets.Value("float32"), length=count),
            "findings": datasets.List(datasets.ClassLabel(names=[FINDING_NAMES[kind] for kind in kinds])),
            "masks": datasets.Array3D(shape=(count, *shape), dtype="uint8"),
            "boxes": datasets.List(datasets.List(datasets.Value("int32"), length=4), length=count),
            "size_mm": datasets.List(datasets.Value("float32"), length=count),
            "contrast": datasets.List(datasets.Value("float32"), length=count),
            "base_index": datasets.Value("int64"),
        }
    )
    return datasets.Dataset.from_dict(columns, features=features)


def _largest_margin(shape: tuple[int, int]) -> float:
    """Half the prior's smallest semi-axis in pixels: lesions wider than that are centred well inside, not inset."""
    height, width = shape
    return 0.5 * min(min(ax * width, ay * height) for _, _, ax, ay in LUNG_ELLIPSES.values())


def _elliptic_gaussian(
    shape: tuple[int, int], center: tuple[float, float], semi_x: float, semi_y: float, angle: float
) -> np.ndarray:
    """A unit-peak Gaussian that falls to exactly one half on the ellipse with these semi-axes."""
    rows, cols = np.indices(shape, dtype=np.float64)
    dx, dy = cols - center[0], rows - center[1]
    cos, sin = math.cos(angle), math.sin(angle)
    u, v = (dx * cos + dy * sin) / semi_x, (-dx * sin + dy * cos) / semi_y
    return np.exp(-math.log(2.0) * (u * u + v * v))


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _apply(grey: np.ndarray, profile: np.ndarray, contrast: float) -> Insertion:
    """Add `contrast` x `profile`, clip to [0, 1], and take the half-maximum region as the ground truth."""
    mask = profile >= 0.5
    if not mask.any():
        raise ValueError("center: the lesion falls outside the image")
    image = np.clip(grey + np.float32(contrast) * profile.astype(np.float32), 0.0, 1.0).astype(np.float32)
    ys, xs = np.nonzero(mask)
    return Insertion(image, mask, (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))


def _check_image(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.floating):
        raise ValueError(
            f"image: must be a grey float [H, W] array (load_radiograph's), got {array.dtype} {array.shape}"
        )
    if array.size == 0 or not np.isfinite(array).all() or array.min() < 0.0 or array.max() > 1.0:
        raise ValueError("image: values must be finite and in [0, 1]")
    return array.astype(np.float32, copy=False)


def _check_point(name: str, point: tuple[float, float], shape: tuple[int, int]) -> None:
    if len(point) != 2 or not all(math.isfinite(v) for v in point):
        raise ValueError(f"{name}: must be a finite (x, y) pair, got {point}")
    if not (0 <= point[0] <= shape[1] - 1 and 0 <= point[1] <= shape[0] - 1):
        raise ValueError(f"{name}: {point} lies outside the {shape[1]}x{shape[0]} image")


def _check_contrast(contrast: float) -> None:
    if not (math.isfinite(contrast) and -1.0 <= contrast <= 1.0):
        raise ValueError(f"contrast: must be in [-1, 1], got {contrast}")


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, int | float | np.number) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name}: must be a positive number, got {value}")


def _check_rng(rng: np.random.Generator) -> None:
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng: must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng)}")


def _per_finding(name: str, given: Mapping | None, defaults: Mapping, kinds: list[str]) -> dict:
    """Defaults overridden by `given`, which may name only findings in use."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(kinds))
    if unknown:
        raise ValueError(f"{name}: {unknown} are not among the findings {kinds}")
    return {kind: given.get(kind, defaults[kind]) for kind in kinds}


def _range(name: str, kind: str, value: float | tuple[float, float]) -> tuple[float, float]:
    bounds = (value, value) if isinstance(value, int | float) else tuple(value)
    if len(bounds) != 2:
        raise ValueError(f"{name}: {kind} must be a number or a (low, high) range, got {value}")
    low, high = bounds
    if not (math.isfinite(low) and math.isfinite(high) and low <= high):
        raise ValueError(f"{name}: {kind} must be a number or a (low, high) range, got {value}")
    return float(low), float(high)
