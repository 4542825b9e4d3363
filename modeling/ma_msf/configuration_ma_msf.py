"""MA-MSF configuration: Momentum-Anchored Multi-Scale Fusion (Khuong et al., arXiv 2605.02292, 2026)."""

from typing import Any, ClassVar

from huggingface_hub.dataclasses import strict

from .backbone_weights import check_backbone_weights
from .configuration_cxr import CXRClassifierConfig

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


@strict(accept_kwargs=True)
class MAMSFConfig(CXRClassifierConfig):
    r"""Configuration of a Momentum-Anchored Multi-Scale Fusion network. The paper gives the backbone, the anchored
    block, the EMA rule and the fusion kernels; every other choice is a field with a documented default.

    Takes the shared classifier fields of `CXRClassifierConfig` (image size, channels, classifier dropout, the
    multi-label loss, decision thresholds, labels: by default the 14 ChestX-ray14 findings), plus:

    Args:
        backbone (`str`, defaults to `"efficientnetv2_s"`): timm EfficientNet-family model (paper: EfficientNetV2-S).
            `efficientnetv2_s` is timm's PyTorch-native variant; `tf_efficientnetv2_s` (TF "same" padding, BN eps
            1e-3) also works; only the latter has pretrained weights in timm (`backbone_weights`).
        backbone_kwargs (`dict`): extra keyword arguments for `timm.create_model` (e.g. `channel_multiplier`,
            `depth_multiplier`).
        backbone_weights (`bool` or `str`, *optional*): start the backbone from pretrained timm weights: `True` for
            timm's default tag of `backbone`, a tag (`"tf_efficientnetv2_s.in21k_ft_in1k"`, or `"in21k_ft_in1k"`) or a
            local `.safetensors` file; `None` (default) initialises it randomly (the paper does not say). Read by timm
            (through `huggingface_hub`: with `HF_HUB_OFFLINE=1` from the Hugging Face cache) when the model is built
            from this config (`hf_cxr.build_model`, `train.py --backbone-weights`), never by `from_pretrained`, whose
            `model.safetensors` holds the trained values: the field is kept as provenance. The momentum anchor starts
            as a copy of the loaded block. Weights of timm's standard architecture do not fit a backbone narrowed or
            shortened by `backbone_kwargs` (the tiny preset's): `ValueError`. See `backbone_weights.py`.
        drop_path_rate (`float`, defaults to 0.1): stochastic depth in the online backbone (paper silent).
        zero_init_residual (`bool`, defaults to `True`): zero the scale of the last BatchNorm in every residual block
            of the backbone, so each block starts as the identity (ours: the paper does not say how it initialised
            the backbone). Without it a randomly initialised full-depth EfficientNetV2-S learned nothing in 500 steps
            of the learnability benchmark (docs/benchmarks.md). It applies to random initialisation only: with
            `backbone_weights` the loaded values are kept.
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
    """

    model_type = "ma_msf"
    presets: ClassVar[dict[str, dict[str, Any]]] = MA_MSF_PRESETS

    backbone: str = "efficientnetv2_s"
    backbone_kwargs: dict[str, Any] | None = None
    backbone_weights: bool | str | None = None
    drop_path_rate: float | int = 0.1
    zero_init_residual: bool = True
    anchor_scope: str = "final_expansion"
    anchor_momentum: float | int = 0.999
    anchor_stop_gradient: bool = False
    fusion: str = "concat"
    fusion_kernels: list[int] | tuple[int, ...] = (1, 3, 5)
    fusion_branch_channels: int = 96
    fusion_dim: int = 512

    def __post_init__(self, **kwargs: Any) -> None:
        self.backbone_kwargs = dict(self.backbone_kwargs or {})
        self.anchor_momentum = float(self.anchor_momentum)
        self.fusion_kernels = list(self.fusion_kernels)
        super().__post_init__(**kwargs)

    def _validate(self) -> None:
        super()._validate()
        check_backbone_weights(self.backbone_weights, f"{type(self).__name__}.backbone_weights")
        if self.anchor_scope not in ANCHOR_SCOPES:
            self._fail("anchor_scope", f"must be one of {ANCHOR_SCOPES}, got {self.anchor_scope!r}")
        if not 0.0 <= self.anchor_momentum <= 1.0:
            self._fail("anchor_momentum", f"must lie in [0, 1], got {self.anchor_momentum}")
        if self.fusion not in FUSION_MODES:
            self._fail("fusion", f"must be one of {FUSION_MODES}, got {self.fusion!r}")
        if not self.fusion_kernels or any(k < 1 or k % 2 == 0 for k in self.fusion_kernels):
            self._fail("fusion_kernels", f"must be odd positive sizes, got {self.fusion_kernels}")
