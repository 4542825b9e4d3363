"""ChestX-ray14 converter: the label parser on NIH's full table, and conversions of raw trees in NIH's layout
built from the real fixture PNGs and the real table rows of those images."""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from conftest import NIH_DIR
from hf_cxr.modeling.cr_msnet import CRMSNetImageProcessor
from huggingface_hub import DatasetCard

from hf_cxr.data import BadFileError, MissingFilesError, PatientLeakError, build_chestxray14
from hf_cxr.data._common import size_category, strict_json
from hf_cxr.data.chestxray14 import parse_finding_labels, read_nih_bboxes, read_nih_table
from hf_cxr.data.transforms import eval_transform, train_transform
from hf_cxr.labels import CHESTXRAY14_LABELS

TABLE = NIH_DIR / "Data_Entry_2017_v2020.csv.gz"
# Published label counts of ChestX-ray14 (rows whose Finding Labels contain each name), all 112,120 images.
PUBLISHED = {
    "No Finding": 60361,
    "Infiltration": 19894,
    "Effusion": 13317,
    "Atelectasis": 11559,
    "Nodule": 6331,
    "Mass": 5782,
    "Pneumothorax": 5302,
    "Consolidation": 4667,
    "Pleural_Thickening": 3385,
    "Cardiomegaly": 2776,
    "Emphysema": 2516,
    "Edema": 2303,
    "Fibrosis": 1686,
    "Pneumonia": 1431,
    "Hernia": 227,
}
FOLLOW_UPS = ("00000284", "00000075")  # patients whose later studies the raw tree also holds
TEST_IMAGES = ("00000129_000.png", "00000353_000.png", "00000889_000.png", "00003449_000.png")


@pytest.fixture(scope="module")
def full_table() -> list:
    return read_nih_table(TABLE)


def test_full_table_matches_published_counts(full_table: list) -> None:
    assert len(full_table) == 112120
    labels = np.asarray([record.labels for record in full_table])
    assert int((labels.sum(axis=1) == 0).sum()) == PUBLISHED["No Finding"]
    for index, name in enumerate(CHESTXRAY14_LABELS):
        assert int(labels[:, index].sum()) == PUBLISHED[name], name
    assert len({record.patient_id for record in full_table}) == 30805
    assert Counter(record.view_position for record in full_table) == {"PA": 67310, "AP": 44810}
    first = full_table[1]
    assert first.image_id == "00000001_001.png" and first.finding_labels == "Cardiomegaly|Emphysema"
    assert first.labels[CHESTXRAY14_LABELS.index("Emphysema")] == 1.0 and sum(first.labels) == 2


def test_full_bbox_list() -> None:
    boxes = read_nih_bboxes(NIH_DIR / "BBox_List_2017.csv.gz")
    flat = [box for image_boxes in boxes.values() for box in image_boxes]
    assert len(flat) == 984
    counts = Counter(box.finding for box in flat)
    assert counts["Infiltration"] == 123 and "Infiltrate" not in counts  # NIH's box list says "Infiltrate"
    assert boxes["00013118_008.png"][0].x == pytest.approx(225.084745762712)


