"""MXA-EfficientViT configuration (Rand & Ibrahim, "Beyond Conventional Transformers: The Medical X-ray Attention
(MXA) Block for Improved Multi-Label Diagnosis Using Knowledge Distillation", 2025)."""

import math
from typing import Any, ClassVar

from huggingface_hub.dataclasses import strict

from .backbone_weights import check_backbone_weights
from .configuration_cxr import CXRClassifierConfig
from .labels import CHEXPERT_LABELS

# The six published EfficientViT widths / depths / heads (Liu et al. 2023; the MXA paper's Table 2) and the
# per-head depthwise query kernels of the Microsoft release (timm's `efficientvit_m0..m5`).
MXA_EFFICIENTVIT_VARIANTS: dict[str, dict[str, tuple[int, ...]]] = {
    "m0": {"embed_dim": (64, 128, 192), "depth": (1, 2, 3), "num_heads": (4, 4, 4), "kernels": (5, 5, 5, 5)},
    "m1": {"embed_dim": (128, 144, 192), "depth": (1, 2, 3), "num_heads": (2, 3, 3), "kernels": (7, 5, 3, 3)},
    "m2": {"embed_dim": (128, 192, 224), "depth": (1, 2, 3), "num_heads": (4, 3, 2), "kernels": (7, 5, 3, 3)},
    "m3": {"embed_dim": (128, 240, 320), "depth": (1, 2, 3), "num_heads": (4, 3, 4), "kernels": (5, 5, 5, 5)},
    "m4": {"embed_dim": (128, 256, 384), "depth": (1, 2, 3), "num_heads": (4, 4, 4), "kernels": (7, 5, 3, 3)},
    "m5": {"embed_dim": (192, 288, 384), "depth": (1, 3, 4), "num_heads": (3, 3, 4), "kernels": (7, 5, 3, 3)},
}

MXA_FUSIONS = ("parallel", "alpha", "reference")
ROI_POOLINGS = ("differentiable", "reference")

MXA_EFFICIENTVIT_PRESETS: dict[str, dict[str, Any]] = {
    # The paper does not name its variant in the text; every published training run of the authors
    # (`args.txt` of their "IM5" runs) trains EfficientViT_MultiLabel_M5, so M5 at 224 px is the paper preset.
    "paper": {"variant": "m5"},
    # Well under a second per CPU training step, for tests and demos: M0's modules with narrower, shallower
    # stages at 64 px (feature maps 4/2/1), MXA and both heads kept.
    "tiny": {
        "variant": "m0",
        "image_size": 64,
        "embed_dim": (32, 48, 64),
        "depth": (1, 1, 1),
        "num_heads": (2, 2, 2),
    },
}


