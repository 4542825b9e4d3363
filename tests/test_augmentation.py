"""The batched 2D augmentation (`RadiographAugmentation`) against torchvision v2's transforms, one image at a time.

torchvision draws one set of parameters per call, so the reference augments image by image; the batched module
draws per image from its seed. The two must give one image the same distribution: each statistic of many augmented
copies of one test image is compared with a two-sample Kolmogorov-Smirnov test. The test image is not square
(64 x 96) and not symmetric, so a width/height or sign mix-up moves a statistic."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp

from hf_cxr.training.augment import RadiographAugmentation, augmentation_from_recipe, per_image_augmentation
from hf_cxr.training.config import parse_recipe

SAMPLES = 400
HEIGHT, WIDTH = 64, 96


def radiograph_like() -> torch.Tensor:
    """[1, 1, 64, 96]: a grey ramp (0.3 to 0.7, left to right) with a bright off-centre disc and a dark bar."""
    ys, xs = torch.meshgrid(torch.arange(HEIGHT) + 0.5, torch.arange(WIDTH) + 0.5, indexing="ij")
    image = 0.3 + 0.4 * xs / WIDTH
    image = torch.where((xs - 30) ** 2 + (ys - 22) ** 2 < 10**2, 0.95, image)
    image = torch.where((xs > 60) & (xs < 66) & (ys > 30), 0.15, image)
    return image[None, None].float()


def statistics(images: torch.Tensor) -> dict[str, np.ndarray]:
    """Per image of [N, 1, H, W]: mean, intensity-weighted centroid and spread along x and y, black share (what
    no step kept), and sharpness (mean absolute 4-neighbour Laplacian)."""
    images = images[:, 0].double()
    ys, xs = torch.meshgrid(torch.arange(HEIGHT).double(), torch.arange(WIDTH).double(), indexing="ij")
    mass = images.sum(dim=(1, 2))
    centre_x = (images * xs).sum(dim=(1, 2)) / mass
    centre_y = (images * ys).sum(dim=(1, 2)) / mass
    laplacian = 4 * images[:, 1:-1, 1:-1] - images[:, :-2, 1:-1] - images[:, 2:, 1:-1] - images[:, 1:-1, :-2]
    laplacian = laplacian - images[:, 1:-1, 2:]
    values = {
        "mean": images.mean(dim=(1, 2)),
        "centre_x": centre_x,
        "centre_y": centre_y,
        "spread_x": ((images * (xs - centre_x[:, None, None]) ** 2).sum(dim=(1, 2)) / mass).sqrt(),
        "spread_y": ((images * (ys - centre_y[:, None, None]) ** 2).sum(dim=(1, 2)) / mass).sqrt(),
        "black": (images < 0.05).double().mean(dim=(1, 2)),
        "sharpness": laplacian.abs().mean(dim=(1, 2)),
    }
    # Rounded: float noise (1e-9) between two ways of computing an unchanged image must not count as a difference.
    return {name: np.round(value.numpy(), 5) for name, value in values.items()}


def reference_samples(section: Any) -> torch.Tensor:
    torch.manual_seed(0)
    reference = per_image_augmentation(section)
    image = radiograph_like()[0]
    return torch.stack([reference(image) for _ in range(SAMPLES)])


def batched_samples(section: Any) -> torch.Tensor:
    images = radiograph_like().expand(SAMPLES, 1, HEIGHT, WIDTH).contiguous()
    return augmentation_from_recipe(section)(images, seeds=range(1000, 1000 + SAMPLES))


# One recipe step at a time (each moves the statistics it should), then the MXA-EfficientViT recipe's whole set.
# `sharpness` is compared where no geometric step resamples: torchvision resamples once per step, the batched module
# once for all, so the composed recipes are sharper here by design.
CASES = {
    "crop": ({"random_resized_crop": {"scale": [0.3, 1.0], "ratio": [0.5, 2.0], "p": 0.8}}, True),
    "crop, no try fits": ({"random_resized_crop": {"scale": [0.9, 1.0], "ratio": [3.0, 4.0], "p": 1.0}}, True),
    "flip": ({"horizontal_flip": {"p": 0.5}}, True),
    "rotate": ({"rotate": {"degrees": 30, "p": 0.7}}, False),
    "affine": ({"affine": {"translate": [0.1, 0.2], "scale": [0.7, 1.2], "shear": 15, "p": 0.8}}, False),
    "elastic": ({"elastic": {"alpha": 40.0, "sigma": 4.0, "p": 0.6}}, False),
    "blur": ({"gaussian_blur": {"kernel_size": 5, "sigma": [0.1, 2.0], "p": 0.6}}, True),
    "mxa recipe": (
        {
            "random_resized_crop": {"scale": [0.8, 1.0], "ratio": [0.75, 1.3333], "p": 1.0},
            "horizontal_flip": {"p": 0.5},
            "rotate": {"degrees": 10, "p": 0.5},
            "affine": {"translate": [0.05, 0.05], "scale": [0.95, 1.05], "shear": 0, "p": 0.5},
            "elastic": {"alpha": 30.0, "sigma": 5.0, "p": 0.2},
            "gaussian_blur": {"kernel_size": 3, "sigma": [0.1, 1.0], "p": 0.2},
        },
        False,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_image_has_torchvisions_distribution(case: str) -> None:
    augmentation, compare_sharpness = CASES[case]
    section = parse_recipe({"augmentation": augmentation}).augmentation
    reference, batched = statistics(reference_samples(section)), statistics(batched_samples(section))
    for name in reference:
        if name == "sharpness" and not compare_sharpness:
            continue
        result = ks_2samp(reference[name], batched[name])
        assert result.pvalue > 1e-3, (case, name, result, reference[name].mean(), batched[name].mean())


def test_a_wrong_distribution_is_seen() -> None:
    """The comparison has the power to see a mistake: a 50% larger shift range is told apart."""
    section = parse_recipe({"augmentation": {"affine": {"translate": [0.1, 0.2], "p": 1.0}}}).augmentation
    wider = parse_recipe({"augmentation": {"affine": {"translate": [0.15, 0.3], "p": 1.0}}}).augmentation
    reference, batched = statistics(reference_samples(section)), statistics(batched_samples(wider))
    assert min(ks_2samp(reference[name], batched[name]).pvalue for name in ("centre_x", "centre_y")) < 1e-3


def test_parameters_come_from_each_images_seed() -> None:
    """Per-image draws: one image's result depends on its seed only (not on the batch around it), identical images
    in one batch differ, and an image without any step applied is returned exactly."""
    section = parse_recipe({"augmentation": CASES["mxa recipe"][0]}).augmentation
    augment = augmentation_from_recipe(section)
    image = radiograph_like()
    batch = augment(image.expand(4, 1, HEIGHT, WIDTH), seeds=[7, 8, 9, 10])
    alone = augment(image, seeds=[9])
    torch.testing.assert_close(batch[2:3], alone, rtol=0, atol=0)
    assert not torch.equal(batch[0], batch[1])
    assert batch.min() >= 0 and batch.max() <= 1

    nothing = parse_recipe({"augmentation": {"rotate": {"degrees": 10, "p": 0.0}}}).augmentation
    assert augmentation_from_recipe(nothing).is_identity
    torch.testing.assert_close(augmentation_from_recipe(nothing)(image, seeds=[1]), image, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"grey images \[B, 1, H, W\] and B seeds"):
        augment(image, seeds=[1, 2])


def test_the_identity_steps_leave_the_image_exact() -> None:
    """A crop of the whole image, no flip and a zero-width blur resample at pixel centres: the input comes back."""
    section = RadiographAugmentation(parse_recipe({"augmentation": {"horizontal_flip": {"p": 1.0}}}).augmentation)
    image = radiograph_like()
    torch.testing.assert_close(section(section(image, seeds=[3]), seeds=[4]), image, rtol=0, atol=1e-5)
    torch.testing.assert_close(section(image, seeds=[3]), image.flip(-1), rtol=0, atol=1e-5)
