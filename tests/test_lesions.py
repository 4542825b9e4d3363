"""Simulated findings (`hf_cxr.benchmarks.lesions`): exact ground truth, contrast, seeding and the dataset's
prevalence."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from hf_cxr.benchmarks.lesions import (
    LUNG_ELLIPSES,
    blunt_costophrenic_angle,
    box_mask,
    in_lung_prior,
    insert_nodule,
    insert_opacity,
    insert_square,
    make_learnability_dataset,
    mm_to_pixels,
    no_finding_images,
    sample_lung_position,
    train_planted_signal_model,
)
from hf_cxr.sample import SAMPLE_DIR

# At the bundled sample's 128 px, the default 2-mm nodules are under a pixel (3.35 mm per pixel).
SIZES = {"nodule": (6.0, 15.0), "lucency": (6.0, 15.0)}


def grey(value: float = 0.5, shape: tuple[int, int] = (64, 80)) -> np.ndarray:
    return np.full(shape, value, dtype=np.float32)


def centroid(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    return float(xs.mean()), float(ys.mean())


@pytest.fixture(scope="module")
def backgrounds() -> list[np.ndarray]:
    return no_finding_images()


def test_round_nodule_mask_is_the_requested_disc_and_peak_is_the_contrast() -> None:
    result = insert_nodule(grey(), (30.0, 25.0), 10.0, 0.2)
    rows, cols = np.indices(result.mask.shape)
    assert np.array_equal(result.mask, (cols - 30) ** 2 + (rows - 25) ** 2 <= 25)
    assert abs(result.mask.sum() - math.pi * 25) / (math.pi * 25) < 0.05
    assert centroid(result.mask) == (30.0, 25.0)
    assert result.box == (25, 20, 36, 31)
    change = result.image - 0.5
    assert change[25, 30] == pytest.approx(0.2, abs=1e-6) and change.max() == change[25, 30]
    assert change[~result.mask].max() < 0.1 + 1e-6 <= change[result.mask].min() + 2e-6  # half the peak at the edge
    assert result.image.dtype == np.float32


def test_seeded_nodule_keeps_area_and_centre_and_differs_across_seeds() -> None:
    masks = []
    for seed in range(5):
        result = insert_nodule(grey(), (40.3, 30.6), 16.0, 0.15, np.random.default_rng(seed))
        area = math.pi * 64
        assert abs(result.mask.sum() - area) / area < 0.05
        x, y = centroid(result.mask)
        assert abs(x - 40.3) < 0.5 and abs(y - 30.6) < 0.5
        again = insert_nodule(grey(), (40.3, 30.6), 16.0, 0.15, np.random.default_rng(seed))
        assert np.array_equal(result.image, again.image)
        masks.append(result.mask)
    assert len({mask.tobytes() for mask in masks}) == 5


def test_contrast_sign_and_clipping_keep_values_in_unit_range() -> None:
    darker = insert_nodule(grey(), (30, 30), 8, -0.3)
    assert darker.image[30, 30] == pytest.approx(0.2, abs=1e-6) and darker.image.max() == pytest.approx(0.5)
    bright_on_white = insert_nodule(grey(0.9), (30, 30), 8, 0.5)
    assert bright_on_white.image.max() == 1.0 and bright_on_white.image.min() == pytest.approx(0.9)
    dark_on_black = insert_opacity(grey(0.05), (40, 30), 20, -0.4, np.random.default_rng(0))
    assert dark_on_black.image.min() == 0.0 and dark_on_black.image.max() <= 0.05 + 1e-7


def test_opacity_mask_contains_its_core_and_stays_near_the_centre() -> None:
    rows, cols = np.indices((64, 80))
    distance = np.hypot(cols - 40, rows - 32)
    images, irregular = set(), 0
    for seed in range(4):
        result = insert_opacity(grey(), (40, 32), 30, 0.1, np.random.default_rng(seed))
        assert result.mask[distance <= 15].all() and not result.mask[distance > 0.65 * 30].any()
        assert result.image[32, 40] == pytest.approx(0.6, abs=1e-6)
        images.add(result.image.tobytes())
        irregular += not np.array_equal(result.mask, distance <= 15)
    assert len(images) == 4 and irregular >= 2  # the lobes follow the seed and reach beyond the core


def test_effusion_fills_the_named_sides_lower_lateral_corner() -> None:
    image = grey(0.4, (128, 128))
    for side, image_half in (("right", slice(0, 64)), ("left", slice(64, 128))):
        result = blunt_costophrenic_angle(image, side, 15, 0.3)
        cx, cy, _, ay = LUNG_ELLIPSES[side]
        base = (cy + ay) * 128
        ys, xs = np.nonzero(result.mask)
        assert result.mask[:, image_half].sum() == result.mask.sum() > 0
        assert ys.max() < base and base - 15 - 1 <= ys.min() <= base - 15 + 2  # the meniscus climbs 15 px
        # The fluid is highest at the chest wall: its top row sits at the lateral end.
        lateral_x = xs[ys == ys.min()].mean()
        assert (lateral_x < cx * 128) if side == "right" else (lateral_x > cx * 128)
        assert result.image.max() == pytest.approx(0.7, abs=1e-6) and np.all(result.image[~result.mask] < 0.55 + 1e-6)


def test_square_adds_contrast_or_raises_to_a_floor() -> None:
    image = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    added = insert_square(image, (10, 20, 30, 25), 0.1)
    assert added.mask.sum() == 20 * 5 and added.box == (10, 20, 30, 25)
    assert added.mask[20:25, 10:30].all()
    assert np.allclose(added.image[added.mask], np.minimum(image[added.mask] + 0.1, 1.0))
    assert np.array_equal(added.image[~added.mask], image[~added.mask])
    floored = insert_square(image, (10, 20, 30, 25), at_least=0.95)
    assert np.array_equal(floored.image[added.mask], np.maximum(image[added.mask], np.float32(0.95)))
    assert np.array_equal(box_mask((64, 64), (10, 20, 30, 25)), added.mask)


def test_mm_to_pixels_uses_nih_spacing() -> None:
    assert mm_to_pixels(0.143 * 3000 / 1024, 1024) == pytest.approx(1.0)
    assert mm_to_pixels(10, 128) == pytest.approx(10 / 0.143 * 128 / 3000)
    assert mm_to_pixels(10, 512, pixel_spacing_mm=0.2, original_size=2000) == pytest.approx(12.8)


def test_sampled_positions_lie_in_the_lung_prior_and_use_both_lungs() -> None:
    rng = np.random.default_rng(0)
    points = np.array([sample_lung_position((128, 100), rng, margin_px=4.0) for _ in range(500)])
    assert in_lung_prior(points[:, 0], points[:, 1], (128, 100)).all()
    # The margin keeps a disc of radius 4 px around each point inside the prior too.
    for dx, dy in ((4, 0), (-4, 0), (0, 4), (0, -4)):
        assert in_lung_prior(points[:, 0] + dx, points[:, 1] + dy, (128, 100)).all()
    left_of_middle = (points[:, 0] < 50).mean()
    assert 0.4 < left_of_middle < 0.6
    assert not in_lung_prior(50.0, 64.0, (128, 100))  # the mediastinum
    assert not in_lung_prior(50.0, 5.0, (128, 100))  # the neck
    again = np.array([sample_lung_position((128, 100), np.random.default_rng(0), margin_px=4.0) for _ in range(1)])
    assert np.array_equal(again[0], points[0])


def test_no_finding_images_are_the_samples_no_finding_rows(backgrounds) -> None:
    with (SAMPLE_DIR / "labels.csv").open(newline="") as handle:
        expected = sum(row["No Finding"] == "1" for row in csv.DictReader(handle))
    assert len(backgrounds) == expected == 67
    assert all(image.shape == (128, 128) and image.dtype == np.float32 for image in backgrounds)


def test_dataset_labels_match_masks_and_boxes(backgrounds) -> None:
    dataset = make_learnability_dataset(backgrounds, size_mm=SIZES, num_samples=60, seed=3).with_format("numpy")
    names = dataset.features["findings"].feature.names
    assert names == ["Nodule", "Opacity", "Effusion", "Lucency"]
    for record in dataset:
        labels, masks, boxes = record["labels"], record["masks"], record["boxes"]
        base = backgrounds[record["base_index"]]
        image = record["image"]
        assert image.min() >= 0.0 and image.max() <= 1.0
        assert list(record["findings"]) == [i for i in range(4) if labels[i] == 1.0]
        for i in range(4):
            if labels[i]:
                ys, xs = np.nonzero(masks[i])
                assert list(boxes[i]) == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
                assert not np.isnan(record["size_mm"][i]) and np.sign(record["contrast"][i]) == (-1 if i == 3 else 1)
            else:
                assert not masks[i].any() and list(boxes[i]) == [-1, -1, -1, -1] and np.isnan(record["size_mm"][i])
        assert np.array_equal(image, base) == (labels.sum() == 0)


def test_dataset_is_deterministic_for_a_seed_and_extends_stably(backgrounds) -> None:
    first = make_learnability_dataset(backgrounds, size_mm=SIZES, num_samples=30, seed=7).with_format("numpy")
    again = make_learnability_dataset(backgrounds, size_mm=SIZES, num_samples=30, seed=7).with_format("numpy")
    longer = make_learnability_dataset(backgrounds, size_mm=SIZES, num_samples=50, seed=7).with_format("numpy")
    other = make_learnability_dataset(backgrounds, size_mm=SIZES, num_samples=30, seed=8).with_format("numpy")
    for column in ("image", "labels", "masks", "boxes"):
        assert np.array_equal(first[column], again[column])
        assert np.array_equal(first[column], longer[:30][column])
    assert not np.array_equal(first["image"], other["image"])
    assert not np.array_equal(first["labels"], other["labels"])


def test_rare_finding_prevalence(backgrounds) -> None:
    dataset = make_learnability_dataset(backgrounds, size_mm=SIZES, num_samples=400, seed=0)
    counts = np.asarray(dataset["labels"]).sum(axis=0)
    for count, rate in zip(counts, (0.3, 0.3, 0.3, 0.02), strict=True):
        assert abs(count - 400 * rate) <= 3 * math.sqrt(400 * rate * (1 - rate))
    # The exact counts for seed 0, recorded when written: a change means the generator's draws changed.
    assert counts.tolist() == [122, 113, 121, 12]
    rare_only = make_learnability_dataset(
        backgrounds, findings=["lucency"], prevalence={"lucency": 0.5}, size_mm={"lucency": 8.0}, num_samples=40
    )
    assert dataset.features["findings"].feature.names[3] == rare_only.features["findings"].feature.names[0]
    assert 10 <= np.asarray(rare_only["labels"]).sum() <= 30


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda: insert_nodule(grey(), (30, 30), 0.5, 0.2), "diameter_px"),
        (lambda: insert_nodule(grey(), (300, 30), 5, 0.2), "center"),
        (lambda: insert_nodule(grey(), (30, 30), 5, 1.5), "contrast"),
        (lambda: insert_nodule(grey() * 3, (30, 30), 5, 0.2), "image"),
        (lambda: insert_nodule(np.zeros((4, 4, 3), np.float32), (1, 1), 2, 0.2), "image"),
        (lambda: insert_nodule(grey(), (30, 30), 5, 0.2, rng=0), "rng"),
        (lambda: insert_opacity(grey(), (30, 30), 1, 0.2), "size_px"),
        (lambda: blunt_costophrenic_angle(grey(), "middle", 5, 0.2), "side"),
        (lambda: blunt_costophrenic_angle(grey(), "left", 0, 0.2), "height_px"),
        (lambda: insert_square(grey(), (10, 10, 100, 20)), "box"),
        (lambda: insert_square(grey(), (10, 10, 20, 20), at_least=2.0), "at_least"),
        (lambda: mm_to_pixels(-1, 128), "mm"),
        (lambda: mm_to_pixels(1, 128, pixel_spacing_mm=0), "pixel_spacing_mm"),
        (lambda: sample_lung_position((64, 64), np.random.default_rng(0), margin_px=40), "margin_px"),
        (lambda: make_learnability_dataset([grey()], findings=["tumour"]), "findings"),
        (lambda: make_learnability_dataset([grey()], prevalence={"nodule": 1.5}, size_mm=SIZES), "prevalence"),
        (lambda: make_learnability_dataset([grey()], prevalence={"cyst": 0.1}), "prevalence"),
        (lambda: make_learnability_dataset([grey(0.5, (128, 128))]), "size_mm"),
        (lambda: make_learnability_dataset([grey()], size_mm={**SIZES, "opacity": (80, 40)}), "size_mm"),
        (lambda: make_learnability_dataset([grey()], size_mm=SIZES, contrast={"nodule": 3.0}), "contrast"),
        (lambda: make_learnability_dataset([grey(), grey(0.5, (32, 32))], size_mm=SIZES), "images"),
        (lambda: make_learnability_dataset([], size_mm=SIZES), "images"),
        (lambda: make_learnability_dataset([grey()], size_mm=SIZES, num_samples=0), "num_samples"),
    ],
)
def test_bad_arguments_name_the_argument(call, argument: str) -> None:
    with pytest.raises(ValueError, match=rf"^{argument}"):
        call()


def test_backgrounds_from_a_converted_dataset_are_its_no_finding_pa_images(tmp_path) -> None:
    import datasets
    from conftest import NIH_DIR

    from hf_cxr.benchmarks.lesions import no_finding_images_from_dataset, resize_square
    from hf_cxr.imaging import load_radiograph

    paths = sorted((NIH_DIR / "images").glob("*.png"))[:6]
    findings = ["No Finding", "Mass", "No Finding", "No Finding", "Effusion|Mass", "No Finding"]
    views = ["PA", "PA", "AP", "PA", "PA", "PA"]
    split = datasets.Dataset.from_dict(
        {"image": [str(path) for path in paths], "finding_labels": findings, "view_position": views}
    ).cast_column("image", datasets.Image())
    folder = tmp_path / "converted"
    datasets.DatasetDict({"train": split, "test": split}).save_to_disk(str(folder))

    images = no_finding_images_from_dataset(folder, image_size=32)
    expected = [resize_square(load_radiograph(paths[i]), 32) for i in (0, 3, 5)]  # No Finding and PA
    assert len(images) == 3 and all(np.array_equal(a, b) for a, b in zip(images, expected, strict=True))
    assert len(no_finding_images_from_dataset(folder, 32, splits=("train", "test"), views=("PA", "AP"))) == 8
    assert len(no_finding_images_from_dataset(folder, 32, limit=2)) == 2
    with pytest.raises(ValueError, match="has no split 'validation'"):
        no_finding_images_from_dataset(folder, 32, splits=("validation",))
    with pytest.raises(ValueError, match=r"no 'No Finding' image of views \['LL'\]"):
        no_finding_images_from_dataset(folder, 32, views=("LL",))
    datasets.DatasetDict({"train": split.remove_columns("view_position")}).save_to_disk(str(tmp_path / "bare"))
    with pytest.raises(ValueError, match=r"lacks the ChestX-ray14 column\(s\) \['view_position'\]"):
        no_finding_images_from_dataset(tmp_path / "bare", 32)


def test_a_planted_signal_model_is_trained_by_the_training_loop() -> None:
    """`train_planted_signal_model` (the Grad-CAM fixture's and the predict example's model) runs `train`: the model
    comes back in eval mode with the one label, its processor at the asked size, and it scores the planted images
    above every plain one after a few steps of a square that covers a quarter of the image (after one step the plain
    images still score 0.46 on average; after 12, 0.16)."""
    images = [grey(0.3 + 0.02 * index, (64, 64)) for index in range(8)]

    def plant(image: np.ndarray) -> np.ndarray:
        return insert_square(image, (16, 16, 48, 48), at_least=0.95).image

    model, processor = train_planted_signal_model(images, plant, label="Square", image_size=64, steps=12, seed=1)
    assert not model.training and model.config.id2label == {0: "Square"} and model.config.image_size == 64
    assert processor.size == {"height": 64, "width": 64}
    with torch.no_grad():
        planted = model(**processor([plant(image) for image in images], return_tensors="pt")).logits.sigmoid()
        plain = model(**processor(images, return_tensors="pt")).logits.sigmoid()
    assert planted.min() > plain.max() and plain.mean() < 0.3, (planted, plain)