@strict(accept_kwargs=True)
class MXAEfficientViTConfig(CXRClassifierConfig):
    r"""Configuration of an MXA-EfficientViT: EfficientViT (MSRA) with the Medical X-ray Attention block in every
    attention block and a second (distillation) head. Every ambiguity of the paper is a field with a documented
    default; the `reference` values reproduce the authors' public code.

    Takes the shared classifier fields of `CXRClassifierConfig` (the multi-label loss and its parameters, decision
    thresholds, initializer range; labels: by default CheXpert's 14 findings in CheXpert's column order), with
    MXA's own defaults for `image_size`, `num_channels` and `classifier_dropout`, plus:

    Args:
        variant (`str`, defaults to `"m5"`): EfficientViT size, `m0`..`m5`; sets `embed_dim`, `depth`,
            `num_heads` and `kernels` to the published values unless those are given explicitly.
        embed_dim (`list[int]`, *optional*): width of the three stages (e.g. M5: 192, 288, 384).
        depth (`list[int]`, *optional*): EfficientViT blocks per stage (e.g. M5: 1, 3, 4).
        num_heads (`list[int]`, *optional*): cascaded-group-attention heads per stage (e.g. M5: 3, 3, 4).
        kernels (`list[int]`, *optional*): depthwise kernel on each head's query (M0/M3: 5,5,5,5; others 7,5,3,3);
            needs at least `max(num_heads)` odd entries.
        key_dim (`int`, defaults to 16): query/key width per head (all published variants).
        window_size (`int`, defaults to 7): local-window attention size (paper: 7x7).
        image_size (`int`, defaults to 224): input height and width; a multiple of 16 (the patch stride).
        num_channels (`int`, defaults to 1): input channels (grey radiograph, no ImageNet normalisation; the
            processor scales intensities to [-1024, 1024] as torchxrayvision does).
        backbone_weights (`bool` or `str`, *optional*): start timm's `efficientvit_<variant>` from pretrained timm
            weights: `True` for timm's tag (`r224_in1k`, ImageNet-1k), the tag itself (`"efficientvit_m5.r224_in1k"`)
            or a local `.safetensors` file; `None` (default) initialises it randomly, as the paper trained "from
            scratch". timm loads them into its backbone before the MXA blocks are inserted, so the backbone's layers
            get the pretrained values and MXA's own layers and the heads keep their initialisation; the 1-channel
            input takes the pretrained first convolution summed over its three channels, and the attention biases
            are resized to `image_size` by timm. Read (through `huggingface_hub`: with `HF_HUB_OFFLINE=1` from the
            Hugging Face cache) when the model is built from this config (`hf_cxr.build_model`, `train.py
            --backbone-weights`), never by `from_pretrained`, whose `model.safetensors` holds the trained values: the
            field is kept as provenance. timm's weights need the published `embed_dim`, `depth`, `num_heads`, `kernels`
            and `key_dim` of the variant (the tiny preset's narrower stages do not fit: `ValueError`).
            See `backbone_weights.py`.
        use_mxa (`bool`, defaults to `True`): insert the MXA block; `False` is the paper's baseline, the plain
            multi-label EfficientViT.
        mxa_fusion (`str`, defaults to `"parallel"`): how MXA joins the local-window attention (LWA) of a block:
            `parallel` x + LWA(x) + MXA(x) (the paper's text), `alpha` x + (1 - a) LWA(x) + a MXA(x) with a learned
            a = sigmoid(theta) per block, or `reference` (the public code) y = (x + LWA(x)) + (x + MXA(x)) followed
            by y + LWA(y): the identity doubled and the same attention run twice.
        mxa_alpha_init (`float`, defaults to 0.5): initial a of the `alpha` fusion, in (0, 1).
        roi_pooling (`str`, defaults to `"differentiable"`): `differentiable` orders the predicted corners with
            min/max and samples the box with a bilinear grid (one sample per output cell, as RoIAlign), so the ROI
            predictor is trained by the classification loss as the paper states; `reference` crops integer pixel
            indices and resizes the crop bilinearly (the public code: the ROI predictor never receives a gradient).
        roi_initial_box (`list[float]`, defaults to `[0.05, 0.05, 0.95, 0.95]`): the box (x1, y1, x2, y2) the ROI
            predictor outputs at initialisation (through the bias of its last convolution), so that MXA starts by
            seeing almost the whole map and learns to zoom in; `None` keeps a zero bias, whose box is the
            degenerate point (0.5, 0.5, 0.5, 0.5).
        mxa_channel_reduction (`int`, defaults to 16): reduction r of the CBAM channel-attention MLP.
        mxa_spatial_kernel_size (`int`, defaults to 7): kernel of the CBAM spatial-attention convolution.
        distillation_head (`bool`, defaults to `True`): add `head_dist` beside `head` (DeiT-style); the output
            `logits` are the mean of the two heads. `False` keeps the single head.
        classifier_dropout (`float`, defaults to 0.0): dropout inside each head (the paper disables dropout).
        loss (`str`, defaults to `"bce"`): the label loss when `labels` are passed (paper: `bce`); distillation is a
            training-time component (`hf_cxr.distillation`), not part of the saved model.
    """

    model_type = "mxa_efficientvit"
    default_labels: ClassVar[tuple[str, ...]] = CHEXPERT_LABELS
    presets: ClassVar[dict[str, dict[str, Any]]] = MXA_EFFICIENTVIT_PRESETS
    variants: ClassVar[dict[str, dict[str, tuple[int, ...]]]] = MXA_EFFICIENTVIT_VARIANTS
    # Per-head logits and ROI boxes are extras: Trainer's prediction loop keeps only `logits`.
    keys_to_ignore_at_inference: ClassVar[list[str]] = ["cls_logits", "distillation_logits", "roi_boxes"]

    variant: str = "m5"
    embed_dim: list[int] | tuple[int, ...] | None = None
    depth: list[int] | tuple[int, ...] | None = None
    num_heads: list[int] | tuple[int, ...] | None = None
    kernels: list[int] | tuple[int, ...] | None = None
    key_dim: int = 16
    window_size: int = 7
    backbone_weights: bool | str | None = None
    num_channels: int = 1
    use_mxa: bool = True
    mxa_fusion: str = "parallel"
    mxa_alpha_init: float | int = 0.5
    roi_pooling: str = "differentiable"
    roi_initial_box: list[float] | tuple[float, ...] | None = (0.05, 0.05, 0.95, 0.95)
    mxa_channel_reduction: int = 16
    mxa_spatial_kernel_size: int = 7
    distillation_head: bool = True
    classifier_dropout: float | int = 0.0

    def __post_init__(self, **kwargs: Any) -> None:
        if self.variant not in MXA_EFFICIENTVIT_VARIANTS:
            raise ValueError(
                f"MXAEfficientViTConfig.variant must be one of {sorted(MXA_EFFICIENTVIT_VARIANTS)}, "
                f"got {self.variant!r}"
            )
        published = MXA_EFFICIENTVIT_VARIANTS[self.variant]
        for field in ("embed_dim", "depth", "num_heads", "kernels"):  # the variant's values unless given
            given = getattr(self, field)
            setattr(self, field, [int(v) for v in (given if given is not None else published[field])])
        if self.roi_initial_box is not None:
            self.roi_initial_box = [float(v) for v in self.roi_initial_box]
        super().__post_init__(**kwargs)

    def _validate(self) -> None:
        super()._validate()
        check_backbone_weights(self.backbone_weights, f"{type(self).__name__}.backbone_weights")
        if self.backbone_weights and not str(self.backbone_weights).lower().endswith(".safetensors"):
            # timm's pretrained EfficientViTs have the published stages; attention biases alone are resized.
            published = {**MXA_EFFICIENTVIT_VARIANTS[self.variant], "key_dim": 16}
            changed = [f"{field}={getattr(self, field)}" for field, value in published.items()
                       if (list(value) if isinstance(value, tuple) else value) != getattr(self, field)]  # fmt: skip
            if changed:
                self._fail("backbone_weights", f"needs the published efficientvit_{self.variant} (its weights do not "
                           f"fit {', '.join(changed)}; the tiny preset narrows the stages)")  # fmt: skip
        for field in ("embed_dim", "depth", "num_heads"):
            values = getattr(self, field)
            if len(values) != 3 or any(v < 1 for v in values):
                self._fail(field, f"needs three positive stage values, got {values}")
        for stage, (width, heads) in enumerate(zip(self.embed_dim, self.num_heads, strict=True)):
            if width % heads:
                self._fail("embed_dim", f"stage {stage} width {width} is not divisible by its {heads} heads")
        if self.embed_dim[0] % 8:
            self._fail("embed_dim", f"[0] must be a multiple of 8 (patch embedding), got {self.embed_dim[0]}")
        if len(self.kernels) < max(self.num_heads) or any(k < 1 or k % 2 == 0 for k in self.kernels):
            self._fail("kernels", f"needs {max(self.num_heads)} odd sizes (one per head), got {self.kernels}")
        if self.key_dim < 1 or self.window_size < 1:
            self._fail("key_dim", f"and window_size must be positive, got {self.key_dim}, {self.window_size}")
        if self.image_size < 16 or self.image_size % 16:
            self._fail("image_size", f"must be a positive multiple of 16, got {self.image_size}")
        if self.num_channels < 1:
            self._fail("num_channels", f"must be positive, got {self.num_channels}")
        if self.mxa_fusion not in MXA_FUSIONS:
            self._fail("mxa_fusion", f"must be one of {MXA_FUSIONS}, got {self.mxa_fusion!r}")
        if not 0.0 < self.mxa_alpha_init < 1.0:
            self._fail("mxa_alpha_init", f"must lie in (0, 1), got {self.mxa_alpha_init}")
        if self.roi_pooling not in ROI_POOLINGS:
            self._fail("roi_pooling", f"must be one of {ROI_POOLINGS}, got {self.roi_pooling!r}")
        box = self.roi_initial_box
        if box is not None and (len(box) != 4 or not all(0.0 < v < 1.0 for v in box)):
            self._fail("roi_initial_box", f"must be four values in (0, 1), got {box}")
        if self.mxa_channel_reduction < 1:
            self._fail("mxa_channel_reduction", f"must be positive, got {self.mxa_channel_reduction}")
        if self.mxa_spatial_kernel_size < 1 or self.mxa_spatial_kernel_size % 2 == 0:
            self._fail("mxa_spatial_kernel_size", f"must be odd, got {self.mxa_spatial_kernel_size}")
        if not 0.0 <= self.classifier_dropout < 1.0:
            self._fail("classifier_dropout", f"must lie in [0, 1), got {self.classifier_dropout}")

    @property
    def roi_initial_logits(self) -> list[float] | None:
        """The bias of the ROI predictor's last convolution that yields `roi_initial_box` at initialisation."""
        if self.roi_initial_box is None:
            return None
        return [math.log(v / (1.0 - v)) for v in self.roi_initial_box]


__all__ = ["MXA_EFFICIENTVIT_PRESETS", "MXA_EFFICIENTVIT_VARIANTS", "MXAEfficientViTConfig"]
