"""Backbones from pretrained timm weights (the `*backbone_weights` config fields): read through timm and
huggingface_hub from a temporary Hugging Face cache when a model is built, carried by the saved model, never read
again by `from_pretrained`, and refused with a line naming the field when they cannot be used.

The cache holds random weights saved in timm's Hub layout (`model.safetensors` + timm's `config.json`) under the
repo ids timm resolves its tags to (`timm/<arch>.<tag>`); the test session is offline (conftest), so nothing can be
downloaded.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import pytest
import timm
import torch
import yaml
from hf_cxr.modeling.ma_msf.backbone_weights import loading_saved_weights
from huggingface_hub import constants
from safetensors.torch import load_file, save_file
from timm.models import save_for_hf
from transformers import AutoModelForImageClassification

import hf_cxr
from hf_cxr.hub import add_to_cache
from hf_cxr.training import add_train_arguments, train
from hf_cxr.training.arguments import config_from_arguments

# The timm tags the tests build from, each small enough for CPU seconds.
TAGS = ("resnet18.a1_in1k", "coatnet_nano_rw_224.sw_in1k", "efficientnet_b0.ra_in1k", "efficientvit_m0.r224_in1k")
# Each architecture with standard (not narrowed) timm backbones that have those tags; CR-MSNet and MXA-EfficientViT
# at 224 px, the size the position tables of the weights are for (other sizes are resized by timm).
BUILDS = {
    "cr_msnet": dict(
        preset="tiny",
        image_size=224,
        global_backbone="coatnet_nano_rw_224",
        global_backbone_kwargs={},
        global_backbone_weights=True,  # timm's default tag: sw_in1k
        local_backbone_kwargs={},
        local_backbone_weights="resnet18.a1_in1k",
    ),
    "ma_msf": dict(preset="tiny", backbone="efficientnet_b0", backbone_kwargs={}, backbone_weights="ra_in1k"),
    "mxa_efficientvit": dict(preset="paper", variant="m0", backbone_weights="efficientvit_m0.r224_in1k"),
}


def _random_timm_weights(name: str, cache: Path, seed: int) -> dict[str, torch.Tensor]:
    """Put random weights of timm's `name` (`arch.tag`, classifier included) in `cache` as the Hub repo timm/name;
    every float tensor is timm's initialisation scaled by U(0.5, 1.5) and shifted by U(-0.05, 0.05), so none equals
    a freshly initialised one (BatchNorm scales of 1, zero biases) and a zeroed or re-initialised tensor is caught,
    while activations keep their scale."""
    arch = name.split(".", 1)[0]
    model = timm.create_model(arch, pretrained=False)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.mul_(torch.rand(tensor.shape, generator=generator) + 0.5)
                tensor.add_(torch.rand(tensor.shape, generator=generator).sub_(0.5).mul_(0.1))
    folder = cache.parent / f"src-{name}"
    save_for_hf(model, folder, safe_serialization=True)
    add_to_cache(folder, f"timm/{name}", cache_dir=cache)
    return {key: value.clone() for key, value in model.state_dict().items()}


@pytest.fixture(scope="module")
def cached_weights(tmp_path_factory) -> Iterator[dict[str, dict[str, torch.Tensor]]]:
    """The Hugging Face cache (HF_HUB_CACHE as huggingface_hub reads it) holding the four tags' random weights."""
    cache = tmp_path_factory.mktemp("hf") / "hub"
    sources = {name: _random_timm_weights(name, cache, seed) for seed, name in enumerate(TAGS)}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(constants, "HF_HUB_CACHE", str(cache))
        yield sources


@pytest.fixture
def empty_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache in place of the one holding the weights."""
    folder = tmp_path / "empty-hub-cache"
    folder.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(folder))
    return folder


def build(model_type: str, **fields):
    settings = {**BUILDS[model_type], **fields}
    return hf_cxr.build_model(model_type, settings.pop("preset"), **settings)


def assert_loaded(backbone: torch.nn.Module, source: dict[str, torch.Tensor], skip: tuple[str, ...] = ()) -> None:
    """Every tensor of `backbone` equals the cached one of the same name; the cached tensors left out are the
    pretrained head's (timm drops the classifier)."""
    state = {key: value for key, value in backbone.state_dict().items() if not any(part in key for part in skip)}
    assert state and set(state) <= set(source)
    for key, value in state.items():
        assert torch.equal(value, source[key]), key
    left_out = set(source) - set(state)
    assert all(key.startswith(("fc.", "head.", "classifier.")) for key in left_out), sorted(left_out)[:5]


