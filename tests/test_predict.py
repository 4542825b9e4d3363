"""`hf-cxr predict` on real NIH radiographs: text and JSON output, thresholds from the config, DICOM inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import NIH_DIR
from PIL import Image

from hf_cxr import build_image_processor, build_model
from hf_cxr.cli import main
from hf_cxr.imaging import load_radiograph

FINDING_KEYS = {"label", "probability", "threshold", "positive"}
RESULT_KEYS = {"path", "findings", "heatmap", "heatmap_findings", "layer", "error"}


def nih_png(index: int = 0) -> Path:
    return sorted((NIH_DIR / "images").glob("*.png"))[index]


def save_model(folder: Path, **overrides) -> Path:
    torch.manual_seed(0)
    model = build_model("cr_msnet", "tiny", **overrides)
    model.save_pretrained(folder)
    build_image_processor("cr_msnet", "tiny").save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_model(tmp_path_factory.mktemp("model"))


def expected_probabilities(folder: Path, grey: np.ndarray) -> dict[str, float]:
    """Probabilities computed directly with the saved model, to compare with what `predict` reports."""
    from hf_cxr.predict import load_predictor

    model, processor = load_predictor(folder, device="cpu")
    with torch.no_grad():
        logits = model(pixel_values=processor(grey, return_tensors="pt")["pixel_values"]).logits[0]
    return {model.config.id2label[i]: float(p) for i, p in enumerate(torch.sigmoid(logits))}


def run_json(capsys, *argv: str) -> tuple[int, dict, str]:
    status = main(["predict", "--json", *argv])
    captured = capsys.readouterr()
    return status, json.loads(captured.out), captured.err


def write_dicom(path: Path, pixels: np.ndarray, modality: str = "DX", photometric: str = "MONOCHROME2") -> Path:
    """A DICOM Part 10 file with 12-bit pixels, written with pydicom."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1" if modality == "DX" else "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = modality
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = photometric
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 12, 11
    dataset.PixelRepresentation = 0
    dataset.PixelData = pixels.astype(np.uint16).tobytes()
    dataset.save_as(path, enforce_file_format=True)
    return path


def test_text_output_lists_every_finding_sorted_and_writes_the_picture(model_dir, tmp_path, capsys) -> None:
    image = nih_png(0)
    assert main(["predict", "--model", str(model_dir), str(image), "--out", str(tmp_path / "out")]) == 0
    output = capsys.readouterr().out
    expected = expected_probabilities(model_dir, load_radiograph(image))
    lines = [line for line in output.splitlines() if line.startswith("  ") and "threshold" in line]
    assert len(lines) == len(expected) == 14
    probabilities = [float(line.split()[-3]) for line in lines]
    assert probabilities == sorted(probabilities, reverse=True)
    for line in lines:
        label = line[4:].rsplit("  ", 2)[0].strip()
        assert float(line.split()[-3]) == pytest.approx(expected[label], abs=5e-4)
        assert line.startswith("  *") == (expected[label] >= 0.5)
    assert "not medical devices" in output
    picture = Image.open(tmp_path / "out" / f"{image.stem}_heatmap.png")
    assert picture.mode == "RGB" and picture.width > 4 * 300  # radiograph, attention and 3 heatmap tiles
    assert np.asarray(picture).std() > 10


def test_json_schema(model_dir, tmp_path, capsys) -> None:
    images = [nih_png(1), nih_png(2)]
    status, document, _ = run_json(capsys, "--model", str(model_dir), *map(str, images), "--out", str(tmp_path))
    assert status == 0
    assert set(document) == {"schema_version", "model", "threshold", "disclaimer", "results"}
    assert document["schema_version"] == 1 and document["threshold"] == "per-class"
    assert "not medical devices" in document["disclaimer"] and document["model"] == str(model_dir)
    assert [result["path"] for result in document["results"]] == [str(path) for path in images]
    for image, result in zip(images, document["results"], strict=True):
        assert set(result) == RESULT_KEYS and result["error"] is None
        assert result["layer"] == "cr_msnet.local_attention"
        findings = result["findings"]
        assert all(set(finding) == FINDING_KEYS for finding in findings)
        probabilities = [finding["probability"] for finding in findings]
        assert probabilities == sorted(probabilities, reverse=True)
        expected = expected_probabilities(model_dir, load_radiograph(image))
        assert {f["label"]: f["probability"] for f in findings} == pytest.approx(expected, abs=1e-6)
        assert all(f["threshold"] == 0.5 and f["positive"] == (f["probability"] >= 0.5) for f in findings)
        assert result["heatmap_findings"] == [f["label"] for f in findings[:3]]
        assert Path(result["heatmap"]).is_file() and Path(result["heatmap"]).parent == tmp_path


