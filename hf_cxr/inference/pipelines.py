"""The pipeline tasks hf-cxr registers.

`"chest-x-ray-classification"` reads chest X-ray files faithfully: `pipeline("image-classification")` opens file
paths itself and converts them to 8-bit RGB, which clips 16-bit PNGs and cannot read DICOM; this task hands every
input (path, bytes, DICOM, PIL image, array) to the model's image processor, which reads it at full precision.
Scores are per-finding sigmoids for the multi-label models, as with the standard task. The class lives in the model
folders (`modeling/common/pipeline_cxr.py`), so that a saved model also runs it as remote code without hf-cxr.

`"ct-clinical-classification"` runs MMCAF-Net on a CT series and a clinical record and returns patient-level
class scores (max over slabs by default).
"""

from __future__ import annotations

from transformers import AutoModelForImageClassification, AutoModelForVideoClassification
from transformers.pipelines import PIPELINE_REGISTRY

from hf_cxr.modeling.common.pipeline_cxr import CXR_TASK, ChestXRayClassificationPipeline
from hf_cxr.modeling.mmcaf_net.pipeline_mmcaf_net import CT_CLINICAL_TASK, CTClinicalClassificationPipeline


def register_pipeline() -> None:
    """Register both tasks; a saved model's remote-code copy of a registered task then gives way to it (see
    `CXRClassifierConfig.custom_pipelines`)."""
    PIPELINE_REGISTRY.register_pipeline(
        CXR_TASK, pipeline_class=ChestXRayClassificationPipeline, pt_model=AutoModelForImageClassification
    )
    # MMCAF-Net: CT series + clinical record -> patient-level scores (max over slabs); the class lives beside the
    # model so that a pipeline saved with `save_pretrained` also runs as remote code.
    PIPELINE_REGISTRY.register_pipeline(
        CT_CLINICAL_TASK, pipeline_class=CTClinicalClassificationPipeline, pt_model=AutoModelForVideoClassification
    )


__all__ = [
    "CT_CLINICAL_TASK",
    "CXR_TASK",
    "CTClinicalClassificationPipeline",
    "ChestXRayClassificationPipeline",
    "register_pipeline",
]