@pytest.mark.parametrize(
    ("text", "message"),
    [("Nodule|Cancer", "unknown finding 'Cancer'"), ("Mass|Mass", "twice"), ("No Finding|Mass", "combined")],
)
def test_label_parser_refuses_bad_strings(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_finding_labels(text)


def _write_raw_tree(root: Path, full_table: list, test_images: tuple[str, ...] = TEST_IMAGES) -> dict[str, list]:
    """NIH's layout: images split over images_001/ and images_002/, the table rows of exactly those images
    (copied from the real table), official lists written here, and a box list in NIH's format."""
    fixtures = sorted((NIH_DIR / "images").glob("*.png"))
    names = [path.name for path in fixtures]
    follow_ups = {r.image_id: r for r in full_table if r.image_id[:8] in FOLLOW_UPS and r.image_id not in names}
    for index, path in enumerate(fixtures):
        folder = root / f"images_{1 + index % 2:03d}" / "images"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / path.name)
    for name in follow_ups:  # later studies of the same patients; pixels from their first study
        shutil.copy(NIH_DIR / "images" / f"{name[:8]}_000.png", root / "images_002" / "images" / name)
    wanted = set(names) | set(follow_ups)
    with gzip.open(TABLE, "rt", newline="") as source, open(root / "Data_Entry_2017_v2020.csv", "w", newline="") as out:
        reader, writer = csv.reader(source), csv.writer(out)
        writer.writerow(next(reader))
        rows = [row for row in reader if row[0] in wanted]
        writer.writerows(rows)
    train_val = sorted(wanted - set(test_images))
    (root / "train_val_list.txt").write_text("\n".join(train_val) + "\n")
    (root / "test_list.txt").write_text("\n".join(test_images) + "\n")
    (root / "BBox_List_2017.csv").write_text(
        "Image Index,Finding Label,Bbox [x,y,w,h],,,\n00000284_000.png,Infiltrate,400.0,512.0,128.0,64.0\n"
    )
    return {"rows": rows, "train_val": train_val, "follow_ups": sorted(follow_ups)}


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory, full_table: list) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("nih_raw")
    layout = _write_raw_tree(root, full_table)
    out = tmp_path_factory.mktemp("nih_out") / "chestxray14"
    build_chestxray14(root, out, image_size=128, num_proc=2, validation_fraction=0.25, seed=3)
    return out, layout


def test_conversion_splits_labels_and_sizes(converted: tuple[Path, dict]) -> None:
    out, layout = converted
    dataset = datasets.load_from_disk(str(out))
    assert set(dataset) == {"train", "validation", "test"}
    assert sorted(dataset["test"]["image_id"]) == sorted(TEST_IMAGES)
    total = sum(part.num_rows for part in dataset.values())
    assert total == len(layout["rows"]) == 15 + len(layout["follow_ups"])
    patients = {split: set(part["patient_id"]) for split, part in dataset.items()}
    assert not (patients["train"] & patients["validation"]) and not (patients["train"] & patients["test"])
    # 11 train_val patients (15 minus the 4 in the test list); validation is 25 % of them, rounded.
    assert len(patients["validation"]) == 3 and len(patients["train"]) == 8
    for part in dataset.values():
        for row in part:
            assert list(row["labels"]) == list(parse_finding_labels(row["finding_labels"]))
            assert row["image"].size == (128, 128) and (row["original_width"], row["original_height"]) == (256, 256)
            assert row["patient_id"] == int(row["image_id"][:8])
    assert dataset["train"].features["labels"].length == 14


def test_follow_ups_stay_with_their_patient(converted: tuple[Path, dict]) -> None:
    out, _ = converted
    dataset = datasets.load_from_disk(str(out))
    split_of = {image: split for split, part in dataset.items() for image in part["image_id"]}
    for patient in FOLLOW_UPS:
        assert len({split for image, split in split_of.items() if image.startswith(patient)}) == 1


def test_boxes_scaled_to_stored_image(converted: tuple[Path, dict]) -> None:
    out, _ = converted
    dataset = datasets.load_from_disk(str(out))
    rows = [row for part in dataset.values() for row in part if row["image_id"] == "00000284_000.png"]
    (box,) = rows[0]["bboxes"]
    assert box["finding"] == "Infiltration"
    # NIH boxes are in 1024-px coordinates; the stored image is 128 px: factor 1/8.
    assert (box["x"], box["y"], box["width"], box["height"]) == (50.0, 64.0, 16.0, 8.0)


def _strict(text: str) -> dict:
    """json.loads that refuses NaN and infinities, as strict JSON parsers do."""

    def refuse(constant: str) -> None:
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_size_category_follows_the_hub_buckets() -> None:
    assert [size_category(n) for n in (0, 400, 999, 1000, 9999, 10_000, 112_120, 1_000_000)] == [
        "n<1K", "n<1K", "n<1K", "1K<n<10K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M",
    ]  # fmt: skip
    assert strict_json({"a": float("nan"), "b": [np.float32("inf"), 1.5]}) == (
        '{\n  "a": null,\n  "b": [\n    null,\n    1.5\n  ]\n}\n'
    )


