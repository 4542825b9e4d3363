"""MA-MSF configuration: Momentum-Anchored Multi-Scale Fusion (Khuong et al., arXiv 2605.02292, 2026)."""

from __future__ import annotations

from typing import Any, ClassVar

from transformers import PretrainedConfig

from .labels import CHESTXRAY14_LABELS, label_maps
from .losses import LOSS_TYPES

ANCHOR_SCOPES = ("final_expansion", "last_stage")
FUSION_MODES = ("concat", "sum")

MA_MSF_PRESETS: dict[str, dict[str, Any]] = {
    # The published configuration: EfficientNetV2-S at 224 px, anchor on the final expansion block, m = 0.999.
    "paper": {},
    # Well under a second per step on a CPU, for tests and demos: same modules, quarter widths, one block per
    # stage (two in the last, so `anchor_scope="last_stage"` copies a real multi-block stage), 64 px.
    "tiny": {
        "image_size": 64,
        "backbone_kwargs": {"channel_multiplier": 0.25, "depth_multiplier": 0.1},
        "fusion_branch_channels": 16,
        "fusion_dim": 32,
    },
}


class MAMSFConfig(PretrainedConfig):
    r"""Configuration of a Momentum-Anchored Multi-Scale Fusion network. The paper gives the backbone, the anchored
    block, the EMA rule and the fusion kernels; every other choice is a field with a documented default.

    Args:
        image_size (`int`, defaults to 224): input height and width (the paper trains at 224).
        num_channels (`int`, defaults to 3): input channels (the backbone is an ImageNet-style RGB network).
        backbone (`str`, defaults to `"efficientnetv2_s"`): timm EfficientNet-family model (paper: EfficientNetV2-S).
            `efficientnetv2_s` is timm's PyTorch-native variant; `tf_efficientnetv2_s` (TF "same" padding, BN eps
            1e-3) also works. Always built with `pretrained=False`.
        backbone_kwargs (`dict`): extra keyword arguments for `timm.create_model` (e.g. `channel_multiplier`,
            `depth_multiplier`).
        drop_path_rate (`float`, defaults to 0.1): stochastic depth in the online backbone (paper silent).
        anchor_scope (`str`, defaults to `"final_expansion"`): what the momentum anchor copies.
            `"final_expansion"`: the final expansion block, timm's `conv_head` + `bn2` (the paper's "final expansion
            block"); `"last_stage"`: the last stage of blocks as well (`blocks[-1]` + `conv_head` + `bn2`).
        anchor_momentum (`float`, defaults to 0.999): m in theta_a <- m * theta_a + (1 - m) * theta_online, applied
            by `update_anchor()` after every optimizer step. 1.0 freezes the anchor, 0.0 makes it the online copy.
        anchor_stop_gradient (`bool`, defaults to `False`): the anchor's own weights never get gradients; with `False`
            the gradient of the anchor's output still flows through its (frozen) weights into the shared trunk, so the
            trunk is pulled toward features the slow anchor can use (the paper's figure forks the anchor from the
            encoder without a stop-gradient). `True` detaches the anchor's input (a pure teacher branch).
        fusion (`str`, defaults to `"concat"`): how the online map h and the anchor map z_ema are combined before the
            multi-scale convolutions: channel concatenation (2C channels) or element-wise sum (C channels).
        fusion_kernels (`list[int]`, defaults to `[1, 3, 5]`): kernel sizes of the parallel fusion convolutions (odd).
        fusion_branch_channels (`int`, defaults to 96): output channels of each parallel conv (conv-BN-SiLU). The
            paper gives no width; 96 keeps the fusion under the issue's 25% inference budget over the backbone.
        fusion_dim (`int`, defaults to 512): channels of the 1x1 conv (BN-SiLU) that mixes the concatenated branches;
            the pooled vector of this width feeds the classifier.
        classifier_dropout (`float`, defaults to 0.2): dropout before the classifier (timm's EfficientNetV2-S default;
            paper silent).
        loss (`str`, defaults to `"bce"`): `bce`, `focal`, `class_balanced_focal` or `asymmetric` (the training recipe
            picks the stage-2 loss).
        focal_gamma (`float`, defaults to 2.0): focusing parameter of the focal losses.
        class_positive_counts (`list[int]`, *optional*): positives per finding in the training split (for
            `class_balanced_focal`; written by the training script from the dataset).
        num_train_samples (`int`, *optional*): size of the training split (with `class_positive_counts`).
        class_balance_mode (`str`, defaults to `"effective_number"`): `effective_number` (Cui et al.) or
            `inverse_frequency` ((N / n_c)^beta).
        class_balance_beta (`float`, defaults to 0.9999): beta of the chosen class-balance rule.
        asymmetric_gamma_pos, asymmetric_gamma_neg, asymmetric_clip (`float`, defaults 0, 4, 0.05): ASL.
        decision_thresholds (`dict[str, float]`, *optional*): per-finding thresholds chosen on the validation split
            by the evaluation step (Youden); 0.5 where absent.
        initializer_range (`float`, defaults to 0.02): std of the normal init of the classifier.
        labels / id2label: the findings, by default the 14 ChestX-ray14 findings in NIH's order.
    """

    model_type = "ma_msf"
    presets: ClassVar[dict[str, dict[str, Any]]] = MA_MSF_PRESETS

    def __init__(
        self,
        image_size: int = 224,
        num_channels: int = 3,
        backbone: str = "efficientnetv2_s",
        backbone_kwargs: dict[str, Any] | None = None,
        drop_path_rate: float = 0.1,
        anchor_scope: str = "final_expansion",
        anchor_momentum: float = 0.999,
        anchor_stop_gradient: bool = False,
        fusion: str = "concat",
        fusion_kernels: list[int] | tuple[int, ...] = (1, 3, 5),
        fusion_branch_channels: int = 96,
        fusion_dim: int = 512,
        classifier_dropout: float = 0.2,
        loss: str = "bce",
        focal_gamma: float = 2.0,
        class_positive_counts: list[int] | None = None,
        num_train_samples: int | None = None,
        class_balance_mode: str = "effective_number",
        class_balance_beta: float = 0.9999,
        asymmetric_gamma_pos: float = 0.0,
        asymmetric_gamma_neg: float = 4.0,
        asymmetric_clip: float = 0.05,
        decision_thresholds: dict[str, float] | None = None,
        initializer_range: float = 0.02,
        **kwargs: Any,
    ) -> None:
        self.image_size = image_size
        self.num_channels = num_channels
        self.backbone = backbone
        self.backbone_kwargs = dict(backbone_kwargs or {})
        self.drop_path_rate = drop_path_rate
        self.anchor_scope = anchor_scope
        self.anchor_momentum = float(anchor_momentum)
        self.anchor_stop_gradient = anchor_stop_gradient
        self.fusion = fusion
        self.fusion_kernels = list(fusion_kernels)
        self.fusion_branch_channels = fusion_branch_channels
        self.fusion_dim = fusion_dim
        self.classifier_dropout = classifier_dropout
        self.loss = loss
        self.focal_gamma = focal_gamma
        self.class_positive_counts = list(class_positive_counts) if class_positive_counts is not None else None
        self.num_train_samples = num_train_samples
        self.class_balance_mode = class_balance_mode
        self.class_balance_beta = class_balance_beta
        self.asymmetric_gamma_pos = asymmetric_gamma_pos
        self.asymmetric_gamma_neg = asymmetric_gamma_neg
        self.asymmetric_clip = asymmetric_clip
        self.decision_thresholds = dict(decision_thresholds or {})
        self.initializer_range = initializer_range
        if "id2label" not in kwargs and "num_labels" not in kwargs:
            kwargs["id2label"], kwargs["label2id"] = label_maps(kwargs.pop("labels", CHESTXRAY14_LABELS))
        kwargs.setdefault("problem_type", "multi_label_classification")
        super().__init__(**kwargs)
        self._validate()

    def _validate(self) -> None:
        if self.loss not in LOSS_TYPES:
            raise ValueError(f"MAMSFConfig.loss must be one of {LOSS_TYPES}, got {self.loss!r}")
        if self.anchor_scope not in ANCHOR_SCOPES:
            raise ValueError(f"MAMSFConfig.anchor_scope must be one of {ANCHOR_SCOPES}, got {self.anchor_scope!r}")
        if not 0.0 <= self.anchor_momentum <= 1.0:
            raise ValueError(f"MAMSFConfig.anchor_momentum must lie in [0, 1], got {self.anchor_momentum}")
        if self.fusion not in FUSION_MODES:
            raise ValueError(f"MAMSFConfig.fusion must be one of {FUSION_MODES}, got {self.fusion!r}")
        if not self.fusion_kernels or any(k < 1 or k % 2 == 0 for k in self.fusion_kernels):
            raise ValueError(f"MAMSFConfig.fusion_kernels must be odd positive sizes, got {self.fusion_kernels}")
        counts = self.class_positive_counts
        if counts is not None and len(counts) != self.num_labels:
            raise ValueError(
                f"MAMSFConfig.class_positive_counts has {len(counts)} entries for {self.num_labels} labels"
            )

    @classmethod
    def from_preset(cls, preset: str = "paper", **overrides: Any) -> MAMSFConfig:
        """A config from a named preset (`paper` or `tiny`), with any field overridden."""
        if preset not in cls.presets:
            raise ValueError(f"unknown {cls.model_type} preset {preset!r}; choose from {sorted(cls.presets)}")
        return cls(**{**cls.presets[preset], **overrides})
