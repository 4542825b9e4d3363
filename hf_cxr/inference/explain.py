"""Where a chest X-ray model looked: Grad-CAM heatmaps and the model's own attention, in original-image pixels.

`heatmap(model, processor, image, label)` returns a Grad-CAM map with the shape of the radiograph as it was read
(the processor's resize, padding or crop is undone), so it can be laid over the image a radiologist sees.
`explain(...)` returns, from one forward pass, the probabilities, Grad-CAM maps for several findings and the
model's own attention where it has one:

- CR-MSNet: the cross-attention of the global tokens over the local tokens, averaged over heads and global
  tokens, on the local branch's grid, upsampled (`Explanation.attention`).
- MXA-EfficientViT: the box each MXA block pooled, as (x1, y1, x2, y2) pixel rectangles (`Explanation.boxes`).

Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization",
ICCV 2017, eqs. 1-2) weights each channel k of a feature map A by the spatial mean of the gradient of the finding's
score y (its logit, before the sigmoid) and keeps the positive part: ReLU(sum_k mean_ij(dy/dA^k_ij) A^k). A map
only says something about the part of the score that flows through its layer, so the default layer per
architecture (`DEFAULT_LAYERS`) lies on the path that carries the score; any module whose output is a [B, C, h, w]
map can be chosen with `layer=`.

A map can still carry no location: every weighted sum at or below zero (nothing on the layer raises the score),
the same value everywhere, or not finite. Such a map is returned as zeros and `Explanation.heatmap_status` says
which (`HEATMAP_STATUS` lists the values); it is never scaled up to look like a finding.

Plotting is separate (`overlay`). These maps show what drove a research model's score; they are not evidence of
disease and hf-cxr models are not medical devices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn

from hf_cxr.imaging import load_radiograph

# Grad-CAM layers per model type, in order of preference: the first whose map has more than one cell is used
# (a 1 x 1 map carries no location). Names are `model.named_modules()` paths of the task models.
DEFAULT_LAYERS: dict[str, tuple[str, ...]] = {
    # The global (CoAtNet) branch after its first self-attention stage (`stages.2`, [B, C, H/16, W/16]: 14 x 14 at
    # 224 px, 8 x 8 at 128 px). The classifier reads the global tokens directly and the local branch only through
    # the gated cross-attention, so the global branch carries the score (Grad-CAM explains only what flows through
    # its layer). On the planted-square models of tests/test_explain.py the local branch carried none of it:
    # swapping the local map for that of the same image without the square moved the logit by at most 0.01 of its
    # 4-6 swing (swapping the global map moved all of it); d(logit)/d(local map) was ~3e-6 per element and
    # sum(gradient * activation) ~2e-5 there against ~4e-2 here, so Grad-CAM on the local map (the former default
    # `cr_msnet.local_attention`) was its activation strength signed by noise: all zero on up to 9 of 15 images.
    # The branch's output map (`cr_msnet.global_attention`, stride 32) follows a second all-to-all self-attention
    # stage that spreads the evidence over the tokens. Over 13 trainings of that model (9 seeds; seed 0 with its
    # starting weights changed by 1e-7 or 1e-6, or trained in float64) the peak lay in the square for a median 10
    # of 15 images here (1-15), 5 on the output map (0-12), 4 on the local map (0-15). The last convolutional
    # stage (`stages.1`, stride 8) peaks on the square's edges, often just outside it; it is the fallback when the
    # input is so small that `stages.2` gives a 1 x 1 map.
    "cr_msnet": ("cr_msnet.global_backbone.stages.2", "cr_msnet.global_backbone.stages.1"),
    # torchxrayvision's DenseNet-121 / ResNet-50: the backbone's last map ([B, C, H/32, W/32], 7 x 7 at 224 px), the one
    # its classifier pools (an identity module named for this).
    "torchxrayvision": ("torchxrayvision.feature_map",),
    # The online backbone's last map h (`bn2`, [B, C, H/32, W/32]), before the multi-scale fusion: the fusion's
    # 5 x 5 convolution spans most of an H/32 grid, so Grad-CAM on the fused map (`ma_msf.fusion`) comes out
    # nearly uniform on small inputs. Still coarse: one cell is 32 input pixels.
    "ma_msf": ("ma_msf.backbone.bn2",),
    # The last EfficientViT stage ([B, C, H/64, W/64] roughly: 4 x 4 at 224 px); the stage before it when the
    # input is so small that the last map is a single cell (the tiny preset at 64 px).
    "mxa_efficientvit": ("mxa_efficientvit.backbone.stages.2", "mxa_efficientvit.backbone.stages.1"),
}

# Model types whose forward returns attention with `output_attentions=True`.
_ATTENTION_MODELS = ("cr_msnet", "mxa_efficientvit")

# `Explanation.heatmap_status` values: "ok" for a map that shows where the score came from, else why the map is
# returned as zeros (it carries no location and must not be drawn as if it did).
HEATMAP_STATUS: dict[str, str] = {
    "ok": "the map varies over the layer's grid",
    "zero": "every location's weighted sum is at or below zero (within float32 rounding): nothing on this layer "
    "raises the score",
    "constant": "the weighted sum is the same positive value everywhere: no location stands out",
    "non-finite": "the gradient or the feature map holds NaN or infinity",
}


@dataclass
class Explanation:
    """What `explain` found for one image; every map has the image's shape [H, W] with values in [0, 1].

    Attributes:
        image: the radiograph as read, grey float32 [H, W] in [0, 1] (what the maps are aligned to).
        probabilities: finding -> sigmoid probability, for every finding of the model.
        heatmaps: finding -> Grad-CAM map, for the findings asked for (most probable first when chosen by top_k);
            all zeros where `heatmap_status` is not "ok".
        heatmap_status: finding -> "ok", or why its map carries no location ("zero", "constant", "non-finite";
            see `HEATMAP_STATUS`), for the same findings as `heatmaps`.
        layer: the module the Grad-CAM maps were computed on.
        attention: CR-MSNet's global-to-local cross-attention map (min-max scaled), else None.
        boxes: MXA-EfficientViT's ROI boxes, one (x1, y1, x2, y2) in image pixels per MXA block in network order,
            else None.
    """

    image: np.ndarray
    probabilities: dict[str, float]
    heatmaps: dict[str, np.ndarray]
    heatmap_status: dict[str, str]
    layer: str
    attention: np.ndarray | None = None
    boxes: list[tuple[float, float, float, float]] | None = field(default=None)


@dataclass(frozen=True)
class _Geometry:
    """How the processor placed an [H, W] radiograph into its [h, w] input, so maps and boxes can be put back."""

    height: int
    width: int
    in_height: int
    in_width: int
    mode: str

    @property
    def resized(self) -> tuple[int, int]:
        """Size of the radiograph after the processor's resize, before padding or cropping (as `resize_grey`)."""
        if self.mode == "stretch":
            return self.in_height, self.in_width
        pick = min if self.mode == "pad" else max
        scale = pick(self.in_height / self.height, self.in_width / self.width)
        return max(round(self.height * scale), 1), max(round(self.width * scale), 1)

    @property
    def offset(self) -> tuple[int, int]:
        """(top, left) of the resized radiograph in the input (pad, >= 0) or of the input in it (crop, >= 0)."""
        new_height, new_width = self.resized
        if self.mode == "pad":
            return (self.in_height - new_height) // 2, (self.in_width - new_width) // 2
        if self.mode == "center_crop":
            return (new_height - self.in_height) // 2, (new_width - self.in_width) // 2
        return 0, 0

    def to_image_xy(self, x: float, y: float) -> tuple[float, float]:
        """A point in input pixels -> the same point in image pixels (clipped to the image)."""
        new_height, new_width = self.resized
        top, left = self.offset
        sign = -1 if self.mode == "pad" else 1
        image_x = (x + sign * left) * self.width / new_width
        image_y = (y + sign * top) * self.height / new_height
        return float(np.clip(image_x, 0, self.width)), float(np.clip(image_y, 0, self.height))

    def to_image_map(self, values: torch.Tensor) -> np.ndarray:
        """A map over the input [h', w'] (any grid) -> the same map over the image [H, W]; outside a centre crop
        the model saw nothing and the map is 0 there."""
        grid = F.interpolate(
            values[None, None].float(), size=(self.in_height, self.in_width), mode="bilinear", align_corners=False
        )[0, 0]
        new_height, new_width = self.resized
        top, left = self.offset
        if self.mode == "pad":
            grid = grid[top : top + new_height, left : left + new_width]
        if self.mode != "center_crop":
            return _resize(grid, self.height, self.width)
        out = np.zeros((self.height, self.width), dtype=np.float32)
        y0, x0 = round(top * self.height / new_height), round(left * self.width / new_width)
        y1 = min(round((top + self.in_height) * self.height / new_height), self.height)
        x1 = min(round((left + self.in_width) * self.width / new_width), self.width)
        if y1 > y0 and x1 > x0:
            out[y0:y1, x0:x1] = _resize(grid, y1 - y0, x1 - x0)
        return out


