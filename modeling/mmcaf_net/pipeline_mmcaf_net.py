"""The `"ct-clinical-classification"` pipeline: a CT series + clinical record -> patient-level class scores.

`pipeline(task, model=folder)({"series": path, "clinical": {...}})` runs the model's `MMCAFNetProcessor` on the
input (so DICOM folders, file lists, HU volumes and dataset rows are read at full precision), the model on every
slab, and reduces the per-slab softmax probabilities to one score per class with the max over slabs (the
paper's patient-level rule; `aggregate="mean"` is the alternative). With the max the scores need not sum to 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from transformers import Pipeline

CT_CLINICAL_TASK = "ct-clinical-classification"
AGGREGATIONS = ("max", "mean")


class CTClinicalClassificationPipeline(Pipeline):
    """Classify a patient from a CT series and a clinical record (see the module docstring).

    Call arguments: `aggregate` (`"max"` or `"mean"` over slabs), `top_k` (default every class),
    `slice_selection` / `slab_stride` (override the processor's, e.g. `"sliding"`), `return_details` (return a
    dict with `scores`, `slab_scores`, `slab_start`, `clinical_missing` and `clinical_unknown`).
    """

    _load_processor = False
    _load_image_processor = True
    _load_video_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def _sanitize_parameters(
        self,
        aggregate: str | None = None,
        top_k: int | None = None,
        slice_selection: str | None = None,
        slab_stride: int | None = None,
        return_details: bool | None = None,
        **kwargs: Any,
    ) -> tuple[dict, dict, dict]:
        preprocess = {"slice_selection": slice_selection, "slab_stride": slab_stride}
        aggregate = aggregate or "max"
        if aggregate not in AGGREGATIONS:
            raise ValueError(f"aggregate must be one of {AGGREGATIONS}, got {aggregate!r}")
        postprocess = {"aggregate": aggregate, "top_k": top_k, "return_details": bool(return_details)}
        return {k: v for k, v in preprocess.items() if v is not None}, {}, postprocess

    def preprocess(self, inputs: Any, **kwargs: Any) -> dict[str, Any]:
        if not isinstance(inputs, Mapping) or not ({"series", "volume"} & set(inputs)):
            raise ValueError(
                "ct-clinical-classification takes a dict {'series': folder | files | HU volume, 'clinical': {...}} "
                f"(optionally 'lesion_slice_range' or 'annotations'), or a dataset row; got {type(inputs).__name__}"
            )
        processed = self.image_processor(inputs, return_tensors="pt", **kwargs)
        return {
            "pixel_values": processed["pixel_values"].to(self.dtype),
            "clinical_values": processed["clinical_values"].to(self.dtype),
            "slab_start": processed["slab_start"],
            "clinical_missing": processed["clinical_missing"][0],
            "clinical_unknown": processed["clinical_unknown"][0],
        }

    def _forward(self, model_inputs: dict[str, Any]) -> dict[str, Any]:
        outputs = self.model(pixel_values=model_inputs["pixel_values"], clinical_values=model_inputs["clinical_values"])
        return {
            "logits": outputs.logits,  # [slabs, num_labels]
            **{key: model_inputs[key] for key in ("slab_start", "clinical_missing", "clinical_unknown")},
        }

    def postprocess(
        self,
        model_outputs: dict[str, Any],
        aggregate: str = "max",
        top_k: int | None = None,
        return_details: bool = False,
    ) -> Any:
        slab_scores = torch.softmax(model_outputs["logits"].float(), dim=-1)  # [slabs, num_labels]
        patient = slab_scores.amax(dim=0) if aggregate == "max" else slab_scores.mean(dim=0)
        id2label = self.model.config.id2label
        scores = sorted(
            ({"label": id2label[index], "score": float(score)} for index, score in enumerate(patient.tolist())),
            key=lambda entry: entry["score"],
            reverse=True,
        )[: top_k or len(id2label)]
        if not return_details:
            return scores
        return {
            "scores": scores,
            "slab_scores": slab_scores.tolist(),
            "slab_start": model_outputs["slab_start"].tolist(),
            "clinical_missing": model_outputs["clinical_missing"],
            "clinical_unknown": model_outputs["clinical_unknown"],
        }


__all__ = ["AGGREGATIONS", "CT_CLINICAL_TASK", "CTClinicalClassificationPipeline"]
