"""CR-MSNet configuration (Wang et al., Sci Rep 16, 14585, 2026)."""

from typing import Any, ClassVar

from huggingface_hub.dataclasses import strict

from .backbone_weights import check_backbone_weights
from .configuration_cxr import CXRClassifierConfig

CR_MSNET_PRESETS: dict[str, dict[str, Any]] = {
    # The published configuration: CoAtNet-2 (rw) global branch, ResNet-50 local branch at 224 px.
    "paper": {},
    # Seconds on a CPU, for tests and demos: same modules, tiny widths and depths, 64 px. The fusion reads the local
    # branch's layer4: this one-block-per-stage ResNet's layer3 is too shallow to carry a finding (in the
    # learnability benchmark the model learned not even the effusion in 1500 steps from layer3; from layer4 it
    # reached 0.99 AUC in 500).
    "tiny": {
        "image_size": 64,
        "global_backbone": "coatnet_nano_rw_224",
        "global_backbone_kwargs": {"embed_dim": [32, 32, 64, 64], "depths": [1, 1, 1, 1], "stem_width": [16, 32]},
        "local_backbone": "resnet18",
        "local_backbone_kwargs": {"layers": [1, 1, 1, 1], "channels": [16, 32, 64, 128], "stem_width": 16},
        "local_feature_index": 4,
        "fusion_dim": 64,
        "num_attention_heads": 4,
        "gate_hidden_dim": 32,
    },
}


@strict(accept_kwargs=True)
class CRMSNetConfig(CXRClassifierConfig):
    r"""Configuration of a CR-MSNet model. Every ambiguity of the paper is a field with a documented default.

    Takes the shared classifier fields of `CXRClassifierConfig` (image size, channels, classifier dropout, the
    multi-label loss and its parameters, decision thresholds, labels: by default the 14 ChestX-ray14 findings in
    NIH's order), plus:

    Args:
        global_backbone (`str`, defaults to `"coatnet_2_rw_224"`): timm model for the global branch (paper:
            CoAtNet-2); its final feature map becomes the global tokens.
        global_backbone_kwargs (`dict`): extra keyword arguments for `timm.create_model` of the global branch.
        local_backbone (`str`, defaults to `"resnet50"`): timm ResNet-family model for the local branch (paper:
            "a residual CNN").
        local_backbone_kwargs (`dict`): extra keyword arguments for `timm.create_model` of the local branch.
        global_backbone_weights, local_backbone_weights (`bool` or `str`, *optional*): start that branch's backbone
            from pretrained timm weights: `True` for timm's default tag of the backbone (`coatnet_2_rw_224`:
            `sw_in12k_ft_in1k`; `resnet50`: `a1_in1k`), a tag (`"resnet50.a1_in1k"`, or `"a1_in1k"`) or a local
            `.safetensors` file; `None` (default) initialises it randomly (the paper does not say). Read by timm
            (through `huggingface_hub`: with `HF_HUB_OFFLINE=1` from the Hugging Face cache) when the model is built
            from this config (`hf_cxr.build_model`, `train.py --backbone-weights`), never by `from_pretrained`, whose
            `model.safetensors` holds the trained values: the fields are kept as provenance. Weights of timm's
            standard architecture do not fit a backbone changed by the branch's `*_backbone_kwargs` (the tiny
            preset's): `ValueError`. See `backbone_weights.py`.
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
    """

    model_type = "cr_msnet"
    presets: ClassVar[dict[str, dict[str, Any]]] = CR_MSNET_PRESETS

    global_backbone: str = "coatnet_2_rw_224"
    global_backbone_kwargs: dict[str, Any] | None = None
    local_backbone: str = "resnet50"
    local_backbone_kwargs: dict[str, Any] | None = None
    global_backbone_weights: bool | str | None = None
    local_backbone_weights: bool | str | None = None
    local_feature_index: int = 3
    drop_path_rate: float | int = 0.1
    pms_csa_reduction: int = 16
    pms_csa_kernel_sizes: list[int] | tuple[int, ...] = (3, 5, 7)
    pms_csa_combine: str = "residual"
    fusion_dim: int = 512
    num_attention_heads: int = 8
    attention_dropout: float | int = 0.0
    bidirectional_fusion: bool = False
    gate_hidden_dim: int = 256

    def __post_init__(self, **kwargs: Any) -> None:
        self.global_backbone_kwargs = dict(self.global_backbone_kwargs or {})
        self.local_backbone_kwargs = dict(self.local_backbone_kwargs or {})
        self.pms_csa_kernel_sizes = list(self.pms_csa_kernel_sizes)
        super().__post_init__(**kwargs)

    def _validate(self) -> None:
        super()._validate()
        for field in ("global_backbone_weights", "local_backbone_weights"):
            check_backbone_weights(getattr(self, field), f"{type(self).__name__}.{field}")
        if self.pms_csa_combine not in ("residual", "learned"):
            self._fail("pms_csa_combine", f"must be 'residual' or 'learned', got {self.pms_csa_combine!r}")
        if self.local_feature_index not in (1, 2, 3, 4):
            self._fail("local_feature_index", f"must be 1-4, got {self.local_feature_index}")
        if self.fusion_dim % self.num_attention_heads:
            self._fail("fusion_dim", f"({self.fusion_dim}) must be divisible by num_attention_heads")
