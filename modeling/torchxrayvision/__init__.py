"""torchxrayvision's DenseNet-121 and ResNet-50 chest X-ray classifiers (Cohen et al., MIDL 2022) as Hugging Face
models; `hf-cxr import-torchxrayvision` converts its released weights."""

from .configuration_torchxrayvision import TORCHXRAYVISION_ARCHITECTURES, TORCHXRAYVISION_PRESETS, TorchXRayVisionConfig
from .image_processing_torchxrayvision import TorchXRayVisionImageProcessor
from .modeling_torchxrayvision import (
    TorchXRayVisionForImageClassification,
    TorchXRayVisionImageClassifierOutput,
    TorchXRayVisionModel,
    TorchXRayVisionModelOutput,
    TorchXRayVisionPreTrainedModel,
    operating_point_scores,
)

__all__ = [
    "TORCHXRAYVISION_ARCHITECTURES",
    "TORCHXRAYVISION_PRESETS",
    "TorchXRayVisionConfig",
    "TorchXRayVisionForImageClassification",
    "TorchXRayVisionImageClassifierOutput",
    "TorchXRayVisionImageProcessor",
    "TorchXRayVisionModel",
    "TorchXRayVisionModelOutput",
    "TorchXRayVisionPreTrainedModel",
    "operating_point_scores",
]
