"""MXA-EfficientViT: configs of every variant, the MXA block (ROI boxes, pooling, gradients), fusions, heads,
save/load and input checks. The generic Hugging Face contract (Auto classes, remote code, pipeline, Trainer,
PEFT) is checked for every architecture in test_model_contract.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from hf_cxr.modeling.mxa_efficientvit import (
    MXA_EFFICIENTVIT_VARIANTS,
    MXAEfficientViTConfig,
    MXAEfficientViTForImageClassification,
    MXAEfficientViTImageProcessor,
)
from hf_cxr.modeling.mxa_efficientvit.modeling_mxa_efficientvit import MXABlock, bilinear_roi_pool
from transformers import AutoImageProcessor, AutoModelForImageClassification

import hf_cxr
from hf_cxr.labels import CHEXPERT_LABELS

PUBLISHED = {  # the MXA paper's Table 2 (widths / depths / heads)
    "m0": ([64, 128, 192], [1, 2, 3], [4, 4, 4]),
    "m1": ([128, 144, 192], [1, 2, 3], [2, 3, 3]),
    "m2": ([128, 192, 224], [1, 2, 3], [4, 3, 2]),
    "m3": ([128, 240, 320], [1, 2, 3], [4, 3, 4]),
    "m4": ([128, 256, 384], [1, 2, 3], [4, 4, 4]),
    "m5": ([192, 288, 384], [1, 3, 4], [3, 3, 4]),
}


def tiny(**overrides) -> MXAEfficientViTForImageClassification:
    return hf_cxr.build_model("mxa_efficientvit", "tiny", **overrides)


def images(batch: int = 4, size: int = 64) -> torch.Tensor:
    return torch.randn(batch, 1, size, size) * 300


@pytest.mark.parametrize("variant", sorted(PUBLISHED))
def test_every_variant_has_the_published_settings(variant: str) -> None:
    config = MXAEfficientViTConfig(variant=variant)
    assert (config.embed_dim, config.depth, config.num_heads) == PUBLISHED[variant]
    assert config.kernels == ([5, 5, 5, 5] if variant in ("m0", "m3") else [7, 5, 3, 3])
    assert (config.key_dim, config.window_size, config.image_size, config.num_channels) == (16, 7, 224, 1)
    assert [config.id2label[i] for i in range(14)] == list(CHEXPERT_LABELS)
    assert config.problem_type == "multi_label_classification"
    # The table agrees with timm's efficientvit_<variant> (which the backbone is built from).
    reference = timm.create_model(f"efficientvit_{variant}", pretrained=False, num_classes=0)
    assert [stage.blocks[0].mixer.m.attn.num_heads for stage in reference.stages] == config.num_heads
    assert [len(stage.blocks) for stage in reference.stages] == config.depth
    assert set(MXA_EFFICIENTVIT_VARIANTS) == set(PUBLISHED)


def test_presets_and_invalid_settings() -> None:
    assert MXAEfficientViTConfig.from_preset("paper").variant == "m5"
    assert hf_cxr.build_config("mxa_efficientvit", "tiny").image_size == 64
    processor = hf_cxr.build_image_processor("mxa_efficientvit", "tiny")
    assert processor.size == {"height": 64, "width": 64} and processor.num_channels == 1
    bad = [
        {"variant": "m6"},
        {"mxa_fusion": "serial"},
        {"roi_pooling": "crop"},
        {"roi_initial_box": [0.0, 0.1, 0.9, 0.9]},
        {"image_size": 100},
        {"embed_dim": [64, 128, 190]},  # 190 is not divisible by 4 heads
        {"kernels": [5, 5]},  # fewer kernels than heads
        {"mxa_alpha_init": 1.0},
        {"loss": "hinge"},
    ]
    for overrides in bad:
        with pytest.raises(ValueError):
            MXAEfficientViTConfig(**overrides)
    with pytest.raises(ValueError, match="preset"):
        MXAEfficientViTConfig.from_preset("huge")


def test_shapes_and_train_versus_eval_logits() -> None:
    model = tiny()
    pixels = images()
    model.train()
    output = model(pixel_values=pixels, labels=torch.ones(4, 14))
    assert output.logits.shape == output.cls_logits.shape == output.distillation_logits.shape == (4, 14)
    assert torch.allclose(output.logits, (output.cls_logits + output.distillation_logits) / 2)
    expected_loss = (
        torch.nn.functional.binary_cross_entropy_with_logits(output.cls_logits, torch.ones(4, 14))
        + torch.nn.functional.binary_cross_entropy_with_logits(output.distillation_logits, torch.ones(4, 14))
    ) / 2
    assert torch.allclose(output.loss, expected_loss)

    model.eval()
    with torch.no_grad():
        output = model(pixel_values=pixels, output_hidden_states=True)
        features = model.mxa_efficientvit(pixel_values=pixels)
        head = model.classifier.head(features.pooler_output)
        head_dist = model.classifier.head_dist(features.pooler_output)
    assert output.cls_logits is None and output.distillation_logits is None and output.roi_boxes is None
    assert torch.allclose(output.logits, (head + head_dist) / 2) and not torch.allclose(head, head_dist)
    assert list(output.keys()) == ["logits"]  # nothing else for Trainer's prediction loop to gather
    assert features.hidden_states is None
    hidden = model.mxa_efficientvit(pixel_values=pixels, output_hidden_states=True).hidden_states
    assert [tuple(h.shape) for h in hidden] == [(4, 32, 4, 4), (4, 48, 2, 2), (4, 64, 1, 1)]

    single = tiny(distillation_head=False).eval()
    assert single.classifier.head_dist is None
    with torch.no_grad():
        assert single(pixel_values=pixels).logits.shape == (4, 14)


@pytest.mark.parametrize("roi_pooling", ["differentiable", "reference"])
def test_roi_boxes_are_ordered_and_inside_the_map(roi_pooling: str) -> None:
    # Corners start swapped; training mode, so BatchNorm normalises the untrained features as in real training.
    model = tiny(roi_pooling=roi_pooling, roi_initial_box=[0.8, 0.7, 0.2, 0.3]).train()
    with torch.no_grad():
        boxes = model(pixel_values=images(), output_attentions=True).roi_boxes
    assert len(boxes) == sum(model.config.depth) == len(model.mxa_efficientvit.mxa_blocks)
    for box in boxes:
        assert box.shape == (4, 4)
        assert (box >= 0).all() and (box <= 1).all()
        assert (box[:, 0] <= box[:, 2]).all() and (box[:, 1] <= box[:, 3]).all()
    if roi_pooling == "differentiable":  # the initial box, reordered: (0.2, 0.3, 0.8, 0.7)
        assert torch.allclose(boxes[0], torch.tensor([[0.2, 0.3, 0.8, 0.7]]).expand(4, 4), atol=0.05)


def test_default_initial_box_covers_most_of_the_map() -> None:
    model = tiny().train()
    with torch.no_grad():
        boxes = model(pixel_values=images(), output_attentions=True).roi_boxes
    for box in boxes:
        assert torch.allclose(box, torch.tensor([0.05, 0.05, 0.95, 0.95]).expand(4, 4), atol=0.03)


def test_bilinear_roi_pool_geometry() -> None:
    features = torch.randn(2, 3, 7, 7)
    full = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2)
    assert torch.allclose(bilinear_roi_pool(features, full), features, atol=1e-6)
    ramp = torch.arange(8.0).view(1, 1, 1, 8).expand(1, 1, 8, 8)  # value = column index
    left = bilinear_roi_pool(ramp, torch.tensor([[0.0, 0.0, 0.5, 1.0]]))
    assert left.min() >= 0 and left.max() <= 4.0  # only the left half is seen
    # Output column j samples column 0.5 j - 0.25 of the input (clamped to the border at j = 0).
    assert torch.allclose(left[0, 0, 0], torch.tensor([0.0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.25]))


@pytest.mark.parametrize(("roi_pooling", "learns"), [("differentiable", True), ("reference", False)])
def test_only_differentiable_pooling_trains_the_roi_predictor(roi_pooling: str, learns: bool) -> None:
    model = tiny(roi_pooling=roi_pooling)
    model.train()
    model(pixel_values=images(), labels=torch.randint(0, 2, (4, 14)).float()).loss.backward()
    for block in model.mxa_efficientvit.mxa_blocks[:2]:  # the last 1x1 map gives a constant pooled map
        grads = [p.grad for p in block.roi_predictor.parameters()]
        if learns:
            assert all(g is not None and g.abs().sum() > 0 for g in grads)
        else:
            assert all(g is None or g.abs().sum() == 0 for g in grads)
        assert block.channel_attention.fc1.weight.grad.abs().sum() > 0  # the rest of MXA always learns


def test_fusions_and_the_baseline() -> None:
    pixels = images()
    outputs = {}
    for fusion in ("parallel", "alpha", "reference"):
        model = tiny(mxa_fusion=fusion).eval()
        calls = []
        attention = model.mxa_efficientvit.backbone.stages[0].blocks[0].mixer.m
        attention.register_forward_hook(lambda *_, calls=calls: calls.append(1))
        with torch.no_grad():
            outputs[fusion] = model(pixel_values=pixels).logits
        assert len(calls) == (2 if fusion == "reference" else 1)  # the public code runs attention twice
        assert torch.isfinite(outputs[fusion]).all()
    alpha_model = tiny(mxa_fusion="alpha", mxa_alpha_init=0.2)
    assert torch.sigmoid(alpha_model.mxa_efficientvit.backbone.stages[0].blocks[0].mixer.alpha_logit).item() == (
        pytest.approx(0.2)
    )
    # Same seed, same weights except the fusion: the outputs differ.
    assert not torch.allclose(outputs["parallel"], outputs["reference"])

    baseline = tiny(use_mxa=False)
    assert not any(isinstance(m, MXABlock) for m in baseline.modules())
    timm_keys = set(
        timm.create_model(
            "efficientvit_m0", num_classes=0, in_chans=1, img_size=64, embed_dim=(32, 48, 64), depth=(1, 1, 1),
            num_heads=(2, 2, 2),
        ).state_dict()
    )  # fmt: skip
    prefix = "mxa_efficientvit.backbone."
    assert {k[len(prefix) :] for k in baseline.state_dict() if k.startswith(prefix)} == timm_keys
    # With MXA, the attention keeps timm's parameter names (timm weights load into it).
    assert timm_keys <= {k[len(prefix) :] for k in tiny().state_dict() if k.startswith(prefix)}


@pytest.mark.parametrize("overrides", [{}, {"mxa_fusion": "alpha", "roi_pooling": "reference"}])
def test_save_and_reload_is_exact(overrides: dict, tmp_path: Path) -> None:
    model = tiny(**overrides).eval()
    processor = hf_cxr.build_image_processor("mxa_efficientvit", "tiny")
    pixels = images()
    with torch.no_grad():
        before = model(pixel_values=pixels, output_attentions=True)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert type(reloaded) is MXAEfficientViTForImageClassification
    saved, original = reloaded.config.to_dict(), model.config.to_dict()
    assert {k: v for k, v in saved.items() if k != "_name_or_path"} == {
        k: v for k, v in original.items() if k != "_name_or_path"
    }
    with torch.no_grad():
        after = reloaded(pixel_values=pixels, output_attentions=True)
    assert torch.equal(before.logits, after.logits)
    assert all(torch.equal(a, b) for a, b in zip(before.roi_boxes, after.roi_boxes, strict=True))
    assert type(AutoImageProcessor.from_pretrained(tmp_path)) is MXAEfficientViTImageProcessor


def test_m0_at_full_size_builds_and_runs() -> None:
    model = hf_cxr.build_model("mxa_efficientvit", "paper", variant="m0").eval()
    with torch.no_grad():
        output = model(pixel_values=images(2, 224), output_attentions=True)
    assert output.logits.shape == (2, 14)
    assert [tuple(b.shape) for b in output.roi_boxes] == [(2, 4)] * 6


def test_bad_input_raises_value_error() -> None:
    model = tiny()
    with pytest.raises(ValueError, match="pixel_values"):
        model(pixel_values=torch.randn(2, 3, 64, 64))  # RGB
    with pytest.raises(ValueError, match="pixel_values"):
        model(pixel_values=torch.randn(2, 1, 224, 224))  # not the configured size
    with pytest.raises(ValueError, match="pixel_values"):
        model(pixel_values=torch.randn(1, 64, 64))
    with pytest.raises(ValueError, match="labels"):
        model(pixel_values=images(2), labels=torch.zeros(2, 13))
    with pytest.raises(ValueError, match="batch of at least 2"):
        model.train()(pixel_values=images(1))
    with torch.no_grad():
        assert model.eval()(pixel_values=images(1)).logits.shape == (1, 14)


def test_processor_scales_to_the_torchxrayvision_range() -> None:
    processor = hf_cxr.build_image_processor("mxa_efficientvit")
    image = np.zeros((300, 260), dtype=np.uint8)
    image[:, 130:] = 255
    pixels = processor(image, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 1, 224, 224)
    assert pixels.min().item() == -1024.0 and pixels.max().item() == 1024.0
    sixteen_bit = np.full((64, 64), 65535, dtype=np.uint16)
    assert processor(sixteen_bit, return_tensors="pt")["pixel_values"].unique().tolist() == [1024.0]
    with pytest.raises(ValueError):
        processor(np.full((64, 64), 2.0, dtype=np.float32))  # floats must lie in [0, 1]
