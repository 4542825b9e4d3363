"""Training augmentation from the recipe's `augmentation` section: torchvision v2 transforms of a grey 2D image, and
the rotation and sharpening of a processed CT slab."""

from __future__ import annotations

from typing import Any

import torch
from torchvision.transforms import v2

from hf_cxr.training.config import AugmentationSection, Rotation, Sharpen

# The augmentation keys a CT slab takes; the others are for 2D images.
CT_AUGMENTATIONS = ("rotate", "sharpen")


def augmentation_from_recipe(section: AugmentationSection) -> torch.nn.Module:
    """torchvision v2 transforms for a grey [1, H, W] image in [0, 1], from the recipe's `augmentation`; an entry
    with `p` 0 is left out, one with `p` below 1 is applied with that probability."""
    steps: list[Any] = []

    def maybe(transform: Any, p: float) -> Any:
        return transform if p >= 1.0 else v2.RandomApply([transform], p=p)

    if (crop := section.random_resized_crop) and crop.p > 0:
        # Crop a region and scale it back to the input size; the processor resizes to the model's size after.
        steps.append(maybe(_ResizedCrop(tuple(crop.scale), tuple(crop.ratio)), crop.p))
    if (flip := section.horizontal_flip) and flip.p > 0:
        steps.append(v2.RandomHorizontalFlip(p=flip.p))
    if (rotate := section.rotate) and rotate.p > 0:
        steps.append(maybe(v2.RandomRotation(rotate.degrees), rotate.p))
    if (affine := section.affine) and affine.p > 0:
        transform = v2.RandomAffine(
            degrees=0, translate=tuple(affine.translate), scale=tuple(affine.scale), shear=affine.shear or None
        )
        steps.append(maybe(transform, affine.p))
    if (elastic := section.elastic) and elastic.p > 0:
        steps.append(maybe(v2.ElasticTransform(alpha=elastic.alpha, sigma=elastic.sigma), elastic.p))
    if (blur := section.gaussian_blur) and blur.p > 0:
        steps.append(maybe(v2.GaussianBlur(blur.kernel_size, sigma=tuple(blur.sigma)), blur.p))
    return v2.Compose(steps) if steps else v2.Identity()


class _ResizedCrop(torch.nn.Module):
    """RandomResizedCrop back to the input's own size (the processor resizes to the model's size later)."""

    def __init__(self, scale: tuple[float, float], ratio: tuple[float, float]) -> None:
        super().__init__()
        self.scale, self.ratio = scale, ratio

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return v2.RandomResizedCrop(tuple(image.shape[-2:]), scale=self.scale, ratio=self.ratio)(image)


def ct_augmentation_from_recipe(section: AugmentationSection) -> torch.nn.Module:
    """Augmentation of one processed CT slab [1, D, H, W] (already windowed and normalised) from the recipe:
    `rotate` (every slice by the same in-plane angle; the fill is the slab's darkest value) and `sharpen` (an
    unsharp blend `x + alpha (sharp(x) - x)`, alpha uniform in the given range). Raises `ValueError` for a 2D-only
    augmentation."""
    unsupported = sorted(
        name for name in AugmentationSection.__dataclass_fields__ if name not in CT_AUGMENTATIONS
        and getattr(section, name) is not None
    )  # fmt: skip
    if unsupported:
        raise ValueError(f"augmentation {unsupported} is not supported for CT slabs; use rotate and sharpen")
    return _CTAugmentation(section.rotate, section.sharpen)


class _CTAugmentation(torch.nn.Module):
    """Random axial rotation and sharpening of a [1, D, H, W] slab (see `ct_augmentation_from_recipe`)."""

    def __init__(self, rotate: Rotation | None, sharpen: Sharpen | None) -> None:
        super().__init__()
        self.degrees = float(rotate.degrees) if rotate is not None else 0.0
        self.rotate_p = float(rotate.p) if rotate is not None and self.degrees else 0.0
        self.alpha = tuple(float(a) for a in sharpen.alpha) if sharpen is not None else (0.0, 0.0)
        self.sharpen_p = float(sharpen.p) if sharpen is not None and max(self.alpha) > 0 else 0.0

    def forward(self, slab: torch.Tensor) -> torch.Tensor:
        if self.rotate_p and torch.rand(()) < self.rotate_p:
            angle = float(torch.empty(()).uniform_(-self.degrees, self.degrees))
            slab = v2.functional.rotate(slab, angle, fill=float(slab.min()))
        if self.sharpen_p and torch.rand(()) < self.sharpen_p:
            alpha = float(torch.empty(()).uniform_(*self.alpha))
            kernel = torch.tensor([[0.0, -1.0, 0.0], [-1.0, 5.0, -1.0], [0.0, -1.0, 0.0]]).view(1, 1, 3, 3)
            slices = slab.reshape(-1, 1, *slab.shape[-2:])
            sharp = torch.nn.functional.conv2d(torch.nn.functional.pad(slices, (1, 1, 1, 1), mode="replicate"), kernel)
            low, high = slab.min(), slab.max()
            slab = (slab + alpha * (sharp.reshape(slab.shape) - slab)).clamp(low, high)
        return slab