def _resize(grid: torch.Tensor, height: int, width: int) -> np.ndarray:
    resized = F.interpolate(grid[None, None], size=(height, width), mode="bilinear", align_corners=False)[0, 0]
    return resized.clamp(0.0, 1.0).cpu().numpy().astype(np.float32)


def default_layers(model: nn.Module) -> tuple[str, ...]:
    """The documented Grad-CAM layers of `model`'s architecture (see `DEFAULT_LAYERS`). Raises `ValueError` when
    `model.config.model_type` has no entry there (pass `layer=` to `explain` instead)."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in DEFAULT_LAYERS:
        raise ValueError(
            f"no default Grad-CAM layer for model_type {model_type!r}; pass layer=<module name> naming a module "
            "whose output is a [batch, channels, height, width] feature map"
        )
    return DEFAULT_LAYERS[model_type]


def _resolve_labels(
    config: Any, probabilities: dict[str, float], labels: str | int | Sequence[str | int] | None, top_k: int
) -> list[str]:
    if labels is None:
        return sorted(probabilities, key=probabilities.get, reverse=True)[: max(top_k, 0)]
    names = []
    for label in [labels] if isinstance(labels, (str, int)) else labels:
        if isinstance(label, int) and not isinstance(label, bool):
            if label not in config.id2label:
                raise ValueError(f"label index {label} is out of range for {config.num_labels} findings")
            names.append(config.id2label[label])
        elif label in probabilities:
            names.append(label)
        else:
            raise ValueError(f"unknown finding {label!r}; the model predicts {list(probabilities)}")
    return names


def _map_of(output: Any) -> torch.Tensor:
    tensor = output[0] if isinstance(output, (tuple, list)) else output
    if not isinstance(tensor, torch.Tensor) or tensor.ndim != 4:
        shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise ValueError(f"Grad-CAM needs a layer whose output is [batch, channels, height, width], got {shape}")
    return tensor


def explain(
    model: nn.Module,
    processor: Any,
    image: Any,
    labels: str | int | Sequence[str | int] | None = None,
    *,
    top_k: int = 3,
    layer: str | None = None,
) -> Explanation:
    """Probabilities, Grad-CAM maps and the model's own attention for one radiograph, from one forward pass.

    `image`: anything `load_radiograph` reads (path, DICOM radiograph, bytes, PIL image, array). `labels`: finding
    names or indices to map; None maps the `top_k` most probable. `layer`: a module name for Grad-CAM instead of
    the architecture's default. The model is run in eval mode and left in the mode it was in.

    Raises `ValueError` for an `image` that `load_radiograph` cannot read (naming it; `ImportError` for a DICOM without
    pydicom); without `layer`, for a model type that has no default layer (`default_layers`); for a `layer` (or default
    layer) that is not one of `model.named_modules()` or did not run in the forward pass; for a layer whose output is
    not a [B, C, h, w] map; for an explicit `layer` whose map is 1 x 1 at this input size, or when every default layer's
    map is; and for a finding name the model does not predict or an index outside `id2label`.
    """
    grey = load_radiograph(image)
    model_type = getattr(model.config, "model_type", None)
    candidates = (layer,) if layer is not None else default_layers(model)
    modules = dict(model.named_modules())
    missing = [name for name in candidates if name not in modules]
    if missing:
        raise ValueError(f"model has no module {missing[0]!r}; choose one of model.named_modules()")
    parameter = next(model.parameters())
    pixel_values = processor(grey, return_tensors="pt")["pixel_values"].to(parameter.device, parameter.dtype)
    pixel_values.requires_grad_(True)  # keeps a graph to the feature map even if every weight is frozen
    geometry = _Geometry(*grey.shape, *pixel_values.shape[-2:], getattr(processor, "resize_mode", "stretch"))

    captured: dict[str, torch.Tensor] = {}
    hooks = [
        modules[name].register_forward_hook(lambda _m, _i, out, name=name: captured.__setitem__(name, out))
        for name in candidates
    ]
    local_grid: list[tuple[int, int]] = []
    if model_type == "cr_msnet":
        hooks.append(
            modules["cr_msnet.local_attention"].register_forward_hook(
                lambda _m, _i, out: local_grid.append(tuple(out.shape[-2:]))
            )
        )
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            kwargs = {"output_attentions": True} if model_type in _ATTENTION_MODELS else {}
            output = model(pixel_values=pixel_values, return_dict=True, **kwargs)
            logits = output.logits[0].float()
            probabilities = {
                model.config.id2label[index]: float(p) for index, p in enumerate(torch.sigmoid(logits).tolist())
            }
            names = _resolve_labels(model.config, probabilities, labels, top_k)
            chosen = _pick_layer(candidates, captured, explicit=layer is not None)
            feature_map = _map_of(captured[chosen])
            heatmaps, status = {}, {}
            for position, name in enumerate(names):
                score = logits[model.config.label2id[name]]  # the logit: Grad-CAM's class score before the sigmoid
                (gradient,) = torch.autograd.grad(score, feature_map, retain_graph=position < len(names) - 1)
                cam, status[name] = _grad_cam(feature_map[0].detach(), gradient[0])
                heatmaps[name] = geometry.to_image_map(cam)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)

    attention = None
    if model_type == "cr_msnet" and getattr(output, "cross_attentions", None) is not None and local_grid:
        attention = geometry.to_image_map(_cross_attention_map(output.cross_attentions[0].detach(), local_grid[-1]))
    boxes = None
    if model_type == "mxa_efficientvit" and getattr(output, "roi_boxes", None):
        boxes = [_box_to_image(box[0].tolist(), geometry) for box in output.roi_boxes]
    return Explanation(
        image=grey,
        probabilities=probabilities,
        heatmaps=heatmaps,
        heatmap_status=status,
        layer=chosen,
        attention=attention,
        boxes=boxes,
    )


def heatmap(model: nn.Module, processor: Any, image: Any, label: str | int, layer: str | None = None) -> np.ndarray:
    """Grad-CAM of finding `label` (name or index) for `image`: float32 [H, W] in [0, 1], the image's shape.

    All zeros when the map carries no location (no location of the layer raises the finding's score, or every
    location does equally); `explain(...).heatmap_status` says which. See `explain` for the attention maps.
    Raises ValueError for an unknown finding or a layer without a [B, C, h, w] map.
    """
    names = _resolve_labels(model.config, {v: 0.0 for v in model.config.id2label.values()}, label, 1)
    return explain(model, processor, image, names, layer=layer).heatmaps[names[0]]


def _pick_layer(candidates: Sequence[str], captured: dict[str, Any], explicit: bool) -> str:
    for name in candidates:
        if name not in captured:
            raise ValueError(f"layer {name!r} did not run in the forward pass; pick a module the model uses")
        height, width = _map_of(captured[name]).shape[-2:]
        if height * width > 1 or explicit:
            if height * width == 1:
                raise ValueError(f"layer {name!r} gives a 1 x 1 map at this input size: it has no location")
            return name
    raise ValueError(f"every default layer {list(candidates)} gives a 1 x 1 map; pass a layer with a larger map")


def _grad_cam(feature_map: torch.Tensor, gradient: torch.Tensor) -> tuple[torch.Tensor, str]:
    """ReLU(sum_c mean(grad_c) * A_c) on the layer's grid: ([h, w] scaled to [0, 1] by its maximum, "ok"), or
    (zeros, why) when it carries no location (`HEATMAP_STATUS`).

    Values within float32 rounding of the sum (channels x machine epsilon x the largest sum of |terms| at a
    location) are not told apart from zero or from each other, so a map made of rounding noise is not scaled up.
    """
    features, weights = feature_map.float(), gradient.float().mean(dim=(1, 2))
    terms = weights[:, None, None] * features  # [C, h, w]
    if not torch.isfinite(terms).all():
        return torch.zeros(terms.shape[1:]), "non-finite"
    cam = torch.relu(terms.sum(dim=0))
    rounding = terms.shape[0] * torch.finfo(torch.float32).eps * terms.abs().sum(dim=0).max()
    peak = cam.max()
    if peak <= rounding:
        return torch.zeros_like(cam), "zero"
    if peak - cam.min() <= rounding:
        return torch.zeros_like(cam), "constant"
    return cam / peak, "ok"


def _cross_attention_map(attention: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """[heads, N_global, N_local] -> the mean attention each local token receives, on the local grid, min-max
    scaled (the raw weights sit near 1 / N_local; their spread is what shows where the global view looked)."""
    received = attention.float().mean(dim=(0, 1)).reshape(grid)
    low, high = received.min(), received.max()
    return (received - low) / (high - low) if high > low else torch.zeros_like(received)


def _box_to_image(box: Sequence[float], geometry: _Geometry) -> tuple[float, float, float, float]:
    """A normalised (x1, y1, x2, y2) over the model input -> image pixels."""
    x1, y1 = geometry.to_image_xy(box[0] * geometry.in_width, box[1] * geometry.in_height)
    x2, y2 = geometry.to_image_xy(box[2] * geometry.in_width, box[3] * geometry.in_height)
    return x1, y1, x2, y2


# Anchors of the built-in colormap (dark blue -> blue -> cyan -> yellow -> red), as 'jet' but darker at 0 so
# low heat does not read as a finding; interpolated linearly.
_COLORMAP_ANCHORS = np.array(
    [[0.0, 0.0, 0.35], [0.0, 0.2, 1.0], [0.0, 0.85, 1.0], [1.0, 0.9, 0.0], [1.0, 0.15, 0.0]], dtype=np.float32
)
BOX_COLORS = ((0, 255, 0), (255, 0, 255), (0, 200, 255), (255, 255, 0), (255, 128, 0), (255, 255, 255))


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> RGB float32 [..., 3] in [0, 1] with the built-in heat colormap."""
    position = np.clip(values, 0.0, 1.0) * (len(_COLORMAP_ANCHORS) - 1)
    low = np.minimum(position.astype(np.int64), len(_COLORMAP_ANCHORS) - 2)
    fraction = (position - low)[..., None]
    return _COLORMAP_ANCHORS[low] * (1 - fraction) + _COLORMAP_ANCHORS[low + 1] * fraction


