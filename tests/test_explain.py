"""Grad-CAM heatmaps and model attention (`hf_cxr.explain`) on real NIH radiographs.

The central check trains a tiny CR-MSNet in the test to detect a bright square planted at a fixed place in real
NIH images, then requires the heatmap's peak to fall inside the square on held-out images (the square covers
3.5 % of the image, so chance would put the peak there about once in 28 images).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import NIH_DIR

from hf_cxr import build_image_processor, build_model
from hf_cxr.explain import DEFAULT_LAYERS, colormap, explain, heatmap, overlay
from hf_cxr.imaging import load_radiograph
from hf_cxr.lesions import box_mask, insert_square, train_planted_signal_model
from hf_cxr.sample import SAMPLE_DIR

# The planted square in relative image coordinates (rows and columns): 72..120 px of a 256-px image.
SQUARE = (36 / 128, 60 / 128)
IMAGE_SIZE = 128  # 8 x 8 local map for CR-MSNet's default Grad-CAM layer


def square_box(shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """The square's (x0, y0, x1, y1) in an image of `shape`."""
    x0, x1 = round(SQUARE[0] * shape[1]), round(SQUARE[1] * shape[1])
    y0, y1 = round(SQUARE[0] * shape[0]), round(SQUARE[1] * shape[0])
    return x0, y0, x1, y1


def square_mask(shape: tuple[int, int]) -> np.ndarray:
    return box_mask(shape, square_box(shape))


def plant(grey: np.ndarray) -> np.ndarray:
    """The radiograph with a bright square (at least 0.95) at the fixed place."""
    return insert_square(grey, square_box(grey.shape), at_least=0.95).image


def fixture_images() -> list[np.ndarray]:
    return [load_radiograph(path) for path in sorted((NIH_DIR / "images").glob("*.png"))]


@pytest.fixture(scope="module")
def planted_model():
    """A tiny CR-MSNet trained for 60 steps to tell 64 bundled NIH images with the square from the same without.

    The 15 NIH fixture images (256 px, none of them in the bundled sample) stay unseen for the checks.
    """
    train = [load_radiograph(path) for path in sorted((SAMPLE_DIR / "images").glob("*.png"))[:64]]
    return train_planted_signal_model(train, plant, label="Square", image_size=IMAGE_SIZE)


def test_heatmap_peak_lies_in_the_planted_square(planted_model) -> None:
    model, processor = planted_model
    hits, contrasts, margins = 0, [], []
    for grey in fixture_images():
        planted = plant(grey)
        explanation = explain(model, processor, planted, "Square")
        margins.append(explanation.probabilities["Square"] - explain(model, processor, grey).probabilities["Square"])
        heat = explanation.heatmaps["Square"]
        assert heat.shape == grey.shape and heat.dtype == np.float32
        assert heat.std() > 0.05 and heat.min() >= 0.0 and 0.8 < heat.max() <= 1.0
        mask = square_mask(heat.shape)
        hits += bool(mask.flat[heat.argmax()])
        contrasts.append(heat[mask].mean() / heat[~mask].mean())
    assert min(margins) > 0 and np.mean(margins) > 0.2, margins  # it learned the square
    assert mask.mean() < 0.04  # chance level of a hit
    assert hits >= 13, f"peak in the square for {hits} of 15 images"
    # Mean heat inside the square against outside it: 5-7x on the one-thread model in development; 2.2x was seen
    # on a model trained with two threads. 2x keeps a clear margin over a map that ignores the square (about 1x).
    assert np.median(contrasts) > 2.0, contrasts


def test_heatmap_follows_the_original_size_through_every_resize_mode(planted_model) -> None:
    model, processor = planted_model
    grey = plant(fixture_images()[0])
    for mode in ("stretch", "pad", "center_crop"):
        processor.resize_mode = mode
        try:
            # A taller-than-wide crop, so padding and cropping both change the geometry.
            tall = grey[:, 32:224]
            heat = heatmap(model, processor, tall, "Square")
        finally:
            processor.resize_mode = "stretch"
        assert heat.shape == tall.shape
        assert heat.std() > 0.01
        if mode == "center_crop":  # the model saw rows 32..224 of the 256: nothing outside
            assert np.all(heat[:20] == 0) and np.all(heat[-20:] == 0) and heat[40:-40].max() > 0


@pytest.mark.parametrize("mode", ["stretch", "pad", "center_crop"])
def test_maps_are_put_back_onto_the_original_pixels(mode: str) -> None:
    """The processor's own input, mapped back with the explainer's geometry, lands on the original image."""
    from hf_cxr.explain import _Geometry

    grey = load_radiograph(sorted((NIH_DIR / "images").glob("*.png"))[1])[20:230, 10:150]  # 210 x 140
    processor = build_image_processor("cr_msnet", "tiny", size=96, resize_mode=mode, do_normalize=False)
    seen = processor(grey, return_tensors="pt")["pixel_values"][0, 0]
    back = _Geometry(*grey.shape, 96, 96, mode).to_image_map(seen)
    assert back.shape == grey.shape
    region = np.ones_like(grey, dtype=bool)
    if mode == "center_crop":  # 140 px wide -> scale 96/140: rows 35..175 of 210 were seen
        region[:] = False
        region[37:173] = True
        assert np.all(back[:34] == 0) and np.all(back[176:] == 0)
    error = np.abs(back - grey)[region].mean()
    assert error < 0.04, error  # resampling blur only; a misplaced map would differ by ~0.2


