"""The pipeline tasks hf-cxr registers.

`"chest-x-ray-classification"` reads chest X-ray files faithfully. `pipeline("image-classification")` opens file
paths itself and converts them to 8-bit RGB, which clips 16-bit PNGs and cannot read DICOM; this task hands every
input (path, bytes, DICOM, PIL image, array) to the model's image processor, which reads it at full precision.
Scores are per-finding sigmoids for the multi-label models, as with the standard task.

`"ct-clinical-classification"` runs MMCAF-Net on a CT series and a clinical record and returns patient-level
class scores (max over windows by default).
"""

from __future__ import annotations

from typing import Any

from transformers import AutoModelForImageClassification, AutoModelForVideoClassification, ImageClassificationPipeline
from transformers.pipelines import PIPELINE_REGISTRY

from hf_cxr.modeling.mmcaf_net.pipeline_mmcaf_net import CT_CLINICAL_TASK, CTClinicalClassificationPipeline

CXR_TASK = "chest-x-ray-classification"


class ChestXRayClassificationPipeline(ImageClassificationPipeline):
    """`ImageClassificationPipeline` whose inputs are read by the hf-cxr image processor, not `load_image`.

    `top_k` defaults to every finding (the standard task stops at 5).
    """

    def _sanitize_parameters(self, top_k: int | None = None, **kwargs: Any):
        preprocess, forward, postprocess = super()._sanitize_parameters(top_k=top_k, **kwargs)
        if top_k is None:
            postprocess["top_k"] = self.model.config.num_labels
        return preprocess, forward, postprocess

    def preprocess(self, image: Any, timeout: float | None = None):
        return self.image_processor(images=image, return_tensors="pt").to(self.dtype)


def register_pipeline() -> None:
    PIPELINE_REGISTRY.register_pipeline(
        CXR_TASK, pipeline_class=ChestXRayClassificationPipeline, pt_model=AutoModelForImageClassification
    )
    # MMCAF-Net: CT series + clinical record -> patient-level scores (max over windows); the class lives beside the
    # model so that a pipeline saved with `save_pretrained` also runs as remote code.
    PIPELINE_REGISTRY.register_pipeline(
        CT_CLINICAL_TASK, pipeline_class=CTClinicalClassificationPipeline, pt_model=AutoModelForVideoClassification
    )
