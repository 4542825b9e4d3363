"""NIH ChestX-ray14 (raw download -> `datasets.DatasetDict`).

Raw layout as NIH ships it (or as common mirrors unpack it), under `root`:
`Data_Entry_2017_v2020.csv` (or `Data_Entry_2017.csv`, either may be gzipped), `BBox_List_2017.csv` (optional),
`train_val_list.txt`, `test_list.txt`, and the PNGs in `images/` or `images_001/images/ ... images_012/images/`.

Splits: the official test list is `test`; `train` and `validation` divide the official train_val list by
patient (seeded; `validation_fraction` of the patients, 0.1 by default). Every check fails loudly: a patient in
two splits, a listed image missing on disk, an unknown finding name.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from hf_cxr.data._common import (
    ConversionResult,
    DatasetSource,
    MissingFilesError,
    check_num_proc,
    check_patients_disjoint,
    generate_dataset_dict,
    list_message,
    markdown_table,
    split_by_patient,
)
from hf_cxr.data.storage import (
    check_storage_options,
    print_conversion_summary,
    render_image_dataset_card,
    stored_image,
)
from hf_cxr.labels import CHESTXRAY14_LABELS, CHESTXRAY14_NO_FINDING

TABLE_NAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
BBOX_NAME = "BBox_List_2017.csv"
TRAIN_VAL_LIST, TEST_LIST = "train_val_list.txt", "test_list.txt"
DEFAULT_IMAGE_SIZE = 512
DEFAULT_VALIDATION_FRACTION = 0.1
# "official": NIH's test list is `test`. "random_patient": all listed images re-split by patient (seeded), as many
# papers did; a different, easier benchmark whose results must be labelled as such.
SPLIT_PROTOCOLS = ("official", "random_patient")
DEFAULT_RANDOM_TEST_FRACTION = 0.2
# NIH gives boxes in the pixel coordinates of its 1024 x 1024 PNGs, whatever size a mirror's copies have.
BBOX_COORDINATE_SIZE = 1024
# NIH's box list spells one finding differently from the label table.
_BBOX_FINDING_NAMES = {"Infiltrate": "Infiltration"}
_FINDING_INDEX = {name: index for index, name in enumerate(CHESTXRAY14_LABELS)}

HOMEPAGE = "https://nihcc.app.box.com/v/ChestXray-NIHCC"
CITATION = (
    "Wang X, Peng Y, Lu L, Lu Z, Bagheri M, Summers R. ChestX-ray8: Hospital-scale Chest X-ray Database and "
    "Benchmarks on Weakly-Supervised Classification and Localization of Common Thorax Diseases. IEEE CVPR 2017, "
    "3462-3471."
)
LICENSE = "NIH Clinical Center: released for unrestricted use, with attribution (link, acknowledgement, citation)"
SOURCE = DatasetSource("chestxray14", "NIH ChestX-ray14 converted by hf-cxr.", HOMEPAGE, CITATION, LICENSE)

FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "image_id": datasets.Value("string"),
        "labels": datasets.List(datasets.Value("float32"), length=len(CHESTXRAY14_LABELS)),
        "finding_labels": datasets.Value("string"),
        "patient_id": datasets.Value("int32"),
        "follow_up": datasets.Value("int32"),
        "patient_age": datasets.Value("int32"),
        "patient_sex": datasets.Value("string"),
        "view_position": datasets.Value("string"),
        "original_width": datasets.Value("int32"),
        "original_height": datasets.Value("int32"),
        "acquisition_width": datasets.Value("int32"),
        "acquisition_height": datasets.Value("int32"),
        "acquisition_pixel_spacing": datasets.List(datasets.Value("float32"), length=2),
        "bboxes": datasets.List(
            {
                "finding": datasets.Value("string"),
                "x": datasets.Value("float32"),
                "y": datasets.Value("float32"),
                "width": datasets.Value("float32"),
                "height": datasets.Value("float32"),
            }
        ),
    }
)


@dataclass(frozen=True)
class NIHRecord:
    """One row of NIH's `Data_Entry` table, labels already parsed."""

    image_id: str
    finding_labels: str
    labels: tuple[float, ...]
    follow_up: int
    patient_id: int
    patient_age: int
    patient_sex: str
    view_position: str
    acquisition_width: int
    acquisition_height: int
    acquisition_pixel_spacing: tuple[float, float]


@dataclass(frozen=True)
class NIHBox:
    """One `BBox_List_2017.csv` box, in the 1024-px coordinates of NIH's PNGs (stored rescaled to the image)."""

    finding: str
    x: float
    y: float
    width: float
    height: float


