"""Findings and heatmap pictures for radiographs, the library behind `hf-cxr predict`.

`load_predictor` loads a saved model folder or a Hub id from the local cache (never the network);
`predict` scores each input, marks findings above their decision thresholds (the per-finding values the
evaluation step stores in `config.decision_thresholds`, else 0.5, or one fixed value) and writes a PNG with the
radiograph and Grad-CAM overlays of the top findings. `results_to_json` gives the `--json` schema:

    {
      "schema_version": 1,
      "model": str,                    # what --model named
      "threshold": "per-class" | float,
      "disclaimer": str,
      "results": [                     # one object per input, in input order
        {
          "path": str,
          "findings": [                # every finding, most probable first
            {"label": str, "probability": float, "threshold": float, "positive": bool}
          ],
          "heatmap": str | null,       # the PNG written for this input (null without an output folder)
          "heatmap_findings": [str],   # the findings drawn in it, most probable first
          "layer": str | null,         # the Grad-CAM layer
          "error": str | null          # why the input was refused (findings then empty)
        }
      ]
    }

Research use only: the models are not medical devices and their heatmaps are not evidence of disease.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont
from transformers import AutoImageProcessor, AutoModelForImageClassification

from hf_cxr.explain import Explanation, explain, overlay
from hf_cxr.modeling.common.imaging import load_radiograph

DISCLAIMER = (
    "Research use only: hf-cxr models are not medical devices and must not be used for diagnosis or patient "
    "care; heatmaps show what drove a model's score, not where disease is."
)
SCHEMA_VERSION = 1
_TILE = 384  # longest side of each picture in the PNG, so a 3000-px DICOM does not make a 12000-px file


@dataclass
class Finding:
    label: str
    probability: float
    threshold: float
    positive: bool


@dataclass
class PredictionResult:
    """One input's findings (most probable first) and the picture written for it."""

    path: str
    findings: list[Finding] = field(default_factory=list)
    heatmap: str | None = None
    heatmap_findings: list[str] = field(default_factory=list)
    layer: str | None = None
    error: str | None = None


def load_predictor(model_id: str | os.PathLike, device: str | None = None) -> tuple[Any, Any]:
    """Model (eval mode) and image processor from a folder or a Hub id already in the local cache.

    `local_files_only`: predicting must never download (the id resolves from `HF_HUB_CACHE`); hf-cxr's own
    classes (registered when `hf_cxr` is imported, as it is by this module) are used, so no remote code runs.
    """
    model_id = os.fspath(model_id)
    model = AutoModelForImageClassification.from_pretrained(model_id, local_files_only=True, trust_remote_code=False)
    processor = AutoImageProcessor.from_pretrained(model_id, local_files_only=True, trust_remote_code=False)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), processor


def decision_thresholds(config: Any, threshold: str | float = "per-class") -> dict[str, float]:
    """Finding -> threshold: `config.decision_thresholds` with 0.5 for missing findings ("per-class"), or one
    value for every finding."""
    labels = [config.id2label[index] for index in range(config.num_labels)]
    if threshold == "per-class":
        stored = getattr(config, "decision_thresholds", None) or {}
        return {label: float(stored.get(label, 0.5)) for label in labels}
    value = float(threshold)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"threshold must be 'per-class' or a probability in [0, 1], got {threshold!r}")
    return dict.fromkeys(labels, value)


def predict(
    model: Any,
    processor: Any,
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike | None = None,
    threshold: str | float = "per-class",
    top_k: int = 3,
    layer: str | None = None,
) -> list[PredictionResult]:
    """Score every input; with `out_dir`, write `<name>_heatmap.png` per input (radiograph + `top_k` overlays).

    An input that cannot be read as a radiograph (e.g. a CT DICOM) gets its `error` set and the others go on.
    """
    thresholds = decision_thresholds(model.config, threshold)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    used_names: set[str] = set()
    results = []
    for source in inputs:
        result = PredictionResult(path=os.fspath(source))
        try:
            grey = load_radiograph(source)
        except ValueError as error:
            result.error = str(error)
            results.append(result)
            continue
        explanation = explain(model, processor, grey, top_k=top_k, layer=layer)
        ranked = sorted(explanation.probabilities.items(), key=lambda item: item[1], reverse=True)
        result.findings = [Finding(name, p, thresholds[name], p >= thresholds[name]) for name, p in ranked]
        result.heatmap_findings = list(explanation.heatmaps)
        result.layer = explanation.layer
        if out is not None:
            target = out / _unique_name(Path(source).stem, used_names)
            render(explanation, result.findings, title=Path(source).name).save(target)
            result.heatmap = str(target)
        results.append(result)
    return results


