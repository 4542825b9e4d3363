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
RESULT_KEYS = {"path", "findings", "heatmap", "heatmap_findings", "heatmap_status", "layer", "error"}


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
    from hf_cxr.registry import load_model

    model, processor = load_model(folder, device="cpu")
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
        assert result["layer"] == "cr_msnet.global_backbone.stages.2"
        findings = result["findings"]
        assert all(set(finding) == FINDING_KEYS for finding in findings)
        probabilities = [finding["probability"] for finding in findings]
        assert probabilities == sorted(probabilities, reverse=True)
        expected = expected_probabilities(model_dir, load_radiograph(image))
        assert {f["label"]: f["probability"] for f in findings} == pytest.approx(expected, abs=1e-6)
        assert all(f["threshold"] == 0.5 and f["positive"] == (f["probability"] >= 0.5) for f in findings)
        assert result["heatmap_findings"] == [f["label"] for f in findings[:3]]
        assert set(result["heatmap_status"]) == set(result["heatmap_findings"])
        assert set(result["heatmap_status"].values()) <= {"ok", "zero", "constant", "non-finite"}
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
    assert refused["findings"] == [] and refused["heatmap"] is None and refused["heatmap_status"] == {}
    assert scored["error"] is None and len(scored["findings"]) == 14
    assert f"refused {ct}" in errors and "modality CT" in errors
    assert main(["predict", "--model", str(model_dir), str(ct), "--out", str(tmp_path)]) == 1
    assert "refused: " in capsys.readouterr().out


@pytest.mark.parametrize(
    ("stage", "error", "reason"),
    [
        ("load_radiograph", TypeError("'NoneType' object is not iterable"), "TypeError: 'NoneType' object is not"),
        ("load_radiograph", OSError("broken pipe"), "OSError: broken pipe"),
        ("explain", RuntimeError("shape mismatch in the model"), "RuntimeError: shape mismatch in the model"),
    ],
)
def test_any_failure_on_one_input_refuses_that_input_alone(
    model_dir, tmp_path, capsys, monkeypatch, stage: str, error: Exception, reason: str
) -> None:
    """A DICOM whose empty attributes make the reader raise TypeError (issue 15), an I/O error, an error in the
    model on one input: that input is refused with its reason, the others are still scored, the exit status is 1.
    Before, anything but a ValueError aborted the whole call with a traceback and printed nothing."""
    import hf_cxr.inference.predict

    good, bad, other = (str(nih_png(index)) for index in (6, 7, 8))
    original, bad_grey = getattr(hf_cxr.inference.predict, stage), load_radiograph(bad)

    def fail_on_bad(*args, **kwargs):  # load_radiograph(source) or explain(model, processor, grey, ...)
        if (stage == "load_radiograph" and str(args[0]) == bad) or (
            stage == "explain" and np.array_equal(args[2], bad_grey)
        ):
            raise error
        return original(*args, **kwargs)

    monkeypatch.setattr(hf_cxr.inference.predict, stage, fail_on_bad)
    status, document, errors = run_json(capsys, "--model", str(model_dir), good, bad, other, "--out", str(tmp_path))
    assert status == 1
    first, refused, last = document["results"]
    assert refused["path"] == bad and refused["error"].startswith(reason)
    assert refused["findings"] == [] and refused["heatmap"] is None and refused["layer"] is None
    assert refused["heatmap_findings"] == [] and refused["heatmap_status"] == {}
    for result in (first, last):
        assert result["error"] is None and len(result["findings"]) == 14 and Path(result["heatmap"]).is_file()
    assert f"refused {bad}: {reason}" in errors and good not in errors and other not in errors
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        f"{Path(path).stem}_heatmap.png" for path in (good, other)
    )

    assert main(["predict", "--model", str(model_dir), good, bad, "--out", str(tmp_path / "text")]) == 1
    output = capsys.readouterr().out
    assert f"{bad}\n  refused: {reason}" in output and output.count("(threshold ") == 14


def test_a_file_that_is_no_image_is_refused_by_name_and_leaves_no_folder(model_dir, tmp_path, capsys) -> None:
    """The reason names the file, not Pillow's in-memory buffer (`<_io.BytesIO object at 0x...>`), and a run whose
    every input was refused does not leave the empty output folder it created."""
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    out = tmp_path / "pictures"
    assert main(["predict", "--model", str(model_dir), str(bad), "--out", str(out)]) == 1
    errors = capsys.readouterr().err
    assert f"refused {bad}: '{bad}': not a readable image or DICOM file (no image format Pillow reads)" in errors
    assert "BytesIO" not in errors and not out.exists()


def test_describe_error_keeps_a_refusal_message_and_names_other_errors() -> None:
    from hf_cxr.inference.predict import describe_error

    assert describe_error(ValueError("chest.dcm: modality CT is not a radiograph")) == (
        "chest.dcm: modality CT is not a radiograph"
    )
    assert describe_error(TypeError("bad operand")) == "TypeError: bad operand"
    assert describe_error(KeyError("Rows")) == "KeyError: 'Rows'"
    assert describe_error(RuntimeError()) == "RuntimeError"
    assert describe_error(ValueError("")) == "ValueError"


def test_maps_without_location_are_reported_not_drawn(tmp_path, capsys) -> None:
    """A model whose classifier is zero has a zero gradient everywhere: every Grad-CAM map is degenerate by
    construction. The JSON gives each map's status, the text output says so, and the picture's heatmap tiles show
    the radiograph with the reason on a black band, no heat colours (before: blank tiles, nothing said)."""
    torch.manual_seed(0)
    model = build_model("cr_msnet", "tiny")
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.zero_()
    model.save_pretrained(tmp_path / "flat")
    build_image_processor("cr_msnet", "tiny").save_pretrained(tmp_path / "flat")
    image = str(nih_png(9))
    args = ["--model", str(tmp_path / "flat"), image, "--out", str(tmp_path / "out"), "--top-k", "2"]
    status, document, _ = run_json(capsys, *args)
    assert status == 0  # the scores are real (all 0.5); only the maps carry nothing
    result = document["results"][0]
    assert result["heatmap_status"] == dict.fromkeys(result["heatmap_findings"], "zero")
    assert len(result["heatmap_findings"]) == 2

    assert main(["predict", *args]) == 0
    output = capsys.readouterr().out
    for label in result["heatmap_findings"]:
        assert f"no heatmap for {label}: Grad-CAM map zero" in output

    picture = np.asarray(Image.open(result["heatmap"])).astype(int)
    tiles = _tiles(picture)
    assert len(tiles) == 4  # radiograph, cross-attention, two findings
    for tile in tiles[2:]:
        assert np.array_equal(tile[..., 0], tile[..., 2]) and np.array_equal(tile[..., 0], tile[..., 1])  # grey
        middle = tile[tile.shape[0] // 2 - 8 : tile.shape[0] // 2 + 8]
        assert (middle == 0).mean() > 0.5  # the notice's black band
        assert (middle > 200).any()  # its white text
    attention = tiles[1]
    assert np.abs(attention[..., 0] - attention[..., 2]).max() > 50  # a real map is still drawn in colour


def _tiles(picture: np.ndarray) -> list[np.ndarray]:
    """The pictures of a `render` canvas (header 24 px), split at the 6-px black gaps between them."""
    body = picture[30:-30]
    filled = (body.max(axis=(0, 2)) > 0).astype(int)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], filled, [0]])))
    return [picture[24:-28, start:stop] for start, stop in zip(edges[::2], edges[1::2], strict=True)]
