"""Training augmentation from the recipe's `augmentation` section: a batched, per-image random transform of grey 2D
radiographs that runs where the batch is (in the DataLoader workers on CPU, or on the training GPU), and the rotation
and sharpening of a processed CT slab."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from hf_cxr.training.config import Affine, AugmentationSection, Rotation, Sharpen

# The augmentation keys a CT slab takes; the others are for 2D images.
CT_AUGMENTATIONS = ("rotate", "sharpen")
# Each image's uniform draws in [0, 1) from its seed: 10 crop tries x (area share, aspect ratio), then one slot per
# parameter below; a parameter always reads its own slot, whichever steps the recipe turns on.
_CROP_TRIES = 10
_SLOTS = ("crop_p", "crop_top", "crop_left", "flip", "rotate_p", "angle", "affine_p", "shift_x", "shift_y", "scale",
          "shear", "elastic_p", "blur_p", "blur_sigma")  # fmt: skip
_SLOT = {name: 2 * _CROP_TRIES + index for index, name in enumerate(_SLOTS)}
_DRAWS = 2 * _CROP_TRIES + len(_SLOTS)


def mild_geometric_augmentation() -> AugmentationSection:
    """The CR-MSNet and MA-MSF recipes' augmentation (ours: those papers are silent), the default of
    `hf_cxr.data.train_transform`: a rotation up to 7 degrees and an affine (shift up to 5 %, scale 0.95-1.05), each
    with probability 0.5; no flips (left/right carries anatomy: situs, cardiomegaly)."""
    return AugmentationSection(
        rotate=Rotation(degrees=7.0, p=0.5), affine=Affine(translate=(0.05, 0.05), scale=(0.95, 1.05), p=0.5)
    )


def per_image_augmentation(section: AugmentationSection) -> v2.Compose:
    """The recipe's 2D augmentation as torchvision v2 transforms of one grey [1, H, W] image (each drawing its
    parameters from torch's global generator; rotation and affine bilinear): the definition `RadiographAugmentation`
    follows, and what `hf_cxr.data.train_transform(processor, augmentation=...)` takes for a `Trainer` run."""
    steps: list[Any] = []

    def maybe(transform: Any, p: float) -> Any:
        return transform if p >= 1.0 else v2.RandomApply([transform], p=p)

    bilinear = v2.InterpolationMode.BILINEAR
    if crop := _active(section.random_resized_crop):
        steps.append(maybe(_ResizedCrop(tuple(crop.scale), tuple(crop.ratio)), crop.p))
    if section.horizontal_flip and section.horizontal_flip.p > 0:
        steps.append(v2.RandomHorizontalFlip(p=section.horizontal_flip.p))
    if rotate := _active(section.rotate):
        steps.append(maybe(v2.RandomRotation(rotate.degrees, interpolation=bilinear), rotate.p))
    if affine := _active(section.affine):
        transform = v2.RandomAffine(degrees=0, translate=tuple(affine.translate), scale=tuple(affine.scale),
                                    shear=affine.shear or None, interpolation=bilinear)  # fmt: skip
        steps.append(maybe(transform, affine.p))
    if elastic := _active(section.elastic):
        steps.append(maybe(v2.ElasticTransform(alpha=elastic.alpha, sigma=elastic.sigma), elastic.p))
    if blur := _active(section.gaussian_blur):
        steps.append(maybe(v2.GaussianBlur(blur.kernel_size, sigma=tuple(blur.sigma)), blur.p))
    return v2.Compose(steps)


class _ResizedCrop(torch.nn.Module):
    """torchvision's RandomResizedCrop back to the input's own size."""

    def __init__(self, scale: tuple[float, float], ratio: tuple[float, float]) -> None:
        super().__init__()
        self.scale, self.ratio = scale, ratio

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return v2.RandomResizedCrop(tuple(image.shape[-2:]), scale=self.scale, ratio=self.ratio)(image)


def augmentation_from_recipe(section: AugmentationSection) -> RadiographAugmentation:
    """The recipe's 2D augmentation as a `RadiographAugmentation` (an entry with `p` 0 is left out)."""
    return RadiographAugmentation(section)


