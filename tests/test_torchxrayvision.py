"""torchxrayvision's classifiers as hf-cxr models: the imported weights compute torchxrayvision's outputs.

torchxrayvision's models are built here with `weights=None` (nothing is downloaded), given non-trivial BatchNorm
statistics and saved as its release files are: `torch.save` of the whole DenseNet (in torch's legacy format, that of
the 2019-2020 releases, and in today's zip format) and a plain state dict for the ResNet-50.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import pickle
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import torchvision
import torchxrayvision as xrv
import yaml
from conftest import NIH_DIR
from hf_cxr.modeling.mxa_efficientvit import MXAEfficientViTImageProcessor
from hf_cxr.modeling.torchxrayvision import TorchXRayVisionForImageClassification, TorchXRayVisionImageProcessor
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

import hf_cxr
from hf_cxr.cli import main
from hf_cxr.hub import add_to_cache, push_model
from hf_cxr.imaging import load_radiograph
from hf_cxr.inference.predict import predict
from hf_cxr.interop.torchxrayvision import (
    PICKLED_MODULE_CLASSES,
    WEIGHT_SETS,
    build_imported_model,
    import_torchxrayvision,
    load_release_file,
)

CHEX = "densenet121-res224-chex"
NIH_IMAGES = sorted((NIH_DIR / "images").glob("*.png"))


def nih_pixels(processor, count: int) -> torch.Tensor:
    return processor([str(path) for path in NIH_IMAGES[:count]], return_tensors="pt")["pixel_values"]


def relative_difference(expected: torch.Tensor, got: torch.Tensor) -> float:
    """max |got - expected| / max |expected|: the logits' difference relative to their scale."""
    return float((expected - got).abs().max() / expected.abs().max())


def give_trained_statistics(model: torch.nn.Module, pixels: torch.Tensor, seed: int) -> None:
    """Non-trivial BatchNorm layers and classifier biases, as a trained model has: random affine parameters, and
    running statistics measured on `pixels` (radiographs through the processor) in one training-mode pass, so that
    activations and logits have the scale of a trained model's. The model is left in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    norms = [module for module in model.modules() if isinstance(module, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for module in norms:
            module.weight.copy_(1 + torch.randn(module.num_features, generator=generator) * 0.2)
            module.bias.copy_(torch.randn(module.num_features, generator=generator) * 0.2)
            module.reset_running_stats()
            module.momentum = None  # the running statistics become the plain average over the pass
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.bias.copy_(torch.randn(module.out_features, generator=generator))
        model.train()
        model(pixels)
    for module in norms:
        module.momentum = 0.1
    model.eval()


@pytest.fixture(scope="module")
def xrv_densenet() -> torch.nn.Module:
    torch.manual_seed(0)
    model = xrv.models.DenseNet(weights=None)
    give_trained_statistics(model, nih_pixels(TorchXRayVisionImageProcessor(), 4), seed=1)
    return model


@pytest.fixture(scope="module")
def release_files(xrv_densenet, tmp_path_factory) -> dict[str, Path]:
    """The DenseNet saved as torchxrayvision's release files are: `cache` is a torchxrayvision cache folder holding
    the chex file in the legacy format, `zip` the same model in today's format."""
    folder = tmp_path_factory.mktemp("xrv")
    cache = folder / "models_data"
    cache.mkdir()
    torch.save(xrv_densenet, cache / WEIGHT_SETS[CHEX].file_name, _use_new_zipfile_serialization=False)
    torch.save(xrv_densenet, folder / "chex-zip.pt")
    return {"cache": cache, "legacy": cache / WEIGHT_SETS[CHEX].file_name, "zip": folder / "chex-zip.pt"}