def test_card_and_report_hold_counts(converted: tuple[Path, dict]) -> None:
    out, layout = converted
    card = (out / "README.md").read_text()
    dataset = datasets.load_from_disk(str(out))
    assert f"| images | {dataset['train'].num_rows} | {dataset['validation'].num_rows} | 4 |" in card
    # The metadata and the protocol are those of this conversion, not of NIH's full dataset.
    total = len(layout["rows"])
    assert DatasetCard(card).data.size_categories == ["n<1K"] and "100K<n<1M" not in card
    assert f"converted by hf-cxr ({total} images)" in card and f"this conversion holds {total} images" in card
    assert "- Protocol: **official NIH lists**." in card
    assert "1 box(es) on 1 of the converted images, 1 finding(s) (Infiltration 1)" in card and "984" not in card
    report = _strict((out / "conversion_report.json").read_text())
    assert report["settings"]["split_protocol"] == "official" and report["settings"]["test_fraction"] is None
    assert "Wang X, Peng Y" in card and "nihcc.app.box.com" in card and "Research use only" in card
    assert "## Limitations and biases" in card  # rendered from hub_cards/dataset_chestxray14.md
    assert re.search(r"\$\w", card) is None  # every placeholder filled
    assert not (out / "skipped_files.txt").exists()


def test_pixels_match_a_direct_resize(converted: tuple[Path, dict]) -> None:
    """Stored pixels are the source resized (Lanczos, in float), not re-quantised twice or clipped."""
    from PIL import Image

    out, _ = converted
    dataset = datasets.load_from_disk(str(out))
    row = next(r for part in dataset.values() for r in part if r["image_id"] == "00000493_000.png")
    source = np.asarray(Image.open(NIH_DIR / "images" / "00000493_000.png").convert("L"), dtype=np.float32) / 255
    expected = np.asarray(Image.fromarray(source, mode="F").resize((128, 128), Image.Resampling.LANCZOS))
    stored = np.asarray(row["image"], dtype=np.float32) / 255
    assert np.abs(stored - np.clip(expected, 0, 1)).max() <= 0.5 / 255 + 1e-6


def test_missing_images_are_listed(tmp_path: Path, full_table: list) -> None:
    root = tmp_path / "raw"
    _write_raw_tree(root, full_table)
    (root / "images_001" / "images" / "00000075_000.png").unlink()
    (root / "images_002" / "images" / "00000129_000.png").unlink()
    with pytest.raises(MissingFilesError) as error:
        build_chestxray14(root, tmp_path / "out", image_size=64)
    assert sorted(error.value.paths) == ["00000075_000.png", "00000129_000.png"]
    assert "00000075_000.png" in str(error.value) and "00000129_000.png" in str(error.value)
    assert not (tmp_path / "out").exists()


def test_patient_in_both_official_lists_is_refused(tmp_path: Path, full_table: list) -> None:
    root = tmp_path / "raw"
    layout = _write_raw_tree(root, full_table)
    follow_up = layout["follow_ups"][0]  # a later study of a train_val patient, moved to the test list
    (root / "train_val_list.txt").write_text("\n".join(n for n in layout["train_val"] if n != follow_up) + "\n")
    (root / "test_list.txt").write_text("\n".join([*TEST_IMAGES, follow_up]) + "\n")
    with pytest.raises(PatientLeakError, match=str(int(follow_up[:8]))):
        build_chestxray14(root, tmp_path / "out", image_size=64)


def test_unknown_finding_in_table_names_the_line(tmp_path: Path, full_table: list) -> None:
    root = tmp_path / "raw"
    _write_raw_tree(root, full_table)
    table = root / "Data_Entry_2017_v2020.csv"
    lines = table.read_text().splitlines()
    lines[3] = lines[3].replace(",", ",Tuberculosis|", 1).replace("|No Finding", "")
    table.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"'Tuberculosis'.*line 4"):
        build_chestxray14(root, tmp_path / "out", image_size=64)