def test_every_architecture_gives_image_shaped_maps_and_its_own_attention(nih_images: list[Path]) -> None:
    grey = load_radiograph(nih_images[2])[:, 40:240]  # 256 x 200, not square
    for model_type in DEFAULT_LAYERS:
        model = build_model(model_type, "tiny").eval()
        processor = build_image_processor(model_type, "tiny")
        explanation = explain(model, processor, grey, list(model.config.id2label.values()))
        assert explanation.layer in DEFAULT_LAYERS[model_type]
        assert len(explanation.heatmaps) == model.config.num_labels
        for heat in explanation.heatmaps.values():
            assert heat.shape == grey.shape and np.isfinite(heat).all()
            assert heat.min() >= 0.0 and heat.max() <= 1.0
        assert any(heat.std() > 0.01 for heat in explanation.heatmaps.values())
        assert sorted(explanation.probabilities) == sorted(model.config.id2label.values())
        if model_type == "cr_msnet":
            assert explanation.attention is not None and explanation.attention.shape == grey.shape
            assert explanation.attention.std() > 0.01 and explanation.attention.max() <= 1.0
        else:
            assert explanation.attention is None
        if model_type == "mxa_efficientvit":
            # Each block's normalised box over the input, scaled to the (stretched) 256 x 200 image.
            pixels = processor(grey, return_tensors="pt")["pixel_values"]
            with torch.no_grad():
                raw = model(pixel_values=pixels, output_attentions=True).roi_boxes
            assert len(explanation.boxes) == len(raw) == len(model.mxa_efficientvit.mxa_blocks)
            for box, normalised in zip(explanation.boxes, raw, strict=True):
                assert np.allclose(box, normalised[0].numpy() * [200, 256, 200, 256], atol=1e-3)
                assert 0 <= box[0] <= box[2] <= 200 and 0 <= box[1] <= box[3] <= 256
        else:
            assert explanation.boxes is None


def test_mxa_boxes_follow_padding() -> None:
    model = build_model("mxa_efficientvit", "tiny").eval()
    processor = build_image_processor("mxa_efficientvit", "tiny", resize_mode="pad")
    grey = load_radiograph(sorted((NIH_DIR / "images").glob("*.png"))[0])[:, :128]  # 256 x 128: bars left, right
    boxes = explain(model, processor, grey, top_k=1).boxes
    with torch.no_grad():
        raw = model(pixel_values=processor(grey, return_tensors="pt")["pixel_values"], output_attentions=True).roi_boxes
    # 64-px input: the image becomes 64 x 32 with 16-px black bars left and right; 1 input px = 4 image px.
    for box, normalised in zip(boxes, raw, strict=True):
        x1, y1, x2, y2 = normalised[0].tolist()
        expected = [np.clip((x1 * 64 - 16) * 4, 0, 128), y1 * 256, np.clip((x2 * 64 - 16) * 4, 0, 128), y2 * 256]
        assert np.allclose(box, expected, atol=1e-3), (box, expected)


def test_layer_override_and_bad_layers(planted_model) -> None:
    model, processor = planted_model
    grey = plant(fixture_images()[3])
    explanation = explain(model, processor, grey, 0, layer="cr_msnet.global_attention")
    assert explanation.layer == "cr_msnet.global_attention"
    assert explanation.heatmaps["Square"].shape == grey.shape
    by_name = heatmap(model, processor, grey, "Square")
    assert np.array_equal(by_name, heatmap(model, processor, grey, 0))
    assert not np.array_equal(by_name, explanation.heatmaps["Square"])  # a different layer, a different map
    with pytest.raises(ValueError, match="no module"):
        explain(model, processor, grey, "Square", layer="cr_msnet.nonexistent")
    with pytest.raises(ValueError, match=r"\[batch, channels, height, width\]"):
        explain(model, processor, grey, "Square", layer="cr_msnet.global_proj")  # tokens, not a map
    with pytest.raises(ValueError, match="unknown finding"):
        heatmap(model, processor, grey, "Pneumothorax")
    with pytest.raises(ValueError, match="out of range"):
        heatmap(model, processor, grey, 3)


def test_model_mode_is_restored(planted_model) -> None:
    model, processor = planted_model
    model.train()
    try:
        explain(model, processor, fixture_images()[0], top_k=1)
        assert model.training
    finally:
        model.eval()


def test_overlay_blends_heat_and_draws_boxes(nih_images: list[Path]) -> None:
    grey = load_radiograph(nih_images[0])
    heat = np.zeros_like(grey)
    heat[100:150, 60:120] = 1.0
    picture = overlay(nih_images[0], heat, boxes=[(10, 20, 60, 90)])
    assert picture.mode == "RGB" and picture.size == (grey.shape[1], grey.shape[0])
    rgb = np.asarray(picture).astype(np.float32) / 255
    assert np.allclose(rgb[200:250, 150:200], grey[200:250, 150:200, None], atol=1 / 255)  # cold: radiograph
    hot = rgb[110:140, 70:110]
    assert (hot[..., 0] - hot[..., 2]).mean() > 0.3  # hot: red over the grey
    assert tuple(np.asarray(picture)[50, 10]) != tuple(np.repeat(np.round(grey[50, 10] * 255), 3))  # box edge
    assert np.allclose(colormap(np.array([0.0, 1.0])), [[0.0, 0.0, 0.35], [1.0, 0.15, 0.0]])
    with pytest.raises(ValueError, match="differs"):
        overlay(grey, heat[:10])
