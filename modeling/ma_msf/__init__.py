"""Momentum-Anchored Multi-Scale Fusion network (Khuong et al., arXiv 2605.02292, 2026) as a Hugging Face model."""

from .configuration_ma_msf import MA_MSF_PRESETS, MAMSFConfig
from .image_processing_ma_msf import MAMSFImageProcessor
from .modeling_ma_msf import (
    MAMSFForImageClassification,
    MAMSFImageClassifierOutput,
    MAMSFModel,
    MAMSFModelOutput,
    MAMSFPreTrainedModel,
    MomentumAnchor,
)

__all__ = [
    "MA_MSF_PRESETS",
    "MAMSFConfig",
    "MAMSFForImageClassification",
    "MAMSFImageClassifierOutput",
    "MAMSFImageProcessor",
    "MAMSFModel",
    "MAMSFModelOutput",
    "MAMSFPreTrainedModel",
    "MomentumAnchor",
]