@dataclass
class _Item:
    """What a generator needs for one example (cheap to pickle to worker processes)."""

    path: str
    record: NIHRecord
    boxes: list[NIHBox] = field(default_factory=list)


def parse_finding_labels(text: str, where: str = "") -> tuple[float, ...]:
    """NIH's `Finding Labels` string ("Effusion|Mass", or "No Finding") -> 14 floats in `CHESTXRAY14_LABELS` order.

    Unknown names, duplicates, an empty string and "No Finding" combined with a finding are errors: each of
    them means the table is not the one this code knows. Raises `ValueError` naming the text (and `where`) for each:
    an unknown name (an empty string is one), a finding listed twice, "No Finding" combined with findings.
    """
    where = f" ({where})" if where else ""
    names = [name.strip() for name in text.split("|")]
    if names == [CHESTXRAY14_NO_FINDING]:
        return (0.0,) * len(CHESTXRAY14_LABELS)
    vector = [0.0] * len(CHESTXRAY14_LABELS)
    for name in names:
        if name == CHESTXRAY14_NO_FINDING:
            raise ValueError(f"'{CHESTXRAY14_NO_FINDING}' combined with findings in {text!r}{where}")
        if name not in _FINDING_INDEX:
            raise ValueError(f"unknown finding {name!r} in {text!r}{where}; known: {', '.join(CHESTXRAY14_LABELS)}")
        if vector[_FINDING_INDEX[name]]:
            raise ValueError(f"finding {name!r} listed twice in {text!r}{where}")
        vector[_FINDING_INDEX[name]] = 1.0
    return tuple(vector)


def _open_text(path: Path) -> io.TextIOBase:
    return gzip.open(path, "rt", encoding="utf-8", newline="") if path.suffix == ".gz" else open(path, newline="")


def _parse_age(text: str, where: str) -> int:
    """Ages are integers in the 2020 table and strings like '058Y' in some older copies."""
    value = text.strip().upper().rstrip("Y")
    if not value.isdigit():
        raise ValueError(f"cannot read patient age {text!r} ({where})")
    return int(value)


def read_nih_table(path: Path | str) -> list[NIHRecord]:
    """Parse `Data_Entry_2017[_v2020].csv[.gz]`, validating every row; errors name the line.

    Columns are taken by position (NIH's header splits `OriginalImage[Width,Height]` over two columns and the
    2017 table has a trailing empty column), after checking the header is the one NIH ships.

    Raises `ValueError` when the header is not NIH's Data_Entry header, and naming the file and line for a row with
    fewer than 11 columns, an image listed twice, a `Finding Labels` value `parse_finding_labels` refuses, an age
    that is not a number (optionally ending in Y), or another number column (follow-up, patient id, sizes,
    spacing) that does not parse; `FileNotFoundError` when `path` does not exist.
    """
    path = Path(path)
    records: list[NIHRecord] = []
    with _open_text(path) as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        expected = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender"]
        if header is None or [column.strip() for column in header[:6]] != expected:
            raise ValueError(f"'{path}' is not NIH's Data_Entry table (header {header})")
        seen: set[str] = set()
        for line_number, row in enumerate(reader, start=2):
            if not row:
                continue
            where = f"'{path}' line {line_number}"
            if len(row) < 11:
                raise ValueError(f"{where}: expected at least 11 columns, got {len(row)}")
            image_id = row[0].strip()
            if image_id in seen:
                raise ValueError(f"{where}: image {image_id} listed twice")
            seen.add(image_id)
            try:
                records.append(
                    NIHRecord(
                        image_id=image_id,
                        finding_labels=row[1].strip(),
                        labels=parse_finding_labels(row[1], where),
                        follow_up=int(row[2]),
                        patient_id=int(row[3]),
                        patient_age=_parse_age(row[4], where),
                        patient_sex=row[5].strip(),
                        view_position=row[6].strip(),
                        acquisition_width=int(float(row[7])),
                        acquisition_height=int(float(row[8])),
                        acquisition_pixel_spacing=(float(row[9]), float(row[10])),
                    )
                )
            except ValueError as error:
                message = str(error)
                raise ValueError(message if where in message else f"{where}: {message}") from error
    return records


