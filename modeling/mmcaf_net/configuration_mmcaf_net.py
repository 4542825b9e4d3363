"""MMCAF-Net configuration (Yu, Ge et al., "Small Lesions-aware Bidirectional Multimodal Multiscale Fusion Network")."""

from typing import Any, ClassVar

from huggingface_hub.dataclasses import strict

from .clinical import ABEG_LABELS, AG_LABELS, CLINICAL_FEATURE_NAMES, HISTOLOGY
from .configuration_cxr import CXRClassifierConfig
from .losses import SINGLE_LABEL_LOSS_TYPES

CLASSIFICATION_HEADS = ("fused", "image", "table")
FREEZABLE_PARTS = ("image_encoder", "table_encoder", "fusion")
BSF_MODES = ("sum", "concat")

MMCAF_NET_PRESETS: dict[str, dict[str, Any]] = {
    # The published configuration: PENet-family encoder (256/512/1024, cardinality 32) on 12 x 192 x 192.
    "paper": {},
    # Seconds on a CPU, for tests and demos: the same modules at tiny widths on 12 x 32 x 32.
    "tiny": {
        "image_size": 32,
        "stem_channels": 8,
        "encoder_widths": [16, 32, 64],
        "encoder_depths": [1, 1, 1],
        "cardinality": 4,
        "se_reduction": 4,
        "e3d_msca_reduction": 4,
    },
}


