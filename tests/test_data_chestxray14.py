"""ChestX-ray14 converter: the label parser on NIH's full table, and conversions of raw trees in NIH's layout
built from the real fixture PNGs and the real table rows of those images."""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import os
import re
import shutil
import time
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from conftest import NIH_DIR
from hf_cxr.modeling.cr_msnet import CRMSNetImageProcessor
from huggingface_hub import DatasetCard
from PIL import Image

from hf_cxr.data import BadFileError, MissingFilesError, PatientLeakError, convert_chestxray14
from hf_cxr.data._common import size_category, strict_json
from hf_cxr.data.chestxray14 import parse_finding_labels, read_nih_bboxes, read_nih_table
from hf_cxr.data.storage import encode_radiograph
from hf_cxr.data.transforms import eval_transform, train_transform
from hf_cxr.imaging import load_radiograph
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
    convert_chestxray14(root, out, image_size=128, num_proc=2, validation_fraction=0.25, seed=3)
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


def _float_lanczos(source: Path | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The earlier conversion's pixels (before issue 18): the whole image read as float, resized with Lanczos in
    float and rounded to 8 bits, as float64 levels 0..255."""
    grey = load_radiograph(source)
    resized = np.asarray(Image.fromarray(grey).resize(size, Image.Resampling.LANCZOS), dtype=np.float64)
    return np.clip(np.rint(resized * 255), 0, 255)


def test_integer_factors_store_an_exact_box_average(converted: tuple[Path, dict]) -> None:
    """256 px stored at 128 px is a factor of 2: each stored pixel is the mean of its 2 x 2 block, rounded (no
    resample after the integer reduction, no quantisation twice, no clipping)."""
    out, _ = converted
    dataset = datasets.load_from_disk(str(out))
    row = next(r for part in dataset.values() for r in part if r["image_id"] == "00000493_000.png")
    source = np.asarray(Image.open(NIH_DIR / "images" / "00000493_000.png").convert("L"), dtype=np.float64)
    blocks = source.reshape(128, 2, 128, 2).mean(axis=(1, 3))
    stored = np.asarray(row["image"], dtype=np.float64)
    assert np.abs(stored - blocks).max() <= 0.5 + 1e-9


# The tolerance `encode_radiograph` documents against the earlier float Lanczos resize, in 8-bit levels.
MEAN_TOLERANCE, P999_TOLERANCE = 1.0, 12


@pytest.mark.parametrize(("fullres", "size"), [(False, 128), (False, 100), (True, 512), (True, 224)])
def test_resize_stays_within_the_documented_tolerance(tmp_path: Path, fullres: bool, size: int) -> None:
    """Integer reduction + 8-bit Lanczos against the float Lanczos of the whole image, on real NIH PNGs: at an integer
    factor (256 -> 128, 1024 -> 512) and at non-integer ones (256 -> 100, 1024 -> 224)."""
    paths = [NIH_DIR / "00000493_000_fullres.png"] if fullres else sorted((NIH_DIR / "images").glob("*.png"))
    differences = []
    for path in paths:
        stored = encode_radiograph(path, size)
        assert (stored.width, stored.height) == (size, size)
        pixels = np.asarray(Image.open(io.BytesIO(stored.data)), dtype=np.float64)
        differences.append(np.abs(pixels - _float_lanczos(path, (size, size))).ravel())
    every = np.concatenate(differences)
    assert every.mean() <= MEAN_TOLERANCE
    assert np.percentile(every, 99.9) <= P999_TOLERANCE


def test_sixteen_bit_sources_keep_their_precision(tmp_path: Path) -> None:
    """A 16-bit PNG is stored as 16-bit (PNG or raw TIFF), resized in float: the stored values are the float
    reduction + Lanczos of the source to within rounding, with far more than 256 distinct levels."""
    eight = np.asarray(Image.open(NIH_DIR / "00000493_000_fullres.png").convert("L"), dtype=np.uint16)
    ramp = np.add.outer(np.arange(1024), np.arange(1024)).astype(np.uint16) % 257  # detail below one 8-bit level
    sixteen = eight * 257 - np.minimum(ramp, eight * 257)
    source = tmp_path / "sixteen.png"
    Image.fromarray(sixteen).save(source)
    grey = sixteen.astype(np.float32) / 65535
    expected = np.asarray(Image.fromarray(grey).reduce(3).resize((300, 300), Image.Resampling.LANCZOS)) * 65535
    for image_format, file_format in (("png", "PNG"), ("raw", "TIFF")):
        stored = encode_radiograph(source, 300, image_format)
        image = Image.open(io.BytesIO(stored.data))
        assert (image.format, image.mode, image.size) == (file_format, "I;16", (300, 300))
        values = np.asarray(image).astype(np.float64)
        assert np.abs(values - np.clip(expected, 0, 65535)).max() <= 0.51  # rounding to integers only
        assert len(np.unique(values)) > 1000 and np.any(values % 257 != 0)
        np.testing.assert_allclose(load_radiograph(image), values / 65535, atol=1e-7)


def test_jpeg_is_decoded_at_reduced_scale_within_tolerance(tmp_path: Path) -> None:
    """An 8-bit grey JPEG stored at a quarter of its size is decoded with DCT scaling, then reduced: still within
    the documented tolerance of the float Lanczos of the fully decoded JPEG (plus the JPEG re-encoding it had before:
    it stays JPEG in "png"), and exact against itself in "raw"."""
    source = tmp_path / "full.jpg"
    Image.open(NIH_DIR / "00000493_000_fullres.png").convert("L").save(source, quality=95)
    reference = _float_lanczos(source, (256, 256))
    stored = encode_radiograph(source, 256, "png")
    assert Image.open(io.BytesIO(stored.data)).format == "JPEG"
    raw = encode_radiograph(source, 256, "raw")
    assert Image.open(io.BytesIO(raw.data)).format == "PPM"
    for data in (stored.data, raw.data):
        difference = np.abs(np.asarray(Image.open(io.BytesIO(data)), dtype=np.float64) - reference)
        assert difference.mean() <= MEAN_TOLERANCE and np.percentile(difference, 99.9) <= P999_TOLERANCE


def test_missing_images_are_listed(tmp_path: Path, full_table: list) -> None:
    root = tmp_path / "raw"
    _write_raw_tree(root, full_table)
    (root / "images_001" / "images" / "00000075_000.png").unlink()
    (root / "images_002" / "images" / "00000129_000.png").unlink()
    with pytest.raises(MissingFilesError) as error:
        convert_chestxray14(root, tmp_path / "out", image_size=64)
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
        convert_chestxray14(root, tmp_path / "out", image_size=64)


def test_unknown_finding_in_table_names_the_line(tmp_path: Path, full_table: list) -> None:
    root = tmp_path / "raw"
    _write_raw_tree(root, full_table)
    table = root / "Data_Entry_2017_v2020.csv"
    lines = table.read_text().splitlines()
    lines[3] = lines[3].replace(",", ",Tuberculosis|", 1).replace("|No Finding", "")
    table.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"'Tuberculosis'.*line 4"):
        convert_chestxray14(root, tmp_path / "out", image_size=64)


def test_corrupt_png_fails_or_is_skipped_and_listed(tmp_path: Path, full_table: list) -> None:
    root = tmp_path / "raw"
    layout = _write_raw_tree(root, full_table)
    bad = root / "images_001" / "images" / "00000924_000.png"
    bad.write_bytes(bad.read_bytes()[:300])  # truncated download
    with pytest.raises(BadFileError, match=r"00000924_000\.png") as error:
        convert_chestxray14(root, tmp_path / "out", image_size=64, num_proc=2)
    assert "truncated" in error.value.reason or "readable" in error.value.reason
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))

    dataset = convert_chestxray14(root, tmp_path / "out", image_size=64, skip_bad=True).dataset
    ids = [image for part in dataset.values() for image in part["image_id"]]
    assert "00000924_000.png" not in ids and len(ids) == len(layout["rows"]) - 1
    assert "00000924_000.png" in (tmp_path / "out" / "skipped_files.txt").read_text()
    assert "00000924_000.png" in (tmp_path / "out" / "README.md").read_text()
    with pytest.raises(FileExistsError):
        convert_chestxray14(root, tmp_path / "out", image_size=64, skip_bad=True)


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
    dataset = convert_chestxray14(
        tmp_path / "raw", out, image_size=64, seed=1, validation_fraction=0.2, split_protocol="random_patient",
        test_fraction=0.3,
    ).dataset  # fmt: skip
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
        convert_chestxray14(tmp_path / "raw", tmp_path / "bad", split_protocol="random")


def test_the_bundled_sample_converts_only_as_the_random_split_it_is(tmp_path: Path) -> None:
    """The sample tree has no NIH split lists (a random list written in their place made the default conversion's
    card claim NIH's official split): the default protocol refuses it naming the lists, `random_patient` splits the
    table's images by patient and its card says that the download had no lists."""
    from hf_cxr.sample import write_sample_raw_tree

    raw = write_sample_raw_tree(tmp_path / "raw")
    assert not (raw / "test_list.txt").exists() and not (raw / "train_val_list.txt").exists()
    with pytest.raises(MissingFilesError, match=r"official split list.*random_patient") as error:
        convert_chestxray14(raw, tmp_path / "official", image_size=32)
    assert sorted(error.value.paths) == ["test_list.txt", "train_val_list.txt"]
    rows = len((raw / "Data_Entry_2017_v2020.csv").read_text().splitlines()) - 1
    dataset = convert_chestxray14(raw, tmp_path / "random", image_size=32, split_protocol="random_patient").dataset
    assert sum(len(part) for part in dataset.values()) == rows  # every image of the table, once
    card = (tmp_path / "random" / "README.md").read_text()
    assert "NOT the official NIH lists" in card and "had no split lists: every image was re-assigned" in card


def test_one_progress_bar_for_the_whole_conversion(
    tmp_path: Path, full_table: list, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 15: one bar over every image of every split (not one per image), none of `datasets`' own bars, and
    `datasets`' bars as they were afterwards. Captured output is not a terminal: the log gets one line."""
    layout = _write_raw_tree(tmp_path / "raw", full_table)
    datasets.enable_progress_bars()
    convert_chestxray14(tmp_path / "raw", tmp_path / "out", image_size=64, num_proc=2)
    err = capsys.readouterr().err
    bars = [line for line in err.split("\n") if "%|" in line]  # a bar's refreshes share a line (carriage returns)
    total = len(layout["rows"])
    assert len(bars) == 1, err
    assert bars[0].startswith("\r") and bars[0].split("\r")[-1].startswith("ChestX-ray14 images: 100%")
    assert f"{total}/{total}" in bars[0].split("\r")[-1]
    assert "Generating" not in err and "Saving the dataset" not in err
    assert datasets.is_progress_bar_enabled()


@pytest.fixture(scope="module")
def converted_raw(tmp_path_factory: pytest.TempPathFactory, full_table: list) -> Path:
    """The tree of `converted`, converted in this process (no workers) with `image_format="raw"`."""
    root = tmp_path_factory.mktemp("nih_raw_for_raw")
    _write_raw_tree(root, full_table)
    out = tmp_path_factory.mktemp("nih_out_raw") / "chestxray14"
    convert_chestxray14(root, out, image_size=128, image_format="raw", validation_fraction=0.25, seed=3)
    return out


def test_raw_format_holds_the_same_rows_and_pixels(converted: tuple[Path, dict], converted_raw: Path) -> None:
    """`raw` and `png`, with and without worker processes: the same rows in the same order, the same pixels, the same
    `datasets.Image` column; only the files differ (uncompressed PGM), and the card and report say which."""
    png, raw = datasets.load_from_disk(str(converted[0])), datasets.load_from_disk(str(converted_raw))
    assert {k: v.num_rows for k, v in png.items()} == {k: v.num_rows for k, v in raw.items()}
    for split in png:
        assert raw[split].features == png[split].features
        assert (
            raw[split].select_columns(["image_id", "labels", "bboxes", "original_width"]).to_list()
            == png[split].select_columns(["image_id", "labels", "bboxes", "original_width"]).to_list()
        )
        for png_row, raw_row in zip(png[split], raw[split], strict=True):
            assert raw_row["image"].format == "PPM" and raw_row["image"].mode == "L"
            np.testing.assert_array_equal(np.asarray(raw_row["image"]), np.asarray(png_row["image"]))
    card = (converted_raw / "README.md").read_text()
    assert "uncompressed image files (`--image-format raw`)" in card and "shorter side at most 128 px" in card
    assert "as PNG files" in (converted[0] / "README.md").read_text()
    assert _strict((converted_raw / "conversion_report.json").read_text())["settings"]["image_format"] == "raw"


def test_transforms_and_evaluation_read_the_raw_format(converted: tuple[Path, dict], converted_raw: Path) -> None:
    """`eval_transform`, `train_transform` (seeded) and `hf-cxr evaluate`'s prediction path read a raw-format
    dataset without being told, and give what they give on the png one."""
    import hf_cxr
    from hf_cxr.data.transforms import AUGMENTATION_SEED
    from hf_cxr.evaluation.run import predict_probabilities

    png = datasets.load_from_disk(str(converted[0]))["train"]
    raw = datasets.load_from_disk(str(converted_raw))["train"]
    processor = CRMSNetImageProcessor(size=64)
    expected = png.with_transform(eval_transform(processor))[:5]
    got = raw.with_transform(eval_transform(processor))[:5]
    assert torch.equal(got["pixel_values"], expected["pixel_values"]) and torch.equal(got["labels"], expected["labels"])

    def seeded_batch(split: datasets.Dataset) -> dict:
        batch = split[:5]
        batch[AUGMENTATION_SEED] = [11, 12, 13, 14, 15]
        return train_transform(processor)(batch)

    assert torch.equal(seeded_batch(raw)["pixel_values"], seeded_batch(png)["pixel_values"])
    model = hf_cxr.build_model("cr_msnet", preset="tiny").eval()
    tiny_processor = hf_cxr.build_image_processor("cr_msnet", preset="tiny")
    np.testing.assert_array_equal(
        predict_probabilities(model, tiny_processor, raw, batch_size=4, device="cpu"),
        predict_probabilities(model, tiny_processor, png, batch_size=4, device="cpu"),
    )


def test_a_split_whose_files_are_all_bad_is_left_out_and_listed(
    tmp_path: Path, full_table: list, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "raw"
    layout = _write_raw_tree(root, full_table)
    for name in TEST_IMAGES:
        path = next(root.glob(f"images_*/images/{name}"))
        path.write_bytes(b"not a png")
    result = convert_chestxray14(root, tmp_path / "out", image_size=64, num_proc=2, skip_bad=True)
    assert set(result.dataset) == {"train", "validation"}
    assert sum(part.num_rows for part in result.dataset.values()) == len(layout["rows"]) - len(TEST_IMAGES)
    assert sorted(Path(entry["path"]).name for entry in result.skipped) == sorted(TEST_IMAGES)
    assert all("not a readable image" in entry["reason"] for entry in result.skipped)
    assert not any("BytesIO" in entry["reason"] for entry in result.skipped)  # no memory address in the card
    assert "split 'test' is empty: all its files were skipped" in capsys.readouterr().out
    listed = (tmp_path / "out" / "skipped_files.txt").read_text()
    assert all(name in listed for name in TEST_IMAGES)


def test_cli_image_format_raw_and_bad_num_proc(tmp_path: Path, full_table: list) -> None:
    from hf_cxr.commands import convert

    root = tmp_path / "raw"
    _write_raw_tree(root, full_table)
    parser = argparse.ArgumentParser()
    convert.add_parser(parser.add_subparsers())
    argv = ["convert", "chestxray14", "--root", str(root), "--out", str(tmp_path / "ds"), "--image-size", "64"]
    args = parser.parse_args([*argv, "--image-format", "raw", "--num-proc", "2"])
    assert args.func(args) == 0
    row = datasets.load_from_disk(str(tmp_path / "ds"))["test"][0]
    assert row["image"].format == "PPM" and row["image"].size == (64, 64)
    with pytest.raises(SystemExit):
        parser.parse_args([*argv, "--num-proc", "0"])
    with pytest.raises(ValueError, match="image_format must be one of"):
        convert_chestxray14(root, tmp_path / "bad", image_format="jpeg")
    with pytest.raises(ValueError, match="num_proc must be a positive integer"):
        convert_chestxray14(root, tmp_path / "bad", num_proc=0)
    assert not (tmp_path / "bad").exists()


def _slow_first(item: int) -> dict:
    """A conversion step whose first items finish last (worker processes complete out of order)."""
    time.sleep(0.02 * max(0, 4 - item))
    return {"x": item}


def _dies_on_three(item: int) -> dict:
    if item == 3:
        os._exit(3)  # a worker killed mid-conversion (as by the kernel's out-of-memory killer)
    return {"x": item}


def _summary(dataset: datasets.DatasetDict, skipped: list) -> tuple[dict, str]:
    return {"rows": {split: part.num_rows for split, part in dataset.items()}}, "card\n"


def test_workers_keep_the_items_order_and_a_dead_worker_is_a_clear_error(tmp_path: Path) -> None:
    from hf_cxr.data._common import generate_dataset_dict

    features = datasets.Features({"x": datasets.Value("int32")})
    common = dict(features=features, info=datasets.DatasetInfo(), writer_batch_size=2, summarize=_summary,
                  skip_bad=False, description="items", num_proc=2)  # fmt: skip
    splits = {"train": list(range(8)), "test": [8, 9]}
    result = generate_dataset_dict(tmp_path / "ordered", splits, _slow_first, **common)
    assert {split: part["x"] for split, part in result.dataset.items()} == splits
    with pytest.raises(RuntimeError, match="worker process ended abruptly"):
        generate_dataset_dict(tmp_path / "dead", splits, _dies_on_three, **common)
    assert not (tmp_path / "dead").exists() and not list(tmp_path.glob(".dead.partial-*"))