def test_cr_msnet_takes_both_branches_from_the_cache(cached_weights) -> None:
    model = build("cr_msnet")
    assert_loaded(model.cr_msnet.global_backbone, cached_weights["coatnet_nano_rw_224.sw_in1k"])
    assert_loaded(model.cr_msnet.local_backbone, cached_weights["resnet18.a1_in1k"])
    assert model.config.global_backbone_weights is True  # provenance, saved with the model


@pytest.mark.parametrize("scope", ["final_expansion", "last_stage"])
def test_ma_msf_keeps_loaded_weights_and_its_anchor_starts_as_their_copy(cached_weights, scope) -> None:
    source = cached_weights["efficientnet_b0.ra_in1k"]
    model = build("ma_msf", anchor_scope=scope)
    assert model.config.zero_init_residual  # on, yet it applies to random initialisation only
    assert_loaded(model.ma_msf.backbone, source)
    anchor = model.ma_msf.anchor.layers.state_dict()
    prefix = {"conv_head": "conv_head", "bn2": "bn2", "last_stage": f"blocks.{len(model.ma_msf.backbone.blocks) - 1}"}
    assert len(anchor) > 4
    for key, value in anchor.items():
        first, _, rest = key.partition(".")
        assert torch.equal(value, source[f"{prefix[first]}.{rest}"]), key


def test_mxa_loads_timms_layers_and_keeps_its_own_initialisation(cached_weights) -> None:
    source = cached_weights["efficientvit_m0.r224_in1k"]
    torch.manual_seed(0)
    model = build("mxa_efficientvit")
    torch.manual_seed(0)
    random = build("mxa_efficientvit", backbone_weights=None)
    backbone = model.mxa_efficientvit.backbone
    assert model.config.num_channels == 1
    # The 1-channel stem takes timm's adaptation: the pretrained RGB kernel summed over its input channels.
    stem = "patch_embed.conv1.conv.weight"
    assert torch.equal(backbone.state_dict()[stem], source[stem].sum(dim=1, keepdim=True))
    assert_loaded(backbone, {**source, stem: backbone.state_dict()[stem]}, skip=(".mxa.",))
    # MXA's layers and both heads keep the initialisation they get without pretrained weights.
    ours = {key: value for key, value in model.state_dict().items() if ".mxa." in key or key.startswith("classifier.")}
    assert len(ours) > 20
    reference = random.state_dict()
    for key, value in ours.items():
        assert torch.equal(value, reference[key]), key


@pytest.mark.parametrize("model_type", sorted(BUILDS))
def test_a_saved_model_reloads_exactly_with_the_cache_gone(cached_weights, model_type, tmp_path, request) -> None:
    model = build(model_type).eval()
    model.save_pretrained(tmp_path / "saved")
    request.getfixturevalue("empty_cache")  # from here on the weights are nowhere but in the saved folder
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "saved", local_files_only=True).eval()
    assert type(reloaded) is type(model)
    fields, reloaded_fields = model.config.to_dict(), reloaded.config.to_dict()
    assert {key: fields[key] for key in fields if key != "_name_or_path"} == {
        key: reloaded_fields[key] for key in reloaded_fields if key != "_name_or_path"
    }  # the *backbone_weights fields included, as provenance
    saved, again = model.state_dict(), reloaded.state_dict()
    assert saved.keys() == again.keys() and all(torch.equal(saved[key], again[key]) for key in saved)
    pixels = torch.randn(2, *model.config.pixel_values_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(pixels).logits, reloaded(pixels).logits)


def test_a_model_built_for_saved_weights_reads_none(cached_weights, empty_cache) -> None:
    """`from_pretrained` builds inside `loading_saved_weights()` (and on the meta device): the backbone is created
    without its weights, which the saved file then replaces; outside it, the empty cache is an error."""
    fields = {"backbone": "efficientnet_b0", "backbone_kwargs": {}, "backbone_weights": True}
    config = hf_cxr.build_config("ma_msf", "tiny", **fields)
    with loading_saved_weights():
        hf_cxr.MAMSFForImageClassification(config)
    with pytest.raises(FileNotFoundError, match=r"MAMSFConfig\.backbone_weights"):
        hf_cxr.MAMSFForImageClassification(config)


def test_a_local_safetensors_file_is_loaded_like_a_tag(cached_weights, tmp_path) -> None:
    source = cached_weights["efficientnet_b0.ra_in1k"]
    save_file(source, str(tmp_path / "weights.safetensors"))
    model = build("ma_msf", backbone_weights=str(tmp_path / "weights.safetensors"))
    assert_loaded(model.ma_msf.backbone, source)