@strict(accept_kwargs=True)
class MMCAFNetConfig(CXRClassifierConfig):
    r"""Configuration of an MMCAF-Net model (3D CT slab + 7 clinical values -> lung cancer histology).

    Single-label: one softmax over `num_labels` classes, named by histology (`labels`, default A vs G:
    `("adenocarcinoma", "squamous_cell_carcinoma")`; pass `labels=ABEG_LABELS` or `num_labels=4` for A, B, E, G).
    Takes the shared fields of `CXRClassifierConfig` with these meanings here: `image_size` (192) is the in-plane
    crop, `num_channels` must be 1, `loss` is one of `cross_entropy`, `focal` (default, `focal_gamma` 2) or
    `class_balanced_focal` (`class_positive_counts` = training samples per class), `decision_thresholds` are
    per-class probability thresholds chosen by evaluation (argmax where absent). Plus:

    Args:
        num_slices (`int`, defaults to 12): slices per CT slab (depth D of `pixel_values` [B, 1, D, H, W]).
        num_clinical_features (`int`, defaults to 7): sex, age, weight, T, N, M stage, smoking, in [-1, 1].
        stem_channels (`int`, defaults to 64): width of the 7x7x7 stem conv (stride (1, 2, 2), then max-pool /2).
        encoder_widths (`list[int]`, defaults to `[256, 512, 1024]`): output channels of the three ResNeXt-SE stages
            (the three scales of the pyramid).
        encoder_depths (`list[int]`, defaults to `[3, 4, 6]`): bottleneck blocks per stage (PENet's first three).
        encoder_strides (`list[int]`, defaults to `[1, 2, 2]`): stride of each stage's first block (D, H and W).
        cardinality (`int`, defaults to 32): groups of the 3x3x3 grouped conv in each bottleneck.
        bottleneck_ratio (`float`, defaults to 0.5): bottleneck width / block output width.
        se_reduction (`int`, defaults to 16): squeeze-excitation reduction in each bottleneck.
        e3d_msca_reduction (`int`, defaults to 16): MLP reduction of the 3D channel attention block (CAB) of
            E3D-MSCA, the encoder's efficient 3D multi-scale *convolutional* attention at each pyramid scale.
        e3d_msca_spatial_kernel_size (`int`, defaults to 7): conv size of E3D-MSCA's 3D spatial attention (SAB).
        dcfb_expansion (`int`, defaults to 2): 1x1x1 expansion factor of E3D-MSCA's depthwise multi-scale fusion
            (DCFB).
        dcfb_kernel_sizes (`list[int]`, defaults to `[1, 3, 5]`): parallel depthwise kernels of DCFB (summed).
        pyramid_separable_convs (`bool`, defaults to `True`): the 3x3x3 convs of the pyramid (upsampling, stride-2
            downsampling, BFPU gates) are depthwise + pointwise. Full 3x3x3 convs at 512/1024 channels would add
            about 110M parameters to a 10M-parameter encoder; the paper stresses a low cost but does not say.
        image_dropout (`float`, defaults to 0.0): dropout on the pooled image features before the projection (the
            paper's ablation has a "+drop" variant without a rate).
        embed_dim (`int`, defaults to 24): image and table embedding width (the finest cross-attention scale).
        kan_grid_size (`int`, defaults to 5): B-spline grid intervals of the KAN table encoder.
        kan_spline_order (`int`, defaults to 3): B-spline order (3 = cubic).
        kan_grid_range (`list[float]`, defaults to `[-1.0, 1.0]`): grid domain (the clinical values' range).
        cross_attention_num_scales (`int`, defaults to 3): scales of the multi-scale *cross* attention fusion (the
            paper's MSCA fusion module, image <-> table); each halves the previous width (24, 12, 6).
        cross_attention_tokens (`int`, defaults to 3): tokens each side's vector is split into at every scale. With
            one token per side the softmax over keys is identically 1 and attention reduces to a linear map of the
            other side; 3 tokens (8/4/2 dims at 24/12/6) make it a real attention. Every scale's width must divide
            by it.
        cross_attention_num_heads (`list[int]`, defaults to `[2, 2, 1]`): heads per scale (must divide the token
            width).
        cross_attention_dropout (`float`, defaults to 0.0): dropout on the cross-attention weights.
        bsf_mode (`str`, defaults to `"sum"`): BSF merge, `sum` (x + x s + y + y s, 24-d fused vector) or `concat`
            ([x + x s, y + y s] as the paper's figure draws it, 48-d).
        classification_head (`str`, defaults to `"fused"`): which embedding the returned logits come from: `fused`,
            `image` (stage 1 of the paper's schedule: train the image encoder alone) or `table`.
        frozen_parts (`list[str]`, defaults to `[]`): parts kept frozen *and in eval mode* (no BN drift, no
            dropout) whatever `model.train()` asks: any of `image_encoder`, `table_encoder`, `fusion`.

    Raises:
        `ValueError`: at construction, naming the field, when a value is out of range or inconsistent: a
            `problem_type` other than `single_label_classification`, `num_channels` other than 1, encoder lists
            not of 3 entries, a `cardinality` that does not divide a bottleneck width, an unknown `bsf_mode`,
            `classification_head` or `frozen_parts` entry, fewer than 2 cross-attention scales, a heads list of
            the wrong length, tokens or heads that do not divide a scale's width, or a bad KAN grid; plus the
            shared checks of `CXRClassifierConfig` (e.g. a `loss` not in `loss_types`).
    """

    model_type = "mmcaf_net"
    default_labels: ClassVar[tuple[str, ...]] = AG_LABELS
    loss_types: ClassVar[tuple[str, ...]] = SINGLE_LABEL_LOSS_TYPES  # softmax losses: one histology per patient
    default_problem_type: ClassVar[str] = "single_label_classification"
    presets: ClassVar[dict[str, dict[str, Any]]] = MMCAF_NET_PRESETS

    num_slices: int = 12
    num_clinical_features: int = len(CLINICAL_FEATURE_NAMES)
    stem_channels: int = 64
    encoder_widths: list[int] | tuple[int, ...] = (256, 512, 1024)
    encoder_depths: list[int] | tuple[int, ...] = (3, 4, 6)
    encoder_strides: list[int] | tuple[int, ...] = (1, 2, 2)
    cardinality: int = 32
    bottleneck_ratio: float | int = 0.5
    se_reduction: int = 16
    e3d_msca_reduction: int = 16
    e3d_msca_spatial_kernel_size: int = 7
    dcfb_expansion: int = 2
    dcfb_kernel_sizes: list[int] | tuple[int, ...] = (1, 3, 5)
    pyramid_separable_convs: bool = True
    image_dropout: float | int = 0.0
    embed_dim: int = 24
    kan_grid_size: int = 5
    kan_spline_order: int = 3
    kan_grid_range: list[float] | tuple[float, float] = (-1.0, 1.0)
    cross_attention_num_scales: int = 3
    cross_attention_tokens: int = 3
    cross_attention_num_heads: list[int] | tuple[int, ...] = (2, 2, 1)
    cross_attention_dropout: float | int = 0.0
    bsf_mode: str = "sum"
    classification_head: str = "fused"
    frozen_parts: list[str] | tuple[str, ...] = ()
    image_size: int = 192
    num_channels: int = 1
    loss: str = "focal"

    def __post_init__(self, **kwargs: Any) -> None:
        for field in ("encoder_widths", "encoder_depths", "encoder_strides", "dcfb_kernel_sizes",
                      "cross_attention_num_heads", "frozen_parts"):  # fmt: skip
            setattr(self, field, list(getattr(self, field)))
        self.kan_grid_range = [float(value) for value in self.kan_grid_range]
        # `num_labels` 2 or 4 without names means the A/G or A/B/E/G histology classes.
        if self.id2label is None and "labels" not in kwargs and kwargs.get("num_labels") in (2, 4):
            kwargs["labels"] = AG_LABELS if kwargs.pop("num_labels") == 2 else ABEG_LABELS
        super().__post_init__(**kwargs)

    @property
    def cross_attention_dims(self) -> list[int]:
        """Vector width at each cross-attention scale, finest first: embed_dim, embed_dim / 2, ..."""
        return [self.embed_dim // 2**scale for scale in range(self.cross_attention_num_scales)]

    @property
    def fused_dim(self) -> int:
        """Width of the fused vector the classifier reads (doubled by `bsf_mode="concat"`)."""
        return self.embed_dim * (2 if self.bsf_mode == "concat" else 1)

    @property
    def pixel_values_shape(self) -> tuple[int | None, ...]:
        """The shape of one CT slab, `pixel_values[i]`: (num_channels, slices, image_size, image_size). The number of
        slices is left open (None): the encoder is convolutional over depth, and a processor may cut slabs of
        another depth than `num_slices` (the one the training recipe uses)."""
        return (self.num_channels, None, self.image_size, self.image_size)

    def _validate(self) -> None:
        super()._validate()
        if self.num_channels != 1:
            self._fail("num_channels", f"must be 1 (CT in HU, windowed), got {self.num_channels}")
        if not len(self.encoder_widths) == len(self.encoder_depths) == len(self.encoder_strides) == 3:
            self._fail("encoder_widths", "encoder_widths, encoder_depths and encoder_strides need 3 entries each")
        for width in self.encoder_widths:
            middle = int(width * self.bottleneck_ratio)
            if middle % self.cardinality:
                self._fail("cardinality", f"({self.cardinality}) must divide the bottleneck width {middle}")
        if self.bsf_mode not in BSF_MODES:
            self._fail("bsf_mode", f"must be one of {BSF_MODES}, got {self.bsf_mode!r}")
        if self.classification_head not in CLASSIFICATION_HEADS:
            self._fail(
                "classification_head", f"must be one of {CLASSIFICATION_HEADS}, got {self.classification_head!r}"
            )
        bad_parts = sorted(set(self.frozen_parts) - set(FREEZABLE_PARTS))
        if bad_parts:
            self._fail("frozen_parts", f"names unknown parts {bad_parts}; choose from {FREEZABLE_PARTS}")
        if self.cross_attention_num_scales < 2:
            self._fail(
                "cross_attention_num_scales",
                f"must be at least 2 (BSF merges scales), got {self.cross_attention_num_scales}",
            )
        if len(self.cross_attention_num_heads) != self.cross_attention_num_scales:
            self._fail("cross_attention_num_heads", f"needs one entry per scale ({self.cross_attention_num_scales})")
        for dim, heads in zip(self.cross_attention_dims, self.cross_attention_num_heads, strict=True):
            if dim < 1 or dim % self.cross_attention_tokens or (dim // self.cross_attention_tokens) % heads:
                self._fail(
                    "cross_attention_tokens",
                    f"({self.cross_attention_tokens}) and cross_attention_num_heads ({heads}) must divide the scale "
                    f"width {dim} (width / tokens / heads an integer)",
                )
        low, high = self.kan_grid_range
        if not low < high or self.kan_grid_size < 1 or self.kan_spline_order < 0:
            self._fail("kan_grid_range", "needs low < high, kan_grid_size >= 1 and kan_spline_order >= 0")


def histology_labels(letters: str) -> tuple[str, ...]:
    """Class names for a string of histology letters, e.g. `"AG"` or `"ABEG"`."""
    return tuple(HISTOLOGY[letter] for letter in letters)


__all__ = ["MMCAF_NET_PRESETS", "MMCAFNetConfig", "histology_labels"]
