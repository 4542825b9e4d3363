"""Findings and heatmap pictures for radiographs, the library behind `hf-cxr predict`.

`hf_cxr.registry.load_model` loads a saved model folder or a Hub id from the local cache (never the network);
`predict` scores each input, marks findings above their decision thresholds (the per-finding values the
evaluation step stores in `config.decision_thresholds`, else 0.5, or one fixed value) and writes a PNG with the
radiograph and Grad-CAM overlays of the top findings. An input that fails for any reason (not a radiograph, an
unreadable or malformed file, an error in the model on it) is refused on its own, with its error, and the others
are still scored. `results_to_json` gives the `--json` schema:

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
          "heatmap_findings": [str],   # the findings mapped, most probable first
          "heatmap_status": {str: str},  # finding -> "ok", or why its map carries no location and was not
                                       # drawn: "zero", "constant", "non-finite" (explain.HEATMAP_STATUS)
          "layer": str | null,         # the Grad-CAM layer
          "error": str | null          # why the input was refused (findings, heatmap_findings, heatmap_status
                                       # then empty, heatmap and layer null); for a failure other than a
                                       # ValueError it starts with the exception's type, e.g. "TypeError: ..."
        }
      ]
    }

`heatmap_status` was added within schema version 1 (no existing field changed meaning).

Research use only: the models are not medical devices and their heatmaps are not evidence of disease.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from hf_cxr.imaging import load_radiograph
from hf_cxr.inference.explain import HEATMAP_STATUS, Explanation, explain, overlay

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
    """One input's findings (most probable first) and the picture written for it.

    `heatmap_status`: mapped finding -> "ok" or why its Grad-CAM map carries no location (`HEATMAP_STATUS`).
    `error`: why the input was refused; then everything else is empty or None.
    """

    path: str
    findings: list[Finding] = field(default_factory=list)
    heatmap: str | None = None
    heatmap_findings: list[str] = field(default_factory=list)
    heatmap_status: dict[str, str] = field(default_factory=dict)
    layer: str | None = None
    error: str | None = None


def decision_thresholds(config: Any, threshold: str | float = "per-class") -> dict[str, float]:
    """Finding -> threshold: `config.decision_thresholds` with 0.5 for missing findings ("per-class"), or one
    value for every finding. Raises `ValueError` when `threshold` is neither "per-class" nor a number in [0, 1]
    (a string `float` cannot read included)."""
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

    Returns one `PredictionResult` per input, in input order. Any failure on one input (an `Exception` from reading
    or decoding it, from the model or Grad-CAM on it, or from writing its picture) is caught: that input gets
    `error` set (see `describe_error`), nothing else, and the other inputs are still scored. Raises ValueError
    only for a bad `threshold`, and OSError when `out_dir` cannot be created, before any input is read. A folder
    this call created is removed again when every input was refused (it would hold nothing).
    """
    thresholds = decision_thresholds(model.config, threshold)
    out = Path(out_dir) if out_dir is not None else None
    created = out is not None and not out.exists()
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    used_names: set[str] = set()
    results = []
    for source in inputs:
        path = os.fspath(source)
        try:
            result = _predict_one(model, processor, path, out, used_names, thresholds, top_k, layer)
        except Exception as error:  # one bad input must not stop the others; it is named with its reason
            result = PredictionResult(path=path, error=describe_error(error))
        results.append(result)
    if created and not any(out.iterdir()):  # every input refused: no empty folder of ours left behind
        out.rmdir()
    return results


def _predict_one(
    model: Any,
    processor: Any,
    path: str,
    out: Path | None,
    used_names: set[str],
    thresholds: dict[str, float],
    top_k: int,
    layer: str | None,
) -> PredictionResult:
    explanation = explain(model, processor, load_radiograph(path), top_k=top_k, layer=layer)
    ranked = sorted(explanation.probabilities.items(), key=lambda item: item[1], reverse=True)
    result = PredictionResult(
        path=path,
        findings=[Finding(name, p, thresholds[name], p >= thresholds[name]) for name, p in ranked],
        heatmap_findings=list(explanation.heatmaps),
        heatmap_status=dict(explanation.heatmap_status),
        layer=explanation.layer,
    )
    if out is not None:
        picture = render(explanation, result.findings, title=Path(path).name)
        target = out / _unique_name(Path(path).stem, used_names)
        try:
            picture.save(target)
        except Exception:
            target.unlink(missing_ok=True)  # no half-written picture left behind for a refused input
            raise
        result.heatmap = str(target)
    return result


