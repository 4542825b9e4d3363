"""The `"chest-x-ray-classification"` pipeline: every input is read by the model's image processor.

`pipeline("image-classification")` opens file paths itself and converts them to 8-bit RGB, which clips 16-bit PNGs
and cannot read DICOM; this task hands every input (path, bytes, DICOM, PIL image, array) to the model's image
processor, which reads it at full precision. Scores are per-finding sigmoids for the multi-label models, as with the
standard task, and `top_k` defaults to every finding.

One source, two ways to run it: hf-cxr registers the task on import (`hf_cxr.inference.pipelines`), and a saved 2D
model folder carries this file as remote code and lists it in its config's `custom_pipelines`
(`custom_pipelines_entry`), so `pipeline("chest-x-ray-classification", model=repo_id, trust_remote_code=True)` works
without hf-cxr installed.
"""

from __future__ import annotations

from typing import Any

from transformers import ImageClassificationPipeline

CXR_TASK = "chest-x-ray-classification"


class ChestXRayClassificationPipeline(ImageClassificationPipeline):
    """`ImageClassificationPipeline` whose inputs are read by the hf-cxr image processor, not `load_image`.

    Input: one image or a list (anything the model's image processor reads). Output: for each image, a list of
    `{"label", "score"}` sorted by score; `top_k` defaults to every finding (the standard task stops at 5).
    """

    def _sanitize_parameters(self, top_k: int | None = None, **kwargs: Any):
        preprocess, forward, postprocess = super()._sanitize_parameters(top_k=top_k, **kwargs)
        if top_k is None:
            postprocess["top_k"] = self.model.config.num_labels
        return preprocess, forward, postprocess

    def preprocess(self, image: Any, timeout: float | None = None):
        return self.image_processor(images=image, return_tensors="pt").to(self.dtype)


def custom_pipelines_entry() -> dict[str, dict[str, Any]]:
    """The config's `custom_pipelines` entry naming this pipeline as remote code (the form `Pipeline.save_pretrained`
    writes): task -> `{"impl": "pipeline_cxr.ChestXRayClassificationPipeline", "pt": [the Auto class]}`."""
    module = ChestXRayClassificationPipeline.__module__.rsplit(".", 1)[-1]
    return {
        CXR_TASK: {
            "impl": f"{module}.{ChestXRayClassificationPipeline.__name__}",
            "pt": ["AutoModelForImageClassification"],
        }
    }


__all__ = ["CXR_TASK", "ChestXRayClassificationPipeline", "custom_pipelines_entry"]