class RadiographAugmentation(torch.nn.Module):
    """The recipe's 2D augmentation applied to a batch of grey images, with parameters drawn per image.

    Each image gets, in this order and each with its own probability `p`: `random_resized_crop` (a region, scaled
    back to the image's size), `horizontal_flip`, `rotate` (uniform in [-degrees, degrees] about the centre),
    `affine` (integer-pixel shift up to `translate` x width/height, scale, x-shear), `elastic` (a smooth random
    displacement field) and `gaussian_blur` (sigma uniform in its range). The parameters follow torchvision v2's
    `RandomResizedCrop`, `RandomHorizontalFlip`, `RandomRotation`, `RandomAffine`, `ElasticTransform` and
    `GaussianBlur` draw for draw, so one image has the distribution those transforms give it one at a time
    (`tests/test_augmentation.py` compares the two). The geometric steps are composed into one bilinear resampling
    of the input, weighted by how much of each step's sampling fell inside its image (each transform's fill is 0:
    black, with the one-pixel bilinear edge a step-by-step resampling gives), then the blur is applied.

    torchvision's transforms draw one set of parameters for a whole batch; here every image has its own, drawn from
    its seed alone, so a batch can be augmented on a GPU at once and a resumed run sees the same images. The
    elastic field is drawn on the images' device (from the image's seed: the same on the same kind of device).

    Input: `images` float [B, 1, H, W] in [0, 1] on any device and `seeds` (B integers); output: the same shape, in
    [0, 1].
    """

    def __init__(self, section: AugmentationSection) -> None:
        super().__init__()
        self.crop = _active(section.random_resized_crop)
        self.flip_p = section.horizontal_flip.p if section.horizontal_flip else 0.0
        self.rotate = _active(section.rotate)
        self.affine = _active(section.affine)
        self.elastic = _active(section.elastic)
        self.blur = _active(section.gaussian_blur)

    @property
    def is_identity(self) -> bool:
        """Whether no augmentation is configured."""
        steps = (self.crop, self.rotate, self.affine, self.elastic, self.blur)
        return self.flip_p <= 0 and all(step is None for step in steps)

    def forward(self, images: torch.Tensor, seeds: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Augment `images` [B, 1, H, W] (float, [0, 1]) with one seed per image; raises `ValueError` when the
        counts differ or the images are not [B, 1, H, W]."""
        seeds = [int(seed) for seed in seeds]
        if images.ndim != 4 or images.shape[1] != 1 or images.shape[0] != len(seeds):
            raise ValueError(f"expected grey images [B, 1, H, W] and B seeds, got {tuple(images.shape)} and "
                             f"{len(seeds)} seeds")  # fmt: skip
        if self.is_identity:
            return images
        height, width = images.shape[-2:]
        draws = torch.stack([torch.rand(_DRAWS, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
                             for s in seeds])  # fmt: skip
        points, inside = self._sampling_points(draws, seeds, height, width, images.device)
        grid = torch.stack((points[..., 0] / (width / 2), points[..., 1] / (height / 2)), dim=-1).to(images.dtype)
        # "border": the crop and flip never leave the image; what the other steps took from outside is in `inside`.
        warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
        warped = warped * inside[:, None].to(images.dtype)
        if self.blur is not None:
            warped = self._gaussian_blur(warped, draws)
        return warped

    # -------------------------------------------------------------------------------------------- the geometry

    def _sampling_points(
        self, draws: torch.Tensor, seeds: list[int], height: int, width: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Where each output pixel samples the input: points [B, H, W, 2] (x, y in pixels from the image centre)
        and the share of it that every resampling step (elastic, affine, rotation) found inside its image [B, H, W]
        (bilinear interpolation with zero padding, 1 up to the centre of an edge pixel and 0 from half a pixel
        beyond the edge, squared: torchvision's bilinear fill weighs the edge by its mask once more). The steps are
        undone last to first."""
        batch = draws.shape[0]
        ys = torch.arange(height, device=device, dtype=torch.float32) + 0.5 - height / 2
        xs = torch.arange(width, device=device, dtype=torch.float32) + 0.5 - width / 2
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points = torch.stack((grid_x, grid_y), dim=-1).expand(batch, height, width, 2).clone()
        inside = torch.ones(batch, height, width, device=device)

        def within(p: torch.Tensor) -> torch.Tensor:
            share_x = (width / 2 + 0.5 - p[..., 0].abs()).clamp(0.0, 1.0)
            return (share_x * (height / 2 + 0.5 - p[..., 1].abs()).clamp(0.0, 1.0)) ** 2

        def undo(p: torch.Tensor, matrix: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
            # forward: p_out = matrix p_in + shift  ->  p_in = matrix^-1 (p_out - shift); matrix [B, 2, 2]
            inverse = torch.linalg.inv(matrix).to(device=device, dtype=torch.float32)[:, None, None]  # [B, 1, 1, 2, 2]
            shift = shift.to(device=device, dtype=torch.float32)[:, None, None, :]
            x, y = p[..., 0] - shift[..., 0], p[..., 1] - shift[..., 1]
            return torch.stack((inverse[..., 0, 0] * x + inverse[..., 0, 1] * y,
                                inverse[..., 1, 0] * x + inverse[..., 1, 1] * y), dim=-1)  # fmt: skip

        if self.elastic is not None:
            deformed = (draws[:, _SLOT["elastic_p"]] < self.elastic.p).nonzero().flatten().tolist()
            if deformed:
                field = self._elastic_displacement([seeds[i] for i in deformed], height, width, device)
                moved = points[deformed] + field
                points[deformed] = moved
                inside[deformed] = within(moved)
        if self.affine is not None:
            matrix, shift = self._affine(draws, height, width)
            points = undo(points, matrix, shift)
            inside *= within(points)
        if self.rotate is not None:
            applied = draws[:, _SLOT["rotate_p"]] < self.rotate.p
            angle = torch.where(applied, (2 * draws[:, _SLOT["angle"]] - 1) * self.rotate.degrees, 0.0)
            points = undo(points, _rotate_scale_shear(-angle, torch.ones_like(angle), torch.zeros_like(angle)),
                          torch.zeros(batch, 2, dtype=torch.float64))  # fmt: skip
            inside *= within(points)
        if self.flip_p > 0:
            flipped = (draws[:, _SLOT["flip"]] < self.flip_p).to(device)
            points[..., 0] = torch.where(flipped[:, None, None], -points[..., 0], points[..., 0])
        if self.crop is not None:
            scale, centre = (
                part.to(device, torch.float32)[:, None, None, :] for part in self._crop(draws, height, width)
            )
            # Resizing the cropped region reads only its pixels: clamp to the centres of its edge pixels.
            reach = scale * torch.tensor([width / 2, height / 2], device=device) - 0.5
            points = torch.minimum(torch.maximum(points * scale + centre, centre - reach), centre + reach)
        return points, inside

    def _crop(self, draws: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """RandomResizedCrop's box per image as (w/W, h/H) [B, 2] and the box centre from the image centre [B, 2]:
        up to 10 tries of an area share and a log-uniform aspect ratio, the first that fits taken, else the
        centre crop; the place is uniform over the fitting positions. An image not cropped (p) gets the whole."""
        crop = self.crop
        area = height * width
        log_low, log_high = math.log(crop.ratio[0]), math.log(crop.ratio[1])
        shares = crop.scale[0] + (crop.scale[1] - crop.scale[0]) * draws[:, :_CROP_TRIES]
        ratios = torch.exp(log_low + (log_high - log_low) * draws[:, _CROP_TRIES : 2 * _CROP_TRIES])
        widths = torch.round(torch.sqrt(area * shares * ratios))
        heights = torch.round(torch.sqrt(area * shares / ratios))
        fits = (widths > 0) & (widths <= width) & (heights > 0) & (heights <= height)
        first = fits.to(torch.int64).argmax(dim=1)
        found = fits.any(dim=1)
        rows = torch.arange(draws.shape[0])
        w, h = widths[rows, first], heights[rows, first]
        # torchvision's fallback when no try fits: the largest centred box within the ratio range
        in_ratio = width / height
        if in_ratio < min(crop.ratio):
            fallback_w, fallback_h = width, round(width / min(crop.ratio))
        elif in_ratio > max(crop.ratio):
            fallback_w, fallback_h = round(height * max(crop.ratio)), height
        else:
            fallback_w, fallback_h = width, height
        w = torch.where(found, w, float(fallback_w))
        h = torch.where(found, h, float(fallback_h))
        top = torch.where(
            found, torch.floor(draws[:, _SLOT["crop_top"]] * (height - h + 1)), torch.floor((height - h) / 2)
        )
        left = torch.where(
            found, torch.floor(draws[:, _SLOT["crop_left"]] * (width - w + 1)), torch.floor((width - w) / 2)
        )
        applied = draws[:, _SLOT["crop_p"]] < crop.p
        w, h = torch.where(applied, w, float(width)), torch.where(applied, h, float(height))
        top, left = torch.where(applied, top, 0.0), torch.where(applied, left, 0.0)
        scale = torch.stack((w / width, h / height), dim=1)
        centre = torch.stack((left + w / 2 - width / 2, top + h / 2 - height / 2), dim=1)
        return scale, centre

    def _affine(self, draws: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """RandomAffine (no rotation) per image: the forward matrix [B, 2, 2] and shift [B, 2] in pixels."""
        affine = self.affine
        applied = draws[:, _SLOT["affine_p"]] < affine.p
        max_dx, max_dy = affine.translate[0] * width, affine.translate[1] * height
        shift_x = torch.round((2 * draws[:, _SLOT["shift_x"]] - 1) * max_dx)
        shift = torch.stack((shift_x, torch.round((2 * draws[:, _SLOT["shift_y"]] - 1) * max_dy)), dim=1)
        scale = affine.scale[0] + (affine.scale[1] - affine.scale[0]) * draws[:, _SLOT["scale"]]
        shear = (2 * draws[:, _SLOT["shear"]] - 1) * affine.shear
        matrix = _rotate_scale_shear(torch.zeros_like(scale), scale, shear)
        identity = torch.eye(2, dtype=torch.float64).expand_as(matrix)
        matrix = torch.where(applied[:, None, None], matrix, identity)
        return matrix, torch.where(applied[:, None], shift, 0.0)

    def _elastic_displacement(self, seeds: list[int], height: int, width: int, device: torch.device) -> torch.Tensor:
        """ElasticTransform's field [N, H, W, 2] in pixels for the images of `seeds`: uniform noise in [-1, 1] per
        axis, blurred by a Gaussian of `sigma` (kernel int(8 sigma + 1), odd), times alpha / size."""
        sigma, alpha = float(self.elastic.sigma), float(self.elastic.alpha)
        noise = [torch.rand(2, height, width, device=device, generator=torch.Generator(device).manual_seed(s ^ 0x5EED))
                 for s in seeds]  # fmt: skip
        field = torch.stack(noise) * 2 - 1
        if sigma > 0:
            size = int(8 * sigma + 1)
            size += 1 - size % 2
            field = _separable_blur(field, _gaussian_kernels(torch.full((len(seeds),), sigma), size).to(device))
        # torchvision adds alpha / size in normalised coordinates ([-1, 1] across the image): x (alpha / W) (W / 2)
        # pixels = alpha / 2 in both axes.
        return field.permute(0, 2, 3, 1) * (alpha / 2)

    def _gaussian_blur(self, images: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        """GaussianBlur per image (sigma uniform in its range; reflect padding); images not blurred (p) pass."""
        blur = self.blur
        applied = draws[:, _SLOT["blur_p"]] < blur.p
        sigma = blur.sigma[0] + (blur.sigma[1] - blur.sigma[0]) * draws[:, _SLOT["blur_sigma"]]
        kernels = _gaussian_kernels(sigma, blur.kernel_size)
        kernels[~applied] = 0.0
        kernels[~applied, blur.kernel_size // 2] = 1.0  # a delta: the image unchanged, exactly
        return _separable_blur(images, kernels.to(device=images.device, dtype=images.dtype))


def _active(step: Any) -> Any:
    """A recipe step, or None when it is absent or its `p` is 0."""
    return step if step is not None and step.p > 0 else None


def _rotate_scale_shear(angle: torch.Tensor, scale: torch.Tensor, shear_x: torch.Tensor) -> torch.Tensor:
    """torchvision's forward affine matrix R(angle) S(scale) SHx(shear_x) [B, 2, 2] (angles in degrees, clockwise
    on screen for `F.affine`; `F.rotate`'s counter-clockwise angle is its negative)."""
    rot, sx = torch.deg2rad(angle.double()), torch.deg2rad(shear_x.double())
    a, c = torch.cos(rot), torch.sin(rot)
    b = -(a * torch.tan(sx) + torch.sin(rot))
    d = torch.cos(rot) - c * torch.tan(sx)
    scale = scale.double()
    return torch.stack((torch.stack((a, b), -1), torch.stack((c, d), -1)), -2) * scale[:, None, None]


def _gaussian_kernels(sigma: torch.Tensor, size: int) -> torch.Tensor:
    """One normalised 1D Gaussian per sigma [B, size] (torchvision's `gaussian_blur` kernel)."""
    x = torch.linspace(-(size - 1) / 2, (size - 1) / 2, size, dtype=torch.float64)
    pdf = torch.exp(-0.5 * (x[None] / sigma.double()[:, None]) ** 2)
    return (pdf / pdf.sum(dim=1, keepdim=True)).float()


def _separable_blur(images: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Blur each image of [B, C, H, W] with its own 1D kernel [B, K] along both axes (reflect padding)."""
    batch, channels, height, width = images.shape
    size = kernels.shape[1]
    weight = kernels.repeat_interleave(channels, dim=0)[:, None]  # [B*C, 1, K]
    flat = images.reshape(1, batch * channels, height, width)
    flat = F.pad(flat, (size // 2, size // 2, size // 2, size // 2), mode="reflect")
    flat = F.conv2d(flat, weight[..., None], groups=batch * channels)  # along H
    flat = F.conv2d(flat, weight[:, :, None, :], groups=batch * channels)  # along W
    return flat.reshape(batch, channels, height, width)


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
