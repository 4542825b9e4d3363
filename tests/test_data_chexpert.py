"""CheXpert converter on a tree in Stanford's layout that the test writes from real NIH pixels (CheXpert
itself cannot be redistributed): CSVs with blanks and uncertain labels, paths relative to the root's parent."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from conftest import NIH_DIR
from PIL import ExifTags, Image, ImageOps

from hf_cxr.data import MissingFilesError, PatientLeakError, convert_chexpert
from hf_cxr.data.chexpert import shared_finding_columns
from hf_cxr.labels import CHESTXRAY14_LABELS, CHEXPERT_LABELS
from hf_cxr.losses import IGNORE_LABEL, MultiLabelBCELoss

ROOT_NAME = "CheXpert-v1.0-small"
HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS]
# One row of raw label cells, as Stanford writes them: "1.0", "0.0", "-1.0" or blank.
RAW = ["", "", "-1.0", "1.0", "", "0.0", "-1.0", "", "1.0", "0.0", "", "", "", "1.0"]


def _jpeg(source: Path, target: Path, crop_height: int | None = None) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    image = Image.open(source).convert("L")
    if crop_height:
        image = image.crop((0, 0, image.width, crop_height))  # non-square, as CheXpert's images are
    image.save(target, quality=90)


def _write_tree(base: Path, valid_patient: str = "patient64541") -> Path:
    """6 training studies (one with a lateral view), 2 validation images, 1 test image."""
    root = base / ROOT_NAME
    sources = sorted((NIH_DIR / "images").glob("*.png"))
    train_rows, valid_rows = [], []
    for index in range(6):
        rel = f"{ROOT_NAME}/train/patient{index + 1:05d}/study1/view1_frontal.jpg"
        _jpeg(sources[index], base / rel, crop_height=200 if index == 0 else None)
        labels = RAW if index == 0 else ["1.0"] + [""] * 13
        train_rows.append([rel, "Female" if index % 2 else "Male", str(40 + index), "Frontal", "AP", *labels])
    lateral = f"{ROOT_NAME}/train/patient00001/study1/view2_lateral.jpg"
    _jpeg(sources[6], base / lateral)
    train_rows.append([lateral, "Male", "40", "Lateral", "", *RAW])
    for index, patient in enumerate((valid_patient, "patient64542")):
        rel = f"{ROOT_NAME}/valid/{patient}/study1/view1_frontal.jpg"
        _jpeg(sources[7 + index], base / rel)
        valid_rows.append([rel, "Male", "70", "Frontal", "PA", *(["0.0"] * 8 + ["1.0"] + ["0.0"] * 5)])
    for name, rows in (("train.csv", train_rows), ("valid.csv", valid_rows)):
        with open(root / name, "w", newline="") as handle:
            csv.writer(handle).writerows([HEADER, *rows])
    test_rel = "test/patient64741/study1/view1_frontal.jpg"  # the test labels use root-relative paths
    _jpeg(sources[9], root / test_rel)
    with open(root / "test_labels.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["Path", *CHEXPERT_LABELS], [test_rel, *(["1"] + ["0"] * 13)]])
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_tree(tmp_path_factory.mktemp("chexpert"))


def _row(dataset: datasets.DatasetDict, path_part: str) -> dict:
    return next(row for part in dataset.values() for row in part if path_part in row["path"])


@pytest.mark.parametrize("policy", ["ones", "zeros", "ignore"])
def test_uncertain_policies(tree: Path, tmp_path: Path, policy: str) -> None:
    dataset = convert_chexpert(tree, tmp_path / policy, uncertain=policy, image_size=None).dataset
    row = _row(dataset, "patient00001/study1/view1")
    uncertain = [value == "-1.0" for value in RAW]
    assert row["uncertain"] == uncertain
    for value, label, mask in zip(RAW, row["labels"], row["label_mask"], strict=True):
        if value == "-1.0":
            expected = {"ones": 1.0, "zeros": 0.0, "ignore": IGNORE_LABEL}[policy]
            assert (label, mask) == (expected, 0.0 if policy == "ignore" else 1.0)
        else:
            assert (label, mask) == (1.0 if value == "1.0" else 0.0, 1.0)  # blank -> 0
    if policy == "ignore":  # the hf-cxr losses skip exactly the uncertain entries
        targets = torch.tensor([row["labels"]])
        logits = torch.randn(1, 14)
        kept = torch.tensor([not flag for flag in uncertain])
        expected_loss = MultiLabelBCELoss()(logits[:, kept], targets[:, kept])
        assert torch.allclose(MultiLabelBCELoss()(logits, targets), expected_loss)


def test_splits_metadata_and_card(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    convert_chexpert(tree, out, uncertain="ones", image_size=None)
    dataset = datasets.load_from_disk(str(out))
    assert {k: v.num_rows for k, v in dataset.items()} == {"train": 7, "validation": 2, "test": 1}
    row = _row(dataset, "patient00002/")
    assert (row["patient_id"], row["study_id"], row["view_id"]) == ("patient00002", 1, 1)
    assert (row["sex"], row["age"], row["frontal_lateral"], row["ap_pa"]) == ("Female", 41, "Frontal", "AP")
    test_row = dataset["test"][0]
    assert test_row["labels"][0] == 1.0 and test_row["age"] == -1 and test_row["sex"] == ""
    card = (out / "README.md").read_text()
    assert "| images | 7 | 2 | 1 |" in card and "Irvin J" in card and "Research use only" in card
    assert "| Cardiomegaly | 0 / 2 | 0 / 0 | 0 / 0 |" in card  # positives / uncertain, before the policy
    assert "| Atelectasis | 2 / 0 | 2 / 0 | 0 / 0 |" in card
    assert re.search(r"\$\w", card) is None


def test_frontal_only_and_sizes(tree: Path, tmp_path: Path) -> None:
    dataset = convert_chexpert(tree, tmp_path / "out", frontal_only=True, image_size=128).dataset
    assert all(view == "Frontal" for part in dataset.values() for view in part["frontal_lateral"])
    assert dataset["train"].num_rows == 6
    assert '"lateral_images_left_out": 1' in (tmp_path / "out" / "conversion_report.json").read_text()
    cropped = _row(dataset, "patient00001/")
    assert (cropped["original_width"], cropped["original_height"]) == (256, 200)
    assert cropped["image"].size == (164, 128)  # shorter side 128, aspect ratio kept
    assert cropped["image"].format == "JPEG"
    # Images already at or below the size are stored byte for byte.
    unchanged = convert_chexpert(tree, tmp_path / "big", image_size=512).dataset["validation"]
    source = tree.parent / unchanged[0]["path"]
    stored = unchanged.cast_column("image", datasets.Image(decode=False))[0]["image"]["bytes"]
    assert stored == source.read_bytes()


def test_exif_orientation_is_stored_upright_whatever_the_size(tmp_path: Path) -> None:
    """A JPEG stored sideways with EXIF Orientation 6 is converted upright, small or resized, and its recorded size
    is the displayed one; the stored file carries no orientation left to apply, so any decoder shows it upright."""
    root = _write_tree(tmp_path)
    relative = f"{ROOT_NAME}/valid/patient64542/study1/view1_frontal.jpg"
    source = sorted((NIH_DIR / "images").glob("*.png"))[8]
    upright = Image.open(source).convert("L").crop((0, 0, 200, 256))  # portrait: 200 wide, 256 high
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # "rotate 90 degrees clockwise to display"
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / relative, quality=95, exif=exif)
    shown = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / relative)))
    assert shown.shape == (256, 200)
    for image_size, stored_size in ((None, (200, 256)), (128, (128, 164))):
        dataset = convert_chexpert(root, tmp_path / f"out-{image_size}", image_size=image_size).dataset["validation"]
        index = dataset["path"].index(relative)
        row = dataset[index]
        assert (row["original_width"], row["original_height"]) == (200, 256)
        assert row["image"].size == stored_size
        raw = Image.open(
            io.BytesIO(dataset.cast_column("image", datasets.Image(decode=False))[index]["image"]["bytes"])
        )
        assert raw.size == stored_size and raw.getexif().get(ExifTags.Base.Orientation, 1) == 1
        if image_size is None:  # not resized: the displayed pixels, exactly
            np.testing.assert_array_equal(np.asarray(row["image"]), shown)
        else:
            small = upright.resize(stored_size, Image.Resampling.LANCZOS)
            assert np.abs(np.asarray(row["image"], dtype=float) - np.asarray(small, dtype=float)).mean() < 3


def test_patient_in_train_and_validation_is_refused(tmp_path: Path) -> None:
    root = _write_tree(tmp_path, valid_patient="patient00003")
    with pytest.raises(PatientLeakError, match="patient00003"):
        convert_chexpert(root, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_image_and_bad_label_value(tmp_path: Path) -> None:
    root = _write_tree(tmp_path)
    (tmp_path / ROOT_NAME / "train" / "patient00004" / "study1" / "view1_frontal.jpg").unlink()
    with pytest.raises(MissingFilesError, match=r"patient00004/study1/view1_frontal\.jpg"):
        convert_chexpert(root, tmp_path / "out")
    text = (root / "valid.csv").read_text().splitlines()
    text[2] = text[2].replace(",1.0,", ",2.0,", 1)
    (root / "valid.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(ValueError, match=r"valid\.csv' line 3, Atelectasis: label value '2\.0'"):
        convert_chexpert(root, tmp_path / "out")


def test_shared_findings_map_for_cross_dataset_evaluation() -> None:
    names, nih, chexpert = shared_finding_columns()
    assert len(names) == 7 and "Effusion" in names and "Infiltration" not in names
    assert [CHESTXRAY14_LABELS[i] for i in nih] == names
    assert CHEXPERT_LABELS[chexpert[names.index("Effusion")]] == "Pleural Effusion"
    logits = np.arange(14)[None]
    assert logits[:, nih].tolist() == [[CHESTXRAY14_LABELS.index(n) for n in names]]


def test_raw_format_on_non_square_jpegs(tree: Path, tmp_path: Path) -> None:
    """`image_format="raw"` on CheXpert's non-square JPEGs: uncompressed PGM files at the stored size, the pixels the
    png conversion stores up to its JPEG re-encoding (exactly the decoded JPEG when not resized), and read by the
    model's processor through `eval_transform` without being told."""
    from hf_cxr.modeling.cr_msnet import CRMSNetImageProcessor

    from hf_cxr.data.transforms import eval_transform

    raw = convert_chexpert(tree, tmp_path / "raw", image_size=128, image_format="raw").dataset
    png = convert_chexpert(tree, tmp_path / "png", image_size=128).dataset
    cropped_raw, cropped_png = _row(raw, "patient00001/study1/view1"), _row(png, "patient00001/study1/view1")
    assert cropped_raw["image"].format == "PPM" and cropped_raw["image"].size == (164, 128)
    difference = np.abs(np.asarray(cropped_raw["image"], float) - np.asarray(cropped_png["image"], float))
    assert difference.mean() < 1.0  # the png conversion's JPEG (quality 95) re-encoding
    assert "uncompressed image files" in (tmp_path / "raw" / "README.md").read_text()

    unresized = convert_chexpert(tree, tmp_path / "raw-original", image_size=None, image_format="raw").dataset
    row = _row(unresized, "patient00002/")
    np.testing.assert_array_equal(np.asarray(row["image"]), np.asarray(Image.open(tree.parent / row["path"])))

    processor = CRMSNetImageProcessor(size=64)
    batch = raw["train"].with_transform(eval_transform(processor))[:3]
    assert batch["pixel_values"].shape == (3, 3, 64, 64)
    direct = processor([np.asarray(image) for image in raw["train"][:3]["image"]], return_tensors="pt")
    assert torch.equal(batch["pixel_values"], direct["pixel_values"])
