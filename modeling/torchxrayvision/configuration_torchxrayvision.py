"""Configuration of torchxrayvision's chest X-ray classifiers (DenseNet-121, ResNet-50) as hf-cxr models.

Cohen JP et al., "TorchXRayVision: A library of chest X-ray datasets and models", MIDL 2022 (arXiv:2111.00595).
The weights themselves are imported from torchxrayvision's release files by `hf-cxr import-torchxrayvision`
(`hf_cxr.interop.torchxrayvision`), which fills `torchxrayvision_weights`, `labels` and `decision_thresholds`.
"""

from typing import Any, ClassVar

from huggingface_hub.dataclasses import strict

from .configuration_cxr import CXRClassifierConfig
from .labels import TORCHXRAYVISION_LABELS

# The timm models that reproduce torchxrayvision's two architectures: timm's `densenet121(in_chans=1)` has exactly
# the state-dict keys of `torchxrayvision.models.DenseNet` and computes the same features; timm's `resnet50` has the
# keys of the torchvision ResNet-50 that `torchxrayvision.models.ResNet` wraps.
TORCHXRAYVISION_ARCHITECTURES: tuple[str, ...] = ("densenet121", "resnet50")

TORCHXRAYVISION_PRESETS: dict[str, dict[str, Any]] = {
    # torchxrayvision's DenseNet-121 at 224 px: the architecture of its seven `densenet121-res224-*` weight sets and
    # of the MIDL 2022 paper's models.
    "paper": {"architecture": "densenet121", "image_size": 224},
    "densenet121": {"architecture": "densenet121", "image_size": 224},
    # torchxrayvision's ResNet-50 at 512 px (`resnet50-res512-all`).
    "resnet50": {"architecture": "resnet50", "image_size": 512},
    # Seconds on a CPU, for tests and demos: a DenseNet with two 16-channel layers per block at 64 px (final map 2 x 2).
    "tiny": {
        "architecture": "densenet121",
        "image_size": 64,
        "backbone_kwargs": {"growth_rate": 16, "block_config": [2, 2, 2, 2]},
    },
}


@strict(accept_kwargs=True)
class TorchXRayVisionConfig(CXRClassifierConfig):
    r"""Configuration of a torchxrayvision classifier: a timm DenseNet-121 or ResNet-50 on one grey channel with a
    linear multi-label head, the architecture of torchxrayvision's pretrained weight sets.

    Takes the shared classifier fields of `CXRClassifierConfig` (the multi-label loss and its parameters, decision
    thresholds, initializer range; labels: by default torchxrayvision's 18 outputs, as its own models are built
    without weights), with these defaults and fields:

    Args:
        architecture (`str`, defaults to `"densenet121"`): `"densenet121"` or `"resnet50"`, built with timm
            (`timm.create_model(architecture, in_chans=num_channels, num_classes=0)`).
        backbone_kwargs (`dict`, *optional*): extra keyword arguments for `timm.create_model` (the `tiny` preset's
            narrow DenseNet); empty for the published architectures.
        torchxrayvision_weights (`str`, *optional*): the torchxrayvision weight set this model was imported from,
            e.g. `"densenet121-res224-chex"` (provenance); `None` for a model built fresh.
        image_size (`int`, defaults to 224): input height and width (the weight set's `input_resolution`: 224 for
            the DenseNets, 512 for the ResNet-50).
        num_channels (`int`, defaults to 1): input channels (torchxrayvision's models read one grey channel with
            intensities in [-1024, 1024]).
        classifier_dropout (`float`, defaults to 0.0): dropout before the classifier (torchxrayvision has none).
        decision_thresholds (`dict[str, float]`, *optional*): for an imported weight set, torchxrayvision's
            operating points (`op_threshs`, probabilities) of the findings that have one.
        labels (`list[str]`, *optional*): for an imported weight set, only the findings it was trained on, in
            torchxrayvision's output order.

    Raises `ValueError` naming the field for an unknown architecture, a channel count other than 1 or 3, or a weight
    set name that is not of this architecture.
    """

    model_type = "torchxrayvision"
    default_labels: ClassVar[tuple[str, ...]] = TORCHXRAYVISION_LABELS
    presets: ClassVar[dict[str, dict[str, Any]]] = TORCHXRAYVISION_PRESETS

    architecture: str = "densenet121"
    backbone_kwargs: dict[str, Any] | None = None
    torchxrayvision_weights: str | None = None
    num_channels: int = 1
    classifier_dropout: float | int = 0.0

    def __post_init__(self, **kwargs: Any) -> None:
        self.backbone_kwargs = dict(self.backbone_kwargs or {})
        super().__post_init__(**kwargs)

    def _validate(self) -> None:
        super()._validate()
        if self.architecture not in TORCHXRAYVISION_ARCHITECTURES:
            self._fail("architecture", f"must be one of {TORCHXRAYVISION_ARCHITECTURES}, got {self.architecture!r}")
        if self.num_channels not in (1, 3):
            self._fail("num_channels", f"must be 1 (torchxrayvision's grey input) or 3, got {self.num_channels}")
        weights = self.torchxrayvision_weights
        if weights is not None and not str(weights).startswith(f"{self.architecture}-"):
            self._fail("torchxrayvision_weights", f"{weights!r} is not a {self.architecture} weight set")


__all__ = ["TORCHXRAYVISION_ARCHITECTURES", "TORCHXRAYVISION_PRESETS", "TorchXRayVisionConfig"]