def describe_error(error: BaseException) -> str:
    """The reason an input was refused: a ValueError's message as it is (hf-cxr's readers raise ValueError saying
    what is wrong with an input they refuse), any other exception's type and message ("TypeError: ...")."""
    message = str(error).strip()
    if isinstance(error, ValueError) and message:
        return message
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


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


# What a finding's tile says instead of a heatmap when its Grad-CAM map carries no location (two short lines).
_NO_MAP_NOTICE = {
    "zero": ("No heatmap: Grad-CAM map all zero,", "nothing on the layer raises this score"),
    "constant": ("No heatmap: Grad-CAM map constant,", "no location stands out"),
    "non-finite": ("No heatmap: Grad-CAM map not finite", "(NaN or infinity in the gradient or features)"),
}


def render(explanation: Explanation, findings: Sequence[Finding], title: str = "") -> Image.Image:
    """One PNG-ready picture: the radiograph (with MXA's ROI boxes), CR-MSNet's cross-attention where present,
    then one Grad-CAM overlay per mapped finding; captions above, the research-use notice below. A finding whose
    map carries no location (`explanation.heatmap_status` not "ok") gets the plain radiograph with the reason
    written on it and "no heatmap" in its caption, never a blank or uniform overlay."""
    by_label = {finding.label: finding for finding in findings}
    tiles: list[tuple[str, Image.Image, tuple[str, ...]]] = [
        (
            f"{title}" + (" + MXA ROI boxes" if explanation.boxes else ""),
            overlay(explanation.image, None, explanation.boxes),
            (),
        )
    ]
    if explanation.attention is not None:
        tiles.append(("CR-MSNet cross-attention", overlay(explanation.image, explanation.attention), ()))
    for label, heat in explanation.heatmaps.items():
        finding = by_label[label]
        caption = f"{label} {finding.probability:.2f}" + (" (above threshold)" if finding.positive else "")
        status = explanation.heatmap_status[label]
        if status == "ok":
            tiles.append((caption, overlay(explanation.image, heat), ()))
        else:
            notice = _NO_MAP_NOTICE.get(status, (f"No heatmap: Grad-CAM map {status}",))
            tiles.append((f"{caption}: no heatmap", overlay(explanation.image, None), notice))
    tiles = [(caption, _fit(picture), notice) for caption, picture, notice in tiles]
    font, small = _font(15), _font(12)
    header, footer, gap = 24, 22, 6
    width = sum(picture.width for _, picture, _ in tiles) + gap * (len(tiles) + 1)
    height = max(picture.height for _, picture, _ in tiles) + header + footer + gap
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    x = gap
    for caption, picture, notice in tiles:
        canvas.paste(picture, (x, header))
        draw.text((x, 4), caption, fill=(255, 255, 255), font=font)
        if notice:  # on a black band across the middle of the tile, so it reads over any radiograph
            top = header + picture.height // 2 - 10 * len(notice)
            draw.rectangle((x, top - 4, x + picture.width - 1, top + 20 * len(notice) + 2), fill=(0, 0, 0))
            for line_index, line in enumerate(notice):
                draw.text((x + 6, top + 20 * line_index), line, fill=(255, 255, 255), font=small)
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
        for label, status in result.heatmap_status.items():
            if status != "ok":
                lines.append(f"  no heatmap for {label}: Grad-CAM map {status} ({HEATMAP_STATUS.get(status, status)})")
    lines.append("* = probability at or above the finding's decision threshold.")
    lines.append(DISCLAIMER)
    return "\n".join(lines)


__all__ = [
    "DISCLAIMER",
    "Finding",
    "PredictionResult",
    "decision_thresholds",
    "describe_error",
    "format_results",
    "predict",
    "render",
    "results_to_json",
]
