"""MXA-EfficientViT (Rand & Ibrahim 2025) as a Hugging Face model."""

from .configuration_mxa_efficientvit import MXA_EFFICIENTVIT_PRESETS, MXA_EFFICIENTVIT_VARIANTS, MXAEfficientViTConfig
from .image_processing_mxa_efficientvit import MXAEfficientViTImageProcessor
from .modeling_mxa_efficientvit import (
    MXAEfficientViTForImageClassification,
    MXAEfficientViTImageClassifierOutput,
    MXAEfficientViTModel,
    MXAEfficientViTModelOutput,
    MXAEfficientViTPreTrainedModel,
)

__all__ = [
    "MXA_EFFICIENTVIT_PRESETS",
    "MXA_EFFICIENTVIT_VARIANTS",
    "MXAEfficientViTConfig",
    "MXAEfficientViTForImageClassification",
    "MXAEfficientViTImageClassifierOutput",
    "MXAEfficientViTImageProcessor",
    "MXAEfficientViTModel",
    "MXAEfficientViTModelOutput",
    "MXAEfficientViTPreTrainedModel",
]