def _unique_name(stem: str, used: set[str]) -> str:
    name, index = f"{stem}_heatmap.png", 1
    while name in used:
        index += 1
        name = f"{stem}_{index}_heatmap.png"
    used.add(name)
    return name


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _fit(picture: Image.Image) -> Image.Image:
    scale = _TILE / max(picture.size)
    return picture.resize((max(round(picture.width * scale), 1), max(round(picture.height * scale), 1)))


def render(explanation: Explanation, findings: Sequence[Finding], title: str = "") -> Image.Image:
    """One PNG-ready picture: the radiograph (with MXA's ROI boxes), CR-MSNet's cross-attention where present,
    then one Grad-CAM overlay per mapped finding; captions above, the research-use notice below."""
    by_label = {finding.label: finding for finding in findings}
    tiles: list[tuple[str, Image.Image]] = [
        (
            f"{title}" + (" + MXA ROI boxes" if explanation.boxes else ""),
            overlay(explanation.image, None, explanation.boxes),
        )
    ]
    if explanation.attention is not None:
        tiles.append(("CR-MSNet cross-attention", overlay(explanation.image, explanation.attention)))
    for label, heat in explanation.heatmaps.items():
        finding = by_label[label]
        mark = " (above threshold)" if finding.positive else ""
        tiles.append((f"{label} {finding.probability:.2f}{mark}", overlay(explanation.image, heat)))
    tiles = [(caption, _fit(picture)) for caption, picture in tiles]
    font, small = _font(15), _font(12)
    header, footer, gap = 24, 22, 6
    width = sum(picture.width for _, picture in tiles) + gap * (len(tiles) + 1)
    height = max(picture.height for _, picture in tiles) + header + footer + gap
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    x = gap
    for caption, picture in tiles:
        canvas.paste(picture, (x, header))
        draw.text((x, 4), caption, fill=(255, 255, 255), font=font)
        x += picture.width + gap
    footer_text = f"Grad-CAM layer {explanation.layer}. Research use only: not a medical device, not a diagnosis."
    draw.text((gap, height - footer + 3), footer_text, fill=(200, 200, 200), font=small)
    return canvas


def results_to_json(results: Sequence[PredictionResult], model_id: str, threshold: str | float) -> dict[str, Any]:
    """The documented `--json` object (see the module docstring)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "model": model_id,
        "threshold": threshold if threshold == "per-class" else float(threshold),
        "disclaimer": DISCLAIMER,
        "results": [asdict(result) for result in results],
    }


def format_results(results: Sequence[PredictionResult]) -> str:
    """Human-readable findings: one block per input, most probable first, '*' where above the threshold."""
    lines = []
    for result in results:
        lines.append(result.path)
        if result.error is not None:
            lines.append(f"  refused: {result.error}")
            continue
        width = max(len(finding.label) for finding in result.findings)
        for finding in result.findings:
            mark = "*" if finding.positive else " "
            lines.append(
                f"  {mark} {finding.label:<{width}}  {finding.probability:.3f}  (threshold {finding.threshold:.2f})"
            )
        if result.heatmap:
            lines.append(f"  heatmaps ({', '.join(result.heatmap_findings)}): {result.heatmap}")
    lines.append("* = probability at or above the finding's decision threshold.")
    lines.append(DISCLAIMER)
    return "\n".join(lines)


__all__ = [
    "DISCLAIMER",
    "Finding",
    "PredictionResult",
    "decision_thresholds",
    "format_results",
    "load_predictor",
    "predict",
    "render",
    "results_to_json",
]
