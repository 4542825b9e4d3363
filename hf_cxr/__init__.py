"""hf-cxr: chest-imaging architectures as first-class Hugging Face models.

Importing the package registers every architecture with `AutoConfig`, `AutoModel`, its task's Auto class
(`AutoModelForImageClassification` for the radiograph models, `AutoModelForVideoClassification` for MMCAF-Net's
CT slabs) and `AutoImageProcessor`, and the `"chest-x-ray-classification"` and `"ct-clinical-classification"`
pipeline tasks. Research use only: these models are not medical devices.
"""

from hf_cxr.inference.pipelines import (
    CT_CLINICAL_TASK,
    CXR_TASK,
    ChestXRayClassificationPipeline,
    CTClinicalClassificationPipeline,
    register_pipeline,
)
from hf_cxr.interop.torchxrayvision import import_torchxrayvision
from hf_cxr.labels import CHESTXRAY14_LABELS, CHEXPERT_LABELS
from hf_cxr.modeling.cr_msnet import (
    CRMSNetConfig,
    CRMSNetForImageClassification,
    CRMSNetImageProcessor,
    CRMSNetModel,
)
from hf_cxr.modeling.ma_msf import (
    MAMSFConfig,
    MAMSFForImageClassification,
    MAMSFImageProcessor,
    MAMSFModel,
)
from hf_cxr.modeling.mmcaf_net import (
    MMCAFNetConfig,
    MMCAFNetForCTClassification,
    MMCAFNetModel,
    MMCAFNetProcessor,
)
from hf_cxr.modeling.mxa_efficientvit import (
    MXAEfficientViTConfig,
    MXAEfficientViTForImageClassification,
    MXAEfficientViTImageProcessor,
    MXAEfficientViTModel,
)
from hf_cxr.modeling.torchxrayvision import (
    TorchXRayVisionConfig,
    TorchXRayVisionForImageClassification,
    TorchXRayVisionImageProcessor,
    TorchXRayVisionModel,
)
from hf_cxr.registry import (
    ARCHITECTURES,
    build_config,
    build_image_processor,
    build_model,
    register_architectures,
)

__version__ = "0.1.0"

register_architectures()
register_pipeline()

__all__ = [
    "ARCHITECTURES",
    "CHESTXRAY14_LABELS",
    "CHEXPERT_LABELS",
    "CT_CLINICAL_TASK",
    "CXR_TASK",
    "CRMSNetConfig",
    "CRMSNetForImageClassification",
    "CRMSNetImageProcessor",
    "CRMSNetModel",
    "CTClinicalClassificationPipeline",
    "ChestXRayClassificationPipeline",
    "MAMSFConfig",
    "MAMSFForImageClassification",
    "MAMSFImageProcessor",
    "MAMSFModel",
    "MMCAFNetConfig",
    "MMCAFNetForCTClassification",
    "MMCAFNetModel",
    "MMCAFNetProcessor",
    "MXAEfficientViTConfig",
    "MXAEfficientViTForImageClassification",
    "MXAEfficientViTImageProcessor",
    "MXAEfficientViTModel",
    "TorchXRayVisionConfig",
    "TorchXRayVisionForImageClassification",
    "TorchXRayVisionImageProcessor",
    "TorchXRayVisionModel",
    "build_config",
    "build_image_processor",
    "build_model",
    "import_torchxrayvision",
]
