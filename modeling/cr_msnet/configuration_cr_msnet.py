"""CR-MSNet configuration (Wang et al., Sci Rep 16, 14585, 2026)."""

from __future__ import annotations

from typing import Any, ClassVar

from transformers import PretrainedConfig

from .labels import CHESTXRAY14_LABELS, label_maps
from .losses import LOSS_TYPES

CR_MSNET_PRESETS: dict[str, dict[str, Any]] = {
    # The published configuration: CoAtNet-2 (rw) global branch, ResNet-50 local branch at 224 px.
    "paper": {},
    # Seconds on a CPU, for tests and demos: same modules, tiny widths and depths, 64 px.
    "tiny": {
        "image_size": 64,
        "global_backbone": "coatnet_nano_rw_224",
        "global_backbone_kwargs": {"embed_dim": [32, 32, 64, 64], "depths": [1, 1, 1, 1], "stem_width": [16, 32]},
        "local_backbone": "resnet18",
        "local_backbone_kwargs": {"layers": [1, 1, 1, 1], "channels": [16, 32, 64, 128], "stem_width": 16},
        "fusion_dim": 64,
        "num_attention_heads": 4,
        "gate_hidden_dim": 32,
    },
}


class CRMSNetConfig(PretrainedConfig):
    r"""Configuration of a CR-MSNet model. Every ambiguity of the paper is a field with a documented default.

    Args:
        image_size (`int`, defaults to 224): input height and width.
        num_channels (`int`, defaults to 3): input channels (the backbones are ImageNet-style RGB networks).
        global_backbone (`str`, defaults to `"coatnet_2_rw_224"`): timm model for the global branch (paper:
            CoAtNet-2); its final feature map becomes the global tokens.
        global_backbone_kwargs (`dict`): extra keyword arguments for `timm.create_model` of the global branch.
        local_backbone (`str`, defaults to `"resnet50"`): timm ResNet-family model for the local branch (paper:
            "a residual CNN").
        local_backbone_kwargs (`dict`): extra keyword arguments for `timm.create_model` of the local branch.
        local_feature_index (`int`, defaults to 3): which local stage feeds the fusion (3 = layer3, stride 16,
            finer than the global stride 32; 4 = layer4).
        drop_path_rate (`float`, defaults to 0.1): stochastic depth in both backbones.
        pms_csa_reduction (`int`, defaults to 16): channel-MLP reduction of PMS-CSA.
        pms_csa_kernel_sizes (`list[int]`, defaults to `[3, 5, 7]`): parallel spatial kernels of PMS-CSA.
        pms_csa_combine (`str`, defaults to `"residual"`): how the parallel channel (a_c) and spatial (a_s)
            weights are applied while keeping the input structure: `"residual"` x * (1 + a_c + a_s), or
            `"learned"` x * (1 + w_c a_c + w_s a_s) with learned scalars w (initialised to 1).
        fusion_dim (`int`, defaults to 512): token width d of the cross-attention fusion.
        num_attention_heads (`int`, defaults to 8): cross-attention heads.
        attention_dropout (`float`, defaults to 0.0): dropout on the attention weights.
        bidirectional_fusion (`bool`, defaults to `False`): also let local tokens query global ones and add the
            pooled result to the fused vector (the paper describes global-queries-local; this is the option).
        gate_hidden_dim (`int`, defaults to 256): hidden width of the adaptive gate MLP.
        classifier_dropout (`float`, defaults to 0.2): dropout before the classifier.
        loss (`str`, defaults to `"bce"`): `bce`, `focal`, `class_balanced_focal` or `asymmetric`. The paper's
            stage 2 uses a rare-class and hard-example weighted loss; the training recipe picks it.
        focal_gamma (`float`, defaults to 2.0): focusing parameter of the focal losses.
        class_positive_counts (`list[int]`, *optional*): positives per finding in the training split (for
            `class_balanced_focal`; written by the training script from the dataset).
        num_train_samples (`int`, *optional*): size of the training split (with `class_positive_counts`).
        class_balance_mode (`str`, defaults to `"effective_number"`): `effective_number` (Cui et al.) or
            `inverse_frequency` ((N / n_c)^beta).
        class_balance_beta (`float`, defaults to 0.9999): beta of the chosen class-balance rule.
        asymmetric_gamma_pos, asymmetric_gamma_neg, asymmetric_clip (`float`, defaults 0, 4, 0.05): ASL.
        decision_thresholds (`dict[str, float]`, *optional*): per-finding thresholds chosen on the validation
            split by the evaluation step (Youden); 0.5 where absent.
        initializer_range (`float`, defaults to 0.02): std of the normal init of the fusion and head layers.
        labels / id2label: the findings, by default the 14 ChestX-ray14 findings in NIH's order.
    """

    model_type = "cr_msnet"
    presets: ClassVar[dict[str, dict[str, Any]]] = CR_MSNET_PRESETS

    def __init__(
        self,
        image_size: int = 224,
        num_channels: int = 3,
        global_backbone: str = "coatnet_2_rw_224",
        global_backbone_kwargs: dict[str, Any] | None = None,
        local_backbone: str = "resnet50",
        local_backbone_kwargs: dict[str, Any] | None = None,
        local_feature_index: int = 3,
        drop_path_rate: float = 0.1,
        pms_csa_reduction: int = 16,
        pms_csa_kernel_sizes: list[int] | tuple[int, ...] = (3, 5, 7),
        pms_csa_combine: str = "residual",
        fusion_dim: int = 512,
        num_attention_heads: int = 8,
        attention_dropout: float = 0.0,
        bidirectional_fusion: bool = False,
        gate_hidden_dim: int = 256,
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
        self.global_backbone = global_backbone
        self.global_backbone_kwargs = dict(global_backbone_kwargs or {})
        self.local_backbone = local_backbone
        self.local_backbone_kwargs = dict(local_backbone_kwargs or {})
        self.local_feature_index = local_feature_index
        self.drop_path_rate = drop_path_rate
        self.pms_csa_reduction = pms_csa_reduction
        self.pms_csa_kernel_sizes = list(pms_csa_kernel_sizes)
        self.pms_csa_combine = pms_csa_combine
        self.fusion_dim = fusion_dim
        self.num_attention_heads = num_attention_heads
        self.attention_dropout = attention_dropout
        self.bidirectional_fusion = bidirectional_fusion
        self.gate_hidden_dim = gate_hidden_dim
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
            raise ValueError(f"CRMSNetConfig.loss must be one of {LOSS_TYPES}, got {self.loss!r}")
        if self.pms_csa_combine not in ("residual", "learned"):
            raise ValueError(
                f"CRMSNetConfig.pms_csa_combine must be 'residual' or 'learned', got {self.pms_csa_combine!r}"
            )
        if self.local_feature_index not in (1, 2, 3, 4):
            raise ValueError(f"CRMSNetConfig.local_feature_index must be 1-4, got {self.local_feature_index}")
        if self.fusion_dim % self.num_attention_heads:
            raise ValueError(
                f"CRMSNetConfig.fusion_dim ({self.fusion_dim}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        counts = self.class_positive_counts
        if counts is not None and len(counts) != self.num_labels:
            raise ValueError(
                f"CRMSNetConfig.class_positive_counts has {len(counts)} entries for {self.num_labels} labels"
            )

    @classmethod
    def from_preset(cls, preset: str = "paper", **overrides: Any) -> CRMSNetConfig:
        """A config from a named preset (`paper` or `tiny`), with any field overridden."""
        if preset not in cls.presets:
            raise ValueError(f"unknown {cls.model_type} preset {preset!r}; choose from {sorted(cls.presets)}")
        return cls(**{**cls.presets[preset], **overrides})
