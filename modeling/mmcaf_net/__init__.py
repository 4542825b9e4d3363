"""MMCAF-Net (Yu, Ge et al. 2025): 3D CT + clinical table lung cancer histology classifier, as a Hugging Face model."""

from .configuration_mmcaf_net import MMCAF_NET_PRESETS, MMCAFNetConfig
from .image_processing_mmcaf_net import MMCAFNetProcessor
from .modeling_mmcaf_net import (
    KANLayer,
    MMCAFNetCTClassifierOutput,
    MMCAFNetForCTClassification,
    MMCAFNetModel,
    MMCAFNetModelOutput,
    MMCAFNetPreTrainedModel,
)
from .pipeline_mmcaf_net import CT_CLINICAL_TASK, CTClinicalClassificationPipeline

__all__ = [
    "CT_CLINICAL_TASK",
    "MMCAF_NET_PRESETS",
    "CTClinicalClassificationPipeline",
    "KANLayer",
    "MMCAFNetCTClassifierOutput",
    "MMCAFNetConfig",
    "MMCAFNetForCTClassification",
    "MMCAFNetModel",
    "MMCAFNetModelOutput",
    "MMCAFNetPreTrainedModel",
    "MMCAFNetProcessor",
]