def read_nih_bboxes(path: Path | str) -> dict[str, list[NIHBox]]:
    """Parse `BBox_List_2017.csv[.gz]` into image id -> boxes (finding names as in the label table). Raises
    `ValueError` when the header is not NIH's BBox_List header, naming the line for a finding outside
    `CHESTXRAY14_LABELS` (after NIH's spelling is mapped), and (unnamed, from Python) for a coordinate that is
    missing or not a number; `FileNotFoundError` when `path` does not exist."""
    path = Path(path)
    boxes: dict[str, list[NIHBox]] = {}
    with _open_text(path) as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or [column.strip() for column in header[:2]] != ["Image Index", "Finding Label"]:
            raise ValueError(f"'{path}' is not NIH's BBox_List table (header {header})")
        for line_number, row in enumerate(reader, start=2):
            if not row:
                continue
            finding = _BBOX_FINDING_NAMES.get(row[1].strip(), row[1].strip())
            if finding not in _FINDING_INDEX:
                raise ValueError(f"'{path}' line {line_number}: unknown finding {row[1]!r}")
            x, y, width, height = (float(value) for value in row[2:6])
            boxes.setdefault(row[0].strip(), []).append(NIHBox(finding, x, y, width, height))
    return boxes


def _find_first(root: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        for candidate in (root / name, root / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def index_images(root: Path) -> dict[str, Path]:
    """Image file name -> path, from `images/` and `images_NNN/images/`. Raises `ValueError` naming both paths when
    one file name is found in two places."""
    folders = [root / "images", *sorted(root.glob("images_*/images")), *sorted(root.glob("images_*"))]
    index: dict[str, Path] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        with os.scandir(folder) as entries:
            for entry in entries:
                if not entry.name.lower().endswith(".png") or not entry.is_file():
                    continue
                if entry.name in index and index[entry.name] != Path(entry.path):
                    raise ValueError(f"image {entry.name} found twice: '{index[entry.name]}' and '{entry.path}'")
                index[entry.name] = Path(entry.path)
    return index


def _read_list(path: Path) -> list[str]:
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    duplicates = [name for name, count in Counter(names).items() if count > 1]
    if duplicates:
        raise ValueError(f"'{path}' lists images more than once: {list_message(duplicates)}")
    return names


def _example(item: _Item, image_size: int | None, image_format: str) -> dict[str, Any]:
    """One example: the image read, resized and encoded (`stored_image`; `BadFileError` for an unreadable file), its
    table row, and its boxes rescaled to the stored image. Runs in the conversion's worker processes."""
    stored = stored_image(Path(item.path), image_size, image_format)
    record = item.record
    scale_x = stored.width / BBOX_COORDINATE_SIZE
    scale_y = stored.height / BBOX_COORDINATE_SIZE
    return {
        "image": {"bytes": stored.data, "path": None},
        "image_id": record.image_id,
        "labels": list(record.labels),
        "finding_labels": record.finding_labels,
        "patient_id": record.patient_id,
        "follow_up": record.follow_up,
        "patient_age": record.patient_age,
        "patient_sex": record.patient_sex,
        "view_position": record.view_position,
        "original_width": stored.original_width,
        "original_height": stored.original_height,
        "acquisition_width": record.acquisition_width,
        "acquisition_height": record.acquisition_height,
        "acquisition_pixel_spacing": list(record.acquisition_pixel_spacing),
        "bboxes": [
            {
                "finding": box.finding,
                "x": box.x * scale_x,
                "y": box.y * scale_y,
                "width": box.width * scale_x,
                "height": box.height * scale_y,
            }
            for box in item.boxes
        ],
    }


def _splits_description(settings: dict[str, Any]) -> str:
    """The card's account of how the splits were made (so a number can always be tied to its protocol)."""
    seed, validation = settings["seed"], settings["validation_fraction"]
    if settings["split_protocol"] == "official":
        return (
            "- Protocol: **official NIH lists**.\n"
            "- `test`: NIH's official `test_list.txt`.\n"
            "- `train` / `validation`: NIH's official `train_val_list.txt`, divided **by patient** (no patient in "
            f"two splits; checked by the converter): {validation} of the patients go to `validation`, seed {seed}."
        )
    test = settings["test_fraction"]
    which = "Every listed image" if settings.get("from_lists", True) else "The download had no split lists: every image"
    return (
        f"- Protocol: **seeded random patient split, NOT the official NIH lists**. {which} was re-assigned "
        f"by patient: {1 - validation - test:.2f} train, {validation} validation, {test} test (seed {seed}); no "
        "patient in two splits. Results on this `test` split are not comparable with official-list results."
    )


def _summarize(
    dataset: datasets.DatasetDict, skipped: list[dict[str, str]], settings: dict[str, Any], left_out: int
) -> tuple[dict[str, Any], str]:
    counts: dict[str, dict[str, int]] = {}
    boxes: Counter = Counter()
    images_with_boxes = 0
    for split, part in dataset.items():
        for image_boxes in part.data.column("bboxes").to_pylist():
            boxes.update(box["finding"] for box in image_boxes)
            images_with_boxes += bool(image_boxes)
        labels = np.asarray(part.data.column("labels").to_pylist(), dtype=np.float32).reshape(-1, 14)
        patients = len(set(part.data.column("patient_id").to_pylist()))
        counts[split] = {"images": part.num_rows, "patients": patients, "No Finding": int((labels.sum(1) == 0).sum())}
        counts[split].update({name: int(labels[:, i].sum()) for i, name in enumerate(CHESTXRAY14_LABELS)})
    report = SOURCE.report(settings, counts, skipped, images_in_table_but_in_no_official_list=left_out)
    splits = list(counts)
    rows = [[name, *(counts[split][name] for split in splits)] for name in ("images", "patients", "No Finding")]
    rows += [[name, *(counts[split][name] for split in splits)] for name in CHESTXRAY14_LABELS]
    table = markdown_table(["", *splits], rows)
    print_conversion_summary("ChestX-ray14", settings, table, skipped)
    total = sum(count["images"] for count in counts.values())
    if boxes:
        box_text = (
            f"{sum(boxes.values())} box(es) on {images_with_boxes} of the converted images, {len(boxes)} finding(s) "
            f"({', '.join(f'{name} {count}' for name, count in sorted(boxes.items()))})"
        )
    else:
        box_text = "none of the converted images has a box in the box list"
    card = render_image_dataset_card(
        SOURCE, "dataset_chestxray14.md", _FALLBACK_CARD, settings, total, skipped, CHESTXRAY14_LABELS,
        counts_table=table, table_name=settings.get("table", "the Data_Entry table"), boxes_description=box_text,
        splits_description=_splits_description(settings), left_out=left_out,
    )  # fmt: skip
    return report, card


_FALLBACK_CARD = """# NIH ChestX-ray14 ($total_images images)

$research_use

Findings (order of `labels`): $labels. Images stored with the shorter side at $image_size px;
$left_out table rows are in neither split list. Boxes: $boxes_description.

$splits_description

$counts_table

$skipped_section

Source: NIH Clinical Center, $homepage. Cite: $citation
"""


def convert_chestxray14(
    root: Path | str,
    out_dir: Path | str | None = None,
    *,
    image_size: int | None = DEFAULT_IMAGE_SIZE,
    image_format: str = "png",
    num_proc: int | None = None,
    seed: int = 0,
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
    skip_bad: bool = False,
    overwrite: bool = False,
    split_protocol: str = "official",
    test_fraction: float = DEFAULT_RANDOM_TEST_FRACTION,
) -> ConversionResult:
    """Convert a raw ChestX-ray14 download into a `DatasetDict` (train/validation/test) saved at `out_dir`.

    Returns a `ConversionResult`: `.dataset` is the `DatasetDict` as `datasets.load_from_disk(out_dir)` reads it,
    with `.out_dir`, `.skipped` and `.report`. `out_dir` None writes to a fresh folder in the `datasets` cache.

    `image_size`: the stored shorter side in px (None keeps NIH's 1024 px); store at the size a recipe trains at
    (e.g. 224): training reads each image at the model's size before augmenting it. `image_format`: "png" (portable, the
    default) or "raw" (uncompressed image files, faster to read; see `hf_cxr.data.storage.IMAGE_FORMATS`); both are
    read by `datasets.Image` without being told. `num_proc`: worker processes that read and resize images (None or
    1: in this process). `skip_bad` skips unreadable images instead of failing, listing each one in the card and
    `skipped_files.txt`. `split_protocol`: "official" (NIH's test list is `test`; train/validation divide the
    train_val patients, `validation_fraction` of them to validation) or "random_patient" (every listed image
    re-split by patient with `test_fraction` and `validation_fraction`, seeded; with neither list in `root`, every
    image of the table).

    Raises `FileExistsError` for an existing `out_dir` without `overwrite` (before reading anything),
    `FileNotFoundError`/`MissingFilesError` for a missing table, list or image, `PatientLeakError` for a patient in
    two splits, `BadFileError` naming an unreadable image (without `skip_bad`), and `ValueError` for bad arguments
    or a table that is not NIH's.
    """
    out_dir = SOURCE.out_dir(out_dir, overwrite)
    root = Path(root).expanduser()
    if split_protocol not in SPLIT_PROTOCOLS:
        raise ValueError(f"split_protocol must be one of {SPLIT_PROTOCOLS}, got {split_protocol!r}")
    if split_protocol == "random_patient" and not 0.0 < test_fraction < 1.0 - validation_fraction:
        raise ValueError(f"test_fraction must lie in (0, 1 - validation_fraction), got {test_fraction}")
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must lie in [0, 1), got {validation_fraction}")
    check_storage_options(image_size, image_format)
    check_num_proc(num_proc)
    table_path = _find_first(root, TABLE_NAMES)
    if table_path is None:
        raise FileNotFoundError(f"no {' or '.join(TABLE_NAMES)} in '{root}'")
    missing_lists = [name for name in (TRAIN_VAL_LIST, TEST_LIST) if not (root / name).is_file()]
    # "random_patient" re-splits the listed images, or, when the download has neither list, every image of the table.
    if missing_lists and (split_protocol == "official" or len(missing_lists) == 1):
        hint = " (NIH ships both; without them, split_protocol 'random_patient' re-splits the table's images)"
        raise MissingFilesError(f"official split list(s) in '{root}'{hint}", missing_lists)
    records = {record.image_id: record for record in read_nih_table(table_path)}
    bbox_path = _find_first(root, (BBOX_NAME,))
    boxes = read_nih_bboxes(bbox_path) if bbox_path else {}
    if missing_lists:
        lists = {"train_val": list(records), "test": []}
    else:
        lists = {"train_val": _read_list(root / TRAIN_VAL_LIST), "test": _read_list(root / TEST_LIST)}

    unknown = [name for names in lists.values() for name in names if name not in records]
    if unknown:
        raise ValueError(f"{len(unknown)} listed images are not in '{table_path}': {list_message(unknown)}")
    in_both = set(lists["train_val"]) & set(lists["test"])
    if in_both:
        raise ValueError(f"{len(in_both)} images are in both official lists: {list_message(sorted(in_both))}")
    patients_of = {name: [records[image].patient_id for image in images] for name, images in lists.items()}
    check_patients_disjoint(patients_of)
    unknown_boxes = sorted(set(boxes) - set(records))
    if unknown_boxes:
        raise ValueError(f"'{bbox_path}' has boxes for images not in the table: {list_message(unknown_boxes)}")

    image_index = index_images(root)
    missing = [name for images in lists.values() for name in images if name not in image_index]
    if missing:
        raise MissingFilesError(f"listed images (looked in '{root}/images' and '{root}/images_*/images')", missing)

    if split_protocol == "official":
        # NIH's test list is `test`; train and validation split the train_val patients.
        pool, fractions = lists["train_val"], {"train": 1.0 - validation_fraction, "validation": validation_fraction}
        split_images: dict[str, list[str]] = {"train": [], "validation": [], "test": list(lists["test"])}
    else:
        # Every listed image re-assigned by patient (what many papers did instead of the official lists; its test
        # split is easier than NIH's, so results on it are not comparable with official-list results).
        pool = [*lists["train_val"], *lists["test"]]
        fractions = {"train": 1.0 - validation_fraction - test_fraction, "validation": validation_fraction,
                     "test": test_fraction}  # fmt: skip
        split_images = {"train": [], "validation": [], "test": []}
    patients = sorted({records[image].patient_id for image in pool})
    assignment = split_by_patient({str(patient): "all" for patient in patients}, fractions, seed)
    for image in pool:
        split_images[assignment[str(records[image].patient_id)]].append(image)
    check_patients_disjoint({split: [records[i].patient_id for i in images] for split, images in split_images.items()})

    items = {
        split: [_Item(str(image_index[name]), records[name], boxes.get(name, [])) for name in sorted(images)]
        for split, images in split_images.items()
    }
    left_out = len(records) - len(lists["train_val"]) - len(lists["test"])
    settings = {
        "image_size": image_size,
        "image_format": image_format,
        "seed": seed,
        "validation_fraction": validation_fraction,
        "split_protocol": split_protocol,
        "test_fraction": test_fraction if split_protocol == "random_patient" else None,
        "from_lists": not missing_lists,
        "skip_bad": skip_bad,
        "table": table_path.name,
    }
    return generate_dataset_dict(
        out_dir,
        items,
        partial(_example, image_size=image_size, image_format=image_format),
        FEATURES,
        SOURCE.info(),
        num_proc=num_proc,
        writer_batch_size=200,
        summarize=lambda dataset, skipped: _summarize(dataset, skipped, settings, left_out),
        skip_bad=skip_bad,
        description="ChestX-ray14 images",
        overwrite=overwrite,
    )