def test_corrupt_png_fails_or_is_skipped_and_listed(tmp_path: Path, full_table: list) -> None:
    root = tmp_path / "raw"
    layout = _write_raw_tree(root, full_table)
    bad = root / "images_001" / "images" / "00000924_000.png"
    bad.write_bytes(bad.read_bytes()[:300])  # truncated download
    with pytest.raises(BadFileError, match=r"00000924_000\.png") as error:
        build_chestxray14(root, tmp_path / "out", image_size=64, num_proc=2)
    assert "truncated" in error.value.reason or "readable" in error.value.reason
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))

    dataset = build_chestxray14(root, tmp_path / "out", image_size=64, skip_bad=True)
    ids = [image for part in dataset.values() for image in part["image_id"]]
    assert "00000924_000.png" not in ids and len(ids) == len(layout["rows"]) - 1
    assert "00000924_000.png" in (tmp_path / "out" / "skipped_files.txt").read_text()
    assert "00000924_000.png" in (tmp_path / "out" / "README.md").read_text()
    with pytest.raises(FileExistsError):
        build_chestxray14(root, tmp_path / "out", image_size=64, skip_bad=True)


def test_cli_convert(tmp_path: Path, full_table: list) -> None:
    from hf_cxr.commands import convert

    root = tmp_path / "raw"
    _write_raw_tree(root, full_table)
    parser = argparse.ArgumentParser()
    convert.add_parser(parser.add_subparsers())
    args = parser.parse_args(
        ["convert", "chestxray14", "--root", str(root), "--out", str(tmp_path / "ds"), "--image-size", "64"]
    )
    assert args.func(args) == 0
    dataset = datasets.load_from_disk(str(tmp_path / "ds"))
    assert dataset["test"].num_rows == 4 and dataset["train"][0]["image"].size == (64, 64)


def test_transforms_feed_a_model_processor(converted: tuple[Path, dict]) -> None:
    out, _ = converted
    dataset = datasets.load_from_disk(str(out))["train"]
    processor = CRMSNetImageProcessor(size=64)
    batch = dataset.with_transform(eval_transform(processor))[:4]
    assert set(batch) == {"pixel_values", "labels"}
    assert batch["pixel_values"].shape == (4, 3, 64, 64) and batch["labels"].dtype == torch.float32
    assert batch["labels"].tolist() == [list(v) for v in dataset[:4]["labels"]]
    direct = processor(dataset[:4]["image"], return_tensors="pt")["pixel_values"]
    assert torch.equal(batch["pixel_values"], direct)

    torch.manual_seed(0)
    augmented = dataset.with_transform(train_transform(processor))[:4]
    assert augmented["pixel_values"].shape == (4, 3, 64, 64)
    assert not torch.allclose(augmented["pixel_values"], direct)
    torch.manual_seed(0)
    again = dataset.with_transform(train_transform(processor))[:4]
    assert torch.equal(augmented["pixel_values"], again["pixel_values"])


def test_random_patient_split_protocol_is_patient_disjoint_and_labelled(tmp_path: Path, full_table: list) -> None:
    layout = _write_raw_tree(tmp_path / "raw", full_table)
    out = tmp_path / "random"
    dataset = build_chestxray14(
        tmp_path / "raw", out, image_size=64, seed=1, validation_fraction=0.2, split_protocol="random_patient",
        test_fraction=0.3,
    )  # fmt: skip
    patients = {split: set(part["patient_id"]) for split, part in dataset.items()}
    assert not (patients["train"] & patients["test"]) and not (patients["validation"] & patients["test"])
    assert sum(len(part) for part in dataset.values()) == len(layout["rows"])  # every listed image, once
    assert sorted(dataset["test"]["image_id"]) != sorted(TEST_IMAGES)  # not the official test list
    card = (out / "README.md").read_text()
    assert "NOT the official NIH lists" in card and "seeded random patient split" in card
    assert "Protocol: **official NIH lists**" not in card
    assert DatasetCard(card).data.size_categories == ["n<1K"]
    assert f"({len(layout['rows'])} images)" in card
    report = _strict((out / "conversion_report.json").read_text())
    assert report["settings"]["split_protocol"] == "random_patient" and report["settings"]["test_fraction"] == 0.3
    with pytest.raises(ValueError, match="split_protocol"):
        build_chestxray14(tmp_path / "raw", tmp_path / "bad", split_protocol="random")