@pytest.fixture(scope="module")
def imported(release_files, tmp_path_factory) -> Path:
    """The chex weight set imported by the command line from torchxrayvision's cache folder under HOME (where the
    legacy-format file lies)."""
    home = release_files["cache"].parent / "home"
    cache = home / ".torchxrayvision" / "models_data"
    cache.mkdir(parents=True)
    (cache / release_files["legacy"].name).symlink_to(release_files["legacy"])
    out = tmp_path_factory.mktemp("imported") / "xrv-chex"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(home))
        assert main(["import-torchxrayvision", CHEX, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def loaded(imported: Path) -> tuple[TorchXRayVisionForImageClassification, TorchXRayVisionImageProcessor]:
    """The imported folder through the Auto classes, after `import hf_cxr` (hf-cxr's classes, no remote code)."""
    model = AutoModelForImageClassification.from_pretrained(imported).eval()
    return model, AutoImageProcessor.from_pretrained(imported)


@pytest.fixture(scope="module")
def outputs(xrv_densenet, loaded) -> dict[str, torch.Tensor]:
    """Two NIH radiographs through the processor and one random input: torchxrayvision's 18 raw outputs and ours."""
    model, processor = loaded
    noise = torch.randn(1, 1, 224, 224, generator=torch.Generator().manual_seed(3)) * 600
    pixels = torch.cat([nih_pixels(processor, 2), noise])
    with torch.no_grad():
        return {"pixels": pixels, "xrv": xrv_densenet(pixels), "ours": model(pixel_values=pixels).logits}


def test_the_weight_table_is_torchxrayvisions() -> None:
    """hf-cxr's one table of weight sets agrees with the installed torchxrayvision's `model_urls`."""
    published = {name for name in xrv.models.model_urls if name.startswith(("densenet121-res224", "resnet50-res512"))}
    assert set(WEIGHT_SETS) == published
    for name, entry in WEIGHT_SETS.items():
        reference = xrv.models.model_urls[name]
        assert entry.file_name == Path(reference["weights_url"]).name and entry.url == reference["weights_url"]
        assert list(entry.outputs) == list(reference["labels"])
        assert entry.input_resolution == reference["input_resolution"]
        assert len(entry.op_threshs) == len(reference["op_threshs"]) == 18
        for ours, theirs in zip(entry.op_threshs, reference["op_threshs"], strict=True):
            assert (math.isnan(ours) and math.isnan(theirs)) or ours == theirs
        assert entry.labels == [label for label in reference["labels"] if label]
        assert entry.architecture == name.split("-")[0]


def test_the_allow_list_is_exactly_the_globals_of_a_release_file(release_files) -> None:
    globals_in_file = set(torch.serialization.get_unsafe_globals_in_checkpoint(release_files["zip"]))
    assert globals_in_file == set(PICKLED_MODULE_CLASSES)


@pytest.mark.parametrize("form", ["legacy", "zip"])
def test_release_files_load_without_torchxrayvision_classes(xrv_densenet, release_files, form: str) -> None:
    state = load_release_file(release_files[form])
    expected = xrv_densenet.state_dict()
    assert state.keys() == expected.keys() and len(state) == 727
    assert all(torch.equal(state[key], value) for key, value in expected.items())


def test_logits_equal_torchxrayvisions_pre_sigmoid_outputs(loaded, outputs) -> None:
    model, _ = loaded
    assert type(model) is TorchXRayVisionForImageClassification  # the teacher loads with the Auto class
    entry = WEIGHT_SETS[CHEX]
    assert [model.config.id2label[i] for i in range(model.config.num_labels)] == entry.labels
    # Measured: 5e-7 (the 11 kept rows of torchxrayvision's 18-row classifier are summed in another order; a weight set
    # that keeps all 18 rows gives identical logits).
    assert relative_difference(outputs["xrv"][:, entry.kept_indices], outputs["ours"]) < 1e-4


def test_thresholds_are_op_threshs_and_operating_point_scores_are_op_norm(loaded, outputs) -> None:
    model, _ = loaded
    reference = xrv.models.model_urls[CHEX]
    expected = {
        label: threshold
        for label, threshold in zip(reference["labels"], reference["op_threshs"], strict=True)
        if label and not math.isnan(threshold)
    }
    assert model.config.decision_thresholds == expected
    # What torchxrayvision's forward returns once `op_threshs` is set (as get_model does): op_norm of the sigmoids.
    op_threshs = torch.tensor(reference["op_threshs"], dtype=torch.float32)
    calibrated = xrv.models.op_norm(torch.sigmoid(outputs["xrv"]), op_threshs)[:, WEIGHT_SETS[CHEX].kept_indices]
    torch.testing.assert_close(model.operating_point_scores(outputs["ours"]), calibrated, rtol=0, atol=1e-5)


def test_predict_marks_findings_at_torchxrayvisions_operating_points(loaded) -> None:
    model, processor = loaded
    (result,) = predict(model, processor, [NIH_IMAGES[0]], top_k=1)  # the default Grad-CAM layer
    assert {finding.label for finding in result.findings} == set(WEIGHT_SETS[CHEX].labels)
    for finding in result.findings:
        assert finding.threshold == pytest.approx(model.config.decision_thresholds[finding.label])
        assert finding.positive == (finding.probability >= finding.threshold)
    scores = pipeline(hf_cxr.CXR_TASK, model=model, image_processor=processor)(str(NIH_IMAGES[0]))
    by_label = {item["label"]: item["score"] for item in scores}
    assert all(by_label[f.label] == pytest.approx(f.probability, abs=1e-6) for f in result.findings)


def test_the_folder_holds_safetensors_remote_code_and_a_card(imported: Path) -> None:
    names = {path.name for path in imported.iterdir()}
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md"} <= names
    assert {"modeling_torchxrayvision.py", "configuration_torchxrayvision.py"} <= names
    assert not any(name.endswith((".bin", ".pt", ".pth", ".pkl")) for name in names)
    config = json.loads((imported / "config.json").read_text())
    assert config["torchxrayvision_weights"] == CHEX and config["architecture"] == "densenet121"
    card = (imported / "README.md").read_text()
    assert "not a medical device" in card and WEIGHT_SETS[CHEX].file_name in card
    assert "- chexpert" in card and "license: other" in card and "operating_point_scores" in card
    assert "torchxrayvision's operating point (`op_threshs`)" in card
    pushed = push_model(imported, "org/xrv-chex", dry_run=True, out_dir=imported.parent / "upload")
    uploaded = (pushed.folder / "README.md").read_text()
    assert '"org/xrv-chex"' in uploaded and "- chexpert" in uploaded


def test_reload_and_remote_code_without_hf_cxr_are_exact(release_files, imported, loaded, tmp_path) -> None:
    path = release_files["legacy"]
    built = build_imported_model(CHEX, load_release_file(path), path)
    model, processor = loaded
    pixels = nih_pixels(processor, 1)
    with torch.no_grad():
        logits = built(pixel_values=pixels).logits
        assert torch.equal(logits, model(pixel_values=pixels).logits)
    add_to_cache(imported, "org/xrv-chex", cache_dir=tmp_path / "cache")
    np.save(tmp_path / "pixels.npy", pixels.numpy())
    np.save(tmp_path / "logits.npy", logits.numpy())
    np.save(tmp_path / "scores.npy", built.operating_point_scores(logits).numpy())
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_CACHE": str(tmp_path / "cache"),
           "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}  # fmt: skip
    (tmp_path / "child.py").write_text(CHILD, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(tmp_path / "child.py"), str(tmp_path), str(NIH_IMAGES[0]), str(torch.get_num_threads())],
        capture_output=True, text=True, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stdout + result.stderr[-3000:]


# Runs with hf_cxr and torchxrayvision unimportable: the repo's remote code alone gives the same logits, operating
# point scores and pixels. argv: the test's folder, a PNG, the parent's thread count.
CHILD = r"""
import sys


class Missing:
    BLOCKED = {"hf_cxr", "torchxrayvision"}

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in self.BLOCKED:
            raise ModuleNotFoundError(f"No module named '{name}'", name=name)
        return None


sys.meta_path.insert(0, Missing())
from pathlib import Path

import numpy as np
import torch
from transformers import AutoImageProcessor, AutoModelForImageClassification

folder, png, threads = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
torch.set_num_threads(threads)
model = AutoModelForImageClassification.from_pretrained("org/xrv-chex", trust_remote_code=True).eval()
if not type(model).__module__.startswith("transformers_modules"):
    sys.exit(f"not remote code: {type(model)}")
with torch.no_grad():
    logits = model(pixel_values=torch.from_numpy(np.load(folder / "pixels.npy"))).logits
if not np.array_equal(logits.numpy(), np.load(folder / "logits.npy")):
    sys.exit("logits differ from hf-cxr's")
if not np.array_equal(model.operating_point_scores(logits).numpy(), np.load(folder / "scores.npy")):
    sys.exit("operating point scores differ from hf-cxr's")
processor = AutoImageProcessor.from_pretrained("org/xrv-chex", trust_remote_code=True)
pixels = processor(png, return_tensors="pt")["pixel_values"]
if not np.array_equal(pixels.numpy(), np.load(folder / "pixels.npy")):
    sys.exit("the remote processor's pixels differ from hf-cxr's")
print("ok")
"""


def test_processor_pixels_match_torchxrayvisions_pipeline() -> None:
    """On the bundled NIH images (256 px, resized to 224) the pixels differ from torchxrayvision's only by the
    resampling filter; a 224-px image is not resized and gives torchxrayvision's pixels."""
    transform = torchvision.transforms.Compose([xrv.datasets.XRayCenterCrop(), xrv.datasets.XRayResizer(224)])
    processor = TorchXRayVisionImageProcessor()
    means, maxima = [], []
    for path in NIH_IMAGES:
        expected = transform(xrv.utils.load_image(str(path)))[0]
        ours = processor(str(path))["pixel_values"][0, 0]
        means.append(np.abs(expected - ours).mean())
        maxima.append(np.abs(expected - ours).max())
    # Measured with torchxrayvision 1.5.7: mean |difference| 2.07 and largest 164 in [-1024, 1024] units.
    assert np.mean(means) < 3.0 and max(maxima) < 250.0
    grey = np.asarray(Image.open(NIH_IMAGES[0]).resize((224, 224)))
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format="PNG")
    expected = xrv.utils.normalize(grey, 255)
    np.testing.assert_allclose(processor(buffer.getvalue())["pixel_values"][0, 0], expected, rtol=0, atol=1e-3)


def test_a_long_image_is_centre_cropped_as_torchxrayvision_does(tmp_path: Path) -> None:
    grey = np.asarray(Image.open(NIH_IMAGES[1]).resize((256, 320)))  # portrait: the crop takes the middle rows
    Image.fromarray(grey).save(tmp_path / "tall.png")
    transform = torchvision.transforms.Compose([xrv.datasets.XRayCenterCrop(), xrv.datasets.XRayResizer(224)])
    expected = transform(xrv.utils.load_image(str(tmp_path / "tall.png")))[0]
    ours = TorchXRayVisionImageProcessor()(str(tmp_path / "tall.png"))["pixel_values"][0, 0]
    assert np.abs(expected - ours).mean() < 3.0
    shifted = np.abs(np.roll(expected, 8, axis=0) - ours).mean()
    assert np.abs(expected - ours).mean() < shifted / 4  # aligned with torchxrayvision's crop, not shifted


def test_pixels_equal_mxa_efficientvits_on_square_inputs() -> None:
    """The distillation teacher and the MXA student can share one batch: on square images both processors stretch
    to the same 224 px (a centre crop of a square is the square)."""
    ours, mxa = TorchXRayVisionImageProcessor(), MXAEfficientViTImageProcessor()
    grey = np.asarray(Image.open(NIH_IMAGES[2]).resize((224, 224)))
    for inputs in ([str(path) for path in NIH_IMAGES[:3]], [grey]):
        assert np.array_equal(ours(inputs)["pixel_values"], mxa(inputs)["pixel_values"])


def test_resnet50_state_dict_maps_onto_timms_resnet50(tmp_path: Path) -> None:
    """The ResNet-50 release file is a torchvision ResNet-50's state dict (1-channel conv1, 18 outputs), what
    `xrv.models.ResNet` wraps; its keys are timm's and the logits agree at 512 px."""
    torch.manual_seed(0)
    reference = torchvision.models.resnet50(num_classes=18, weights=None)
    reference.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    give_trained_statistics(reference, nih_pixels(TorchXRayVisionImageProcessor(size=512), 1), seed=2)
    entry = WEIGHT_SETS["resnet50-res512-all"]
    weights = tmp_path / entry.file_name
    torch.save(reference.state_dict(), weights)
    model = build_imported_model(entry.name, load_release_file(weights), weights)
    assert model.config.image_size == 512 and model.config.architecture == "resnet50"
    assert model.config.decision_thresholds == entry.thresholds and len(entry.thresholds) == 16
    pixels = torch.randn(1, 1, 512, 512) * 600
    with torch.no_grad():
        expected = reference(pixels)[:, entry.kept_indices]
        assert relative_difference(expected, model(pixel_values=pixels).logits) < 1e-4


class Payload:
    """Pickles as a call of `print`: a file holding it must be refused without the call happening."""

    def __reduce__(self):
        return (print, ("payload executed",))


@pytest.mark.parametrize("legacy", [True, False])
def test_a_file_with_a_global_outside_the_allow_list_is_refused(tmp_path: Path, capsys, legacy: bool) -> None:
    path = tmp_path / "tampered.pt"
    small = xrv.models.DenseNet(weights=None, block_config=(1, 1, 1, 1))
    torch.save(small, tmp_path / "small.pt", _use_new_zipfile_serialization=not legacy)
    assert len(load_release_file(tmp_path / "small.pt")) == len(small.state_dict())  # the same classes load
    small.extra = Payload()
    torch.save(small, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(ValueError, match=r"refers to builtins\.print, which is not among the globals"):
        load_release_file(path)
    assert "payload executed" not in capsys.readouterr().out
    other = tmp_path / "other-class.pt"
    torch.save({"crop": xrv.datasets.XRayCenterCrop()}, other, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(ValueError, match=r"torchxrayvision\.datasets\.XRayCenterCrop"):
        load_release_file(other)


def test_a_wrong_file_or_name_is_refused_by_name(release_files, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown torchxrayvision weights 'densenet121-res224-foo'"):
        import_torchxrayvision("densenet121-res224-foo", tmp_path / "out")
    with pytest.raises(ValueError, match="not a resnet50-res512-all file"):
        import_torchxrayvision("resnet50-res512-all", tmp_path / "out", weights_file=release_files["zip"])
    (tmp_path / "junk.pt").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(ValueError, match=r"junk\.pt"):
        load_release_file(tmp_path / "junk.pt")
    assert not (tmp_path / "out").exists()


def test_command_line(release_files, tmp_path: Path, capsys, monkeypatch) -> None:
    out = tmp_path / "folder"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["import-torchxrayvision", CHEX, "--out", str(out), "--weights-file", str(release_files["zip"])]) == 1
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "not empty" in error and "--overwrite" in error
    assert (out / "keep.txt").read_text() == "mine"

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert main(["import-torchxrayvision", "densenet121-res224-nih", "--out", str(tmp_path / "nih")]) == 1
    error = capsys.readouterr().err.strip()
    nih = WEIGHT_SETS["densenet121-res224-nih"]
    looked_for = tmp_path / "home" / ".torchxrayvision" / "models_data" / nih.file_name
    assert "\n" not in error and str(looked_for) in error
    assert "get_model('densenet121-res224-nih')" in error and nih.url in error
    assert not (tmp_path / "nih").exists()

    args = ["import-torchxrayvision", CHEX, "--out", str(out), "--weights-file", str(release_files["zip"])]
    assert main([*args, "--overwrite"]) == 0
    assert "11 findings" in capsys.readouterr().out
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert not list(tmp_path.glob(".folder.partial-*"))


@pytest.mark.slow
def test_the_mxa_recipe_runs_with_its_published_teacher(imported: Path, tmp_path: Path, monkeypatch) -> None:
    """`hf-cxr train --model mxa_efficientvit --recipe mxa_efficientvit_chexpert --teacher DIR` with the imported
    densenet121-res224-chex: two steps of the paper preset (M5, 224 px) on a small CheXpert-layout dataset converted
    as the recipe says (U-Ones, frontal and lateral views). The teacher reads its own processor's pixels (a centre
    crop of the non-square CheXpert images) and gives its operating-point scores, mapped to CheXpert's findings."""
    from test_data_chexpert import _write_tree

    from hf_cxr.data import convert_chexpert
    from hf_cxr.training import Teacher, add_train_arguments, config_from_arguments, train

    dataset = tmp_path / "chexpert"
    convert_chexpert(_write_tree(tmp_path / "raw"), dataset, uncertain="ones", image_size=None)
    seen: list[torch.Tensor] = []
    scores = Teacher.scores

    def recording(self: Teacher, pixel_values: torch.Tensor) -> torch.Tensor:
        seen.append(pixel_values)
        return scores(self, pixel_values)

    monkeypatch.setattr(Teacher, "scores", recording)
    argv = ["--model", "mxa_efficientvit", "--recipe", "mxa_efficientvit_chexpert", "--teacher", str(imported),
            "--dataset", str(dataset), "--output-dir", str(tmp_path / "run"), "--max-steps", "2",
            "--per-device-batch-size", "2", "--log-with", "csv"]  # fmt: skip
    summary = train(config_from_arguments(add_train_arguments(argparse.ArgumentParser()).parse_args(argv)))
    assert summary["finished"] and summary["step"] == 2
    assert len(seen) == 2 and all(tuple(pixels.shape) == (2, 1, 224, 224) for pixels in seen)
    recorded = yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())
    assert recorded["model"]["preset"] == "paper" and recorded["data"]["uncertain_labels"] == "ones"
    assert recorded["distillation"]["teacher"] == str(imported)


def test_a_teacher_must_be_named_and_reads_its_own_pixels(imported: Path, tmp_path: Path) -> None:
    from hf_cxr.data import train_transform
    from hf_cxr.training import load_teacher
    from hf_cxr.training.config import DistillationSection

    section = {"enabled": True, "teacher": None, "teacher_outputs": "operating_point_scores"}
    with pytest.raises(ValueError, match="names no teacher: pass --teacher DIR"):
        load_teacher(DistillationSection(**section), list(hf_cxr.CHEXPERT_LABELS))
    plain = tmp_path / "plain-teacher"
    hf_cxr.build_model("cr_msnet", "tiny").save_pretrained(plain)
    hf_cxr.build_image_processor("cr_msnet", "tiny").save_pretrained(plain)
    with pytest.raises(ValueError, match="needs a teacher with operating points"):
        load_teacher(DistillationSection(**{**section, "teacher": str(plain)}), list(hf_cxr.CHEXPERT_LABELS))
    teacher = load_teacher(DistillationSection(**{**section, "teacher": str(imported)}), list(hf_cxr.CHEXPERT_LABELS))
    student = hf_cxr.build_image_processor("mxa_efficientvit", "paper")
    assert not teacher.reads(student)  # MXA stretches, torchxrayvision centre-crops: the teacher gets its own pixels
    tall = [load_radiograph(path)[:, 40:200] for path in NIH_IMAGES[:2]]  # 256 x 160, as CheXpert's are not square
    batch = {"image": [Image.fromarray((image * 255).astype("uint8")) for image in tall]}
    output = train_transform(student, augmentation=torch.nn.Identity(), teacher_processor=teacher.processor)(batch)
    expected = teacher.processor(batch["image"], return_tensors="pt")["pixel_values"]
    assert torch.equal(output["teacher_pixel_values"], expected)
    assert not torch.equal(output["teacher_pixel_values"], output["pixel_values"])

    # hf-cxr train's reader: with such a teacher each image is augmented at its stored size and both processors read
    # that image (a flip here, exact): the teacher's centre crop of the flipped tall image, not of the student's
    # stretched square. Augmenting on the device cannot do that and is refused.
    from hf_cxr.training.augment import augmentation_from_recipe
    from hf_cxr.training.config import parse_recipe
    from hf_cxr.training.data import TrainingImages

    features = datasets.Features({"image": datasets.Image(), "labels": datasets.List(datasets.Value("float32"))})
    rows = datasets.Dataset.from_dict({"image": batch["image"], "labels": [[0.0] * 14] * 2}, features=features)
    flip = augmentation_from_recipe(parse_recipe({"augmentation": {"horizontal_flip": {"p": 1.0}}}).augmentation)
    reader = TrainingImages(rows, student, flip, "cpu", teacher.processor)
    items = reader.__getitems__([(0, 5), (1, 6)])
    flipped = [image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for image in batch["image"]]
    expected = teacher.processor(flipped, return_tensors="pt")["pixel_values"]
    # both in [-1024, 1024], where one 8-bit level is 8: 0.01 is float rounding of the resampled flip
    torch.testing.assert_close(torch.stack([item["teacher_pixel_values"] for item in items]), expected,
                               rtol=0, atol=0.01)  # fmt: skip
    student_expected = student(flipped, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(torch.stack([item["pixel_values"] for item in items]), student_expected,
                               rtol=0, atol=0.01)  # fmt: skip
    with pytest.raises(ValueError, match="augmentation on the device cannot serve a distillation teacher"):
        TrainingImages(rows, student, flip, "device", teacher.processor)
