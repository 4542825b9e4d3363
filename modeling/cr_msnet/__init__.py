"""CR-MSNet (Wang et al., Sci Rep 2026) as a Hugging Face model."""

from .configuration_cr_msnet import CR_MSNET_PRESETS, CRMSNetConfig
from .image_processing_cr_msnet import CRMSNetImageProcessor
from .modeling_cr_msnet import (
    CRMSNetForImageClassification,
    CRMSNetImageClassifierOutput,
    CRMSNetModel,
    CRMSNetModelOutput,
    CRMSNetPreTrainedModel,
)

__all__ = [
    "CR_MSNET_PRESETS",
    "CRMSNetConfig",
    "CRMSNetForImageClassification",
    "CRMSNetImageClassifierOutput",
    "CRMSNetImageProcessor",
    "CRMSNetModel",
    "CRMSNetModelOutput",
    "CRMSNetPreTrainedModel",
]