def test_thresholds_from_the_config_and_fixed(tmp_path, capsys) -> None:
    image = nih_png(3)
    probe = save_model(tmp_path / "probe")
    expected = expected_probabilities(probe, load_radiograph(image))
    ranked = sorted(expected, key=expected.get, reverse=True)
    high, low = ranked[0], ranked[-1]
    # The most probable finding just misses its stored threshold; the least probable just passes its own.
    stored = {high: min(expected[high] + 0.01, 1.0), low: max(expected[low] - 0.01, 0.0)}
    folder = save_model(tmp_path / "tuned", decision_thresholds=stored)
    status, document, _ = run_json(capsys, "--model", str(folder), str(image), "--out", str(tmp_path / "o"))
    assert status == 0
    findings = {f["label"]: f for f in document["results"][0]["findings"]}
    assert findings[high]["threshold"] == pytest.approx(stored[high]) and not findings[high]["positive"]
    assert findings[low]["threshold"] == pytest.approx(stored[low]) and findings[low]["positive"]
    others = [f for label, f in findings.items() if label not in stored]
    assert all(f["threshold"] == 0.5 and f["positive"] == (f["probability"] >= 0.5) for f in others)

    status, document, _ = run_json(capsys, "--model", str(folder), str(image), "--threshold", "0", "--top-k", "1")
    assert status == 0 and document["threshold"] == 0.0
    result = document["results"][0]
    assert all(f["threshold"] == 0.0 and f["positive"] for f in result["findings"])
    assert len(result["heatmap_findings"]) == 1
    with pytest.raises(SystemExit):
        main(["predict", "--model", str(folder), str(image), "--threshold", "1.5"])


def test_dicom_radiograph_input_matches_the_png(model_dir, tmp_path, capsys) -> None:
    """A MONOCHROME1 12-bit DICOM written from a real NIH PNG gives the PNG's findings (after the DICOM's
    stored-range scaling, which the expectation applies too)."""
    png = np.asarray(Image.open(nih_png(4)), dtype=np.float64)
    dicom = write_dicom(tmp_path / "chest.dcm", 4095 - png * 16, photometric="MONOCHROME1")
    status, document, _ = run_json(capsys, "--model", str(model_dir), str(dicom), "--out", str(tmp_path))
    assert status == 0
    result = document["results"][0]
    assert result["error"] is None and Path(result["heatmap"]).name == "chest_heatmap.png"
    grey = ((png - png.min()) / (png.max() - png.min())).astype(np.float32)
    expected = expected_probabilities(model_dir, grey)
    assert {f["label"]: f["probability"] for f in result["findings"]} == pytest.approx(expected, abs=1e-5)


def test_ct_dicom_is_refused_with_a_clear_message(model_dir, tmp_path, capsys) -> None:
    png = np.asarray(Image.open(nih_png(5)), dtype=np.float64)
    ct = write_dicom(tmp_path / "slice.dcm", png * 16, modality="CT")
    good = nih_png(5)
    status, document, errors = run_json(capsys, "--model", str(model_dir), str(ct), str(good), "--out", str(tmp_path))
    assert status == 1
    refused, scored = document["results"]
    assert "modality CT is not a projection radiograph" in refused["error"]
    assert refused["findings"] == [] and refused["heatmap"] is None
    assert scored["error"] is None and len(scored["findings"]) == 14
    assert f"refused {ct}" in errors and "modality CT" in errors
    assert main(["predict", "--model", str(model_dir), str(ct), "--out", str(tmp_path)]) == 1
    assert "refused: " in capsys.readouterr().out