def test_weights_that_cannot_be_used_are_refused_naming_the_field(cached_weights, empty_cache, tmp_path) -> None:
    field = "CRMSNetConfig.local_backbone_weights"

    def local(weights: str):  # CR-MSNet with pretrained weights for its local branch only
        return build("cr_msnet", global_backbone_weights=None, local_backbone_weights=weights)

    with pytest.raises(ValueError, match=rf"{field}: timm has no pretrained weights 'resnet18.nope'; .*a1_in1k"):
        local("resnet18.nope")
    with pytest.raises(ValueError, match=rf"{field}: 'resnet50.a1_in1k' are weights of resnet50, but the backbone"):
        local("resnet50.a1_in1k")
    with pytest.raises(ValueError, match=rf"{field}: a local weight file must be .safetensors"):
        local("resnet18.pth")
    with pytest.raises(ValueError, match=rf"{field}: the weight file '.*missing.safetensors' does not exist"):
        local(str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match=r"MAMSFConfig\.backbone_weights: timm has no pretrained weights for "):
        hf_cxr.build_model("ma_msf", "tiny", backbone_weights=True)  # timm's efficientnetv2_s has none
    # A known tag that is not in the (offline) cache: one line, the cache named and how to fill it.
    with pytest.raises(FileNotFoundError) as missing:
        local("resnet18.a1_in1k")
    message = str(missing.value)
    assert "\n" not in message and message.startswith(f"{field}: the weights resnet18.a1_in1k")
    assert str(empty_cache) in message and "hf download timm/resnet18.a1_in1k model.safetensors" in message


def test_weights_of_the_standard_architecture_do_not_fit_a_changed_one(cached_weights, tmp_path) -> None:
    # The tiny presets' narrower backbones: a tensor of another shape.
    narrowed = r"local_backbone_weights: .* does not fit .*size mismatch .* leave CRMSNetConfig.local_backbone_kwargs"
    with pytest.raises(ValueError, match=narrowed):
        hf_cxr.build_model("cr_msnet", "tiny", local_backbone_weights="resnet18.a1_in1k")
    stages = r"MXAEfficientViTConfig\.backbone_weights needs the published efficientvit_m0 \(its weights do not fit"
    with pytest.raises(ValueError, match=stages):
        hf_cxr.build_config("mxa_efficientvit", "tiny", backbone_weights=True)  # refused with its config
    # A shallower backbone of the same widths: every tensor has a match, but most of the weights would be left out.
    with pytest.raises(ValueError, match=r"local_backbone_weights: .* tensors of the weights have no place in it"):
        build("cr_msnet", local_backbone_kwargs={"layers": [1, 1, 1, 1]})
    # Weights of another architecture given as a file (ResNet-18's in an EfficientNet-B0).
    save_file(cached_weights["resnet18.a1_in1k"], str(tmp_path / "resnet18.safetensors"))
    with pytest.raises(ValueError, match=r"MAMSFConfig.backbone_weights: .* does not fit the backbone efficientnet_b0"):
        build("ma_msf", backbone_weights=str(tmp_path / "resnet18.safetensors"))


def test_train_backbone_weights_flag_builds_from_them_and_records_them(cached_weights, tiny_dataset, tmp_path) -> None:
    parser = add_train_arguments(argparse.ArgumentParser())
    base = ["--model", "ma_msf", "--preset", "tiny", "--dataset", str(tiny_dataset), "--output-dir", str(tmp_path)]
    with pytest.raises(SystemExit):  # only *backbone_weights fields
        parser.parse_args([*base, "--backbone-weights", "fusion_dim=8"])
    args = parser.parse_args([*base, "--per-device-batch-size", "5", "--max-steps", "1", "--learning-rate", "0",
                              "--log-with", "csv", "--set", "model.overrides={backbone: efficientnet_b0, "
                              "backbone_kwargs: {}}", "--backbone-weights", "backbone_weights=ra_in1k"])  # fmt: skip
    train(config_from_arguments(args))
    recipe = yaml.safe_load((tmp_path / "recipe.yaml").read_text())
    assert recipe["model"]["overrides"]["backbone_weights"] == "ra_in1k"
    saved = load_file(str(tmp_path / "model.safetensors"))
    source = cached_weights["efficientnet_b0.ra_in1k"]
    for key in ("conv_stem.weight", "blocks.6.0.conv_pwl.weight", "conv_head.weight"):  # learning rate 0
        assert torch.equal(saved[f"ma_msf.backbone.{key}"], source[key]), key