def overlay(
    image: Any,
    heatmap: np.ndarray | None,
    boxes: Sequence[Sequence[float]] | None = None,
    alpha: float = 0.5,
) -> Image.Image:
    """The radiograph with `heatmap` blended over it (opacity grows with the heat, so cold areas stay readable)
    and `boxes` (x1, y1, x2, y2 in image pixels) drawn as rectangles. Returns an RGB image of the image's size.
    Raises `ValueError` when `heatmap` is not of the image's shape [H, W], and as `load_radiograph` does for an
    `image` it cannot read."""
    grey = load_radiograph(image)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    if heatmap is not None:
        heat = np.asarray(heatmap, dtype=np.float32)
        if heat.shape != grey.shape:
            raise ValueError(f"heatmap shape {heat.shape} differs from the image's {grey.shape}")
        weight = alpha * np.clip(heat, 0.0, 1.0)[..., None]
        rgb = rgb * (1 - weight) + colormap(heat) * weight
    picture = Image.fromarray(np.round(np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8), mode="RGB")
    if boxes:
        draw = ImageDraw.Draw(picture)
        line = max(1, round(max(picture.size) / 200))
        for index, box in enumerate(boxes):
            x1, y1, x2, y2 = (float(v) for v in box)
            draw.rectangle((x1, y1, max(x2, x1 + 1), max(y2, y1 + 1)), outline=BOX_COLORS[index % 6], width=line)
    return picture


__all__ = [
    "DEFAULT_LAYERS",
    "HEATMAP_STATUS",
    "Explanation",
    "colormap",
    "default_layers",
    "explain",
    "heatmap",
    "overlay",
]
