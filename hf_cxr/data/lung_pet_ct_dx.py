"""TCIA Lung-PET-CT-Dx (raw download -> `datasets.DatasetDict`, one example per CT series).

Raw layout as the archive ships it: `Lung_Dx-XNNNN/<study>/<series>/*.dcm` (folder names with spaces; file
names say nothing about slice order), the annotation XMLs (`Annotation/A0001/<SOPInstanceUID>.xml`, PASCAL VOC)
under `root` or in `annotations_dir`, and the clinical table (xlsx or csv; columns `NewPatientID`, `Sex`, `Age`,
`weight (kg)`, `T-Stage`, `N-Stage`, `Ｍ-Stage`, `Histopathological grading`, `Smoking History`).

Each CT series of 512x512 slices becomes one example: the volume sorted by slice position, in HU (int16), with
its spacing, the lesion slice range and boxes from the XMLs, the encoded clinical features (and their raw
values), and the label from the ID letter (A adenocarcinoma, B small cell, E large cell, G squamous cell).
PET series, localisers and other matrix sizes are skipped and counted. Splits are by patient, seeded and
stratified by class.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import datasets

from hf_cxr.data._common import (
    BadFileError,
    ConversionResult,
    DatasetSource,
    check_num_proc,
    check_patients_disjoint,
    generate_dataset_dict,
    list_message,
    markdown_table,
    render_card,
    size_category,
    skipped_section,
    split_by_patient,
)
from hf_cxr.data.tables import read_table
from hf_cxr.modeling.common.clinical import (
    CLINICAL_FEATURE_NAMES,
    HISTOLOGY,
    encode_clinical,
)
from hf_cxr.modeling.common.ct import read_ct_series, read_series_header

TASKS: dict[str, tuple[str, ...]] = {"ag": ("A", "G"), "abeg": ("A", "B", "E", "G")}
MATRIX_SIZE = 512
DEFAULT_FRACTIONS = {"train": 0.7, "validation": 0.1, "test": 0.2}
_PATIENT_DIR = re.compile(r"Lung_Dx-([A-Z])(\d+)")

# Clinical features (`CLINICAL_FEATURE_NAMES` order) are encoded to [-1, 1] with fixed ranges (not fitted on the
# data, so the encoding does not depend on the split); a missing value is 0 with mask 0. The encoding lives in
# `hf_cxr.modeling.common.clinical`, shared with the MMCAF-Net processor (which must run as Hub remote code).

# Raw column names, after Unicode NFKC (the archive's `Ｍ-Stage` has a full-width M) and lower-casing.
_CLINICAL_COLUMNS = {
    "patient": "newpatientid",
    "sex": "sex",
    "age": "age",
    "weight": "weight (kg)",
    "t_stage": "t-stage",
    "n_stage": "n-stage",
    "m_stage": "m-stage",
    "grading": "histopathological grading",
    "smoking": "smoking history",
}

HOMEPAGE = "https://doi.org/10.7937/TCIA.2020.NNC2-0461"
CITATION = (
    "Li P, Wang S, Li T, Lu J, HuangFu Y, Wang D. A Large-Scale CT and PET/CT Dataset for Lung Cancer Diagnosis "
    "(Lung-PET-CT-Dx). The Cancer Imaging Archive (2020). https://doi.org/10.7937/TCIA.2020.NNC2-0461"
)
LICENSE = "cc-by-4.0 (TCIA data usage policy: do not attempt to re-identify subjects)"
SOURCE = DatasetSource("lung_pet_ct_dx", "Lung-PET-CT-Dx CT series converted by hf-cxr.", HOMEPAGE, CITATION, LICENSE)


def features_for(task: str) -> datasets.Features:
    """The dataset's features; `label` names depend on the task."""
    return datasets.Features(
        {
            "volume": datasets.Array3D(shape=(None, MATRIX_SIZE, MATRIX_SIZE), dtype="int16"),
            "patient_id": datasets.Value("string"),
            "label": datasets.ClassLabel(names=[HISTOLOGY[letter] for letter in TASKS[task]]),
            "histology": datasets.Value("string"),
            "study": datasets.Value("string"),
            "series": datasets.Value("string"),
            "series_instance_uid": datasets.Value("string"),
            "series_description": datasets.Value("string"),
            "num_slices": datasets.Value("int32"),
            "slice_spacing": datasets.Value("float32"),
            "slice_thickness": datasets.Value("float32"),
            "pixel_spacing": datasets.List(datasets.Value("float32"), length=2),
            "slice_positions": datasets.List(datasets.Value("float32")),
            "sop_instance_uids": datasets.List(datasets.Value("string")),
            "lesion_slice_range": datasets.List(datasets.Value("int32"), length=2),
            "boxes": datasets.List(
                {
                    "slice_index": datasets.Value("int32"),
                    "label": datasets.Value("string"),
                    "xmin": datasets.Value("float32"),
                    "ymin": datasets.Value("float32"),
                    "xmax": datasets.Value("float32"),
                    "ymax": datasets.Value("float32"),
                }
            ),
            "clinical_features": datasets.List(datasets.Value("float32"), length=len(CLINICAL_FEATURE_NAMES)),
            "clinical_mask": datasets.List(datasets.Value("float32"), length=len(CLINICAL_FEATURE_NAMES)),
            "sex": datasets.Value("string"),
            "age": datasets.Value("string"),
            "weight_kg": datasets.Value("string"),
            "t_stage": datasets.Value("string"),
            "n_stage": datasets.Value("string"),
            "m_stage": datasets.Value("string"),
            "histopathological_grading": datasets.Value("string"),
            "smoking_history": datasets.Value("string"),
        }
    )


# --------------------------------------------------------------------------------------------- clinical


@dataclass(frozen=True)
class ClinicalRecord:
    """One patient's clinical row: raw texts, and the encoded vector with its mask."""

    raw: dict[str, str]
    features: tuple[float, ...]
    mask: tuple[float, ...]


def short_patient_id(text: str) -> str:
    """'Lung_Dx-A0002' or 'A0002' -> 'A0002' (the clinical table and the folders spell it either way)."""
    return text.strip().removeprefix("Lung_Dx-")


def read_clinical_table(path: Path | str) -> dict[str, ClinicalRecord]:
    """The clinical table (xlsx or csv) -> short patient id -> `ClinicalRecord`.

    Raises `ValueError` as `read_table` does (not .csv/.txt/.xlsx, no rows at all, an unreadable .xlsx), for a table
    without data rows or lacking one of the clinical columns (listing them), and naming the row for an empty
    NewPatientID, a patient listed twice, or a value `encode_clinical` cannot read.
    """
    path = Path(path)
    rows = read_table(path)
    if not rows:
        raise ValueError(f"'{path}': clinical table has no rows")
    columns = {unicodedata.normalize("NFKC", name).strip().lower(): name for name in rows[0]}
    missing = [wanted for wanted in _CLINICAL_COLUMNS.values() if wanted not in columns]
    if missing:
        raise ValueError(f"'{path}': clinical table lacks columns {missing} (has {sorted(rows[0])})")
    records: dict[str, ClinicalRecord] = {}
    for line, row in enumerate(rows, start=2):
        raw = {key: row[columns[column]] for key, column in _CLINICAL_COLUMNS.items()}
        patient = short_patient_id(raw.pop("patient"))
        where = f"'{path}' row {line} ({patient})"
        if not patient:
            raise ValueError(f"'{path}' row {line}: empty NewPatientID")
        if patient in records:
            raise ValueError(f"{where}: patient listed twice")
        features, mask = encode_clinical(raw, where)
        records[patient] = ClinicalRecord(raw, features, mask)
    return records


# --------------------------------------------------------------------------------------------- annotations


def read_voc_boxes(path: Path | str) -> list[dict[str, Any]]:
    """A PASCAL VOC XML (LabelImg) -> boxes `{label, xmin, ymin, xmax, ymax}` in pixels. Raises `ValueError` naming
    the file when it is not well-formed XML, an `<object>` has no `<bndbox>`, or a coordinate is missing or not a
    number; `FileNotFoundError` when `path` does not exist."""
    path = Path(path)
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as error:
        raise ValueError(f"'{path}': not a readable annotation XML ({error})") from error
    boxes = []
    for obj in root.iter("object"):
        box = obj.find("bndbox")
        if box is None:
            raise ValueError(f"'{path}': object without <bndbox>")
        try:
            coords = {key: float(box.findtext(key, "")) for key in ("xmin", "ymin", "xmax", "ymax")}
        except ValueError as error:
            raise ValueError(f"'{path}': box coordinates are not numbers ({error})") from error
        boxes.append({"label": (obj.findtext("name") or "").strip(), **coords})
    return boxes


def index_annotations(folder: Path) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Annotation folder -> patient folder name (A0002) -> SOPInstanceUID -> boxes. Raises `ValueError` as
    `read_voc_boxes` does, naming the XML file it cannot read."""
    index: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(dict)
    for path in sorted(folder.rglob("*.xml")):
        index[path.parent.name][path.stem] = read_voc_boxes(path)
    return dict(index)


def find_annotation_dir(root: Path) -> Path | None:
    """An `Annotation` folder (the archive's name for the XML download) under root, if there is one."""
    for depth_pattern in ("Annotation", "*/Annotation", "*/*/Annotation"):
        found = sorted(path for path in root.glob(depth_pattern) if path.is_dir())
        if found:
            return found[0]
    return None


# --------------------------------------------------------------------------------------------- series


@dataclass
class _SeriesItem:
    """One CT series to convert (cheap to pickle to worker processes)."""

    patient_id: str
    letter: str
    study: str
    series: str
    files: list[str]
    clinical: ClinicalRecord
    annotations: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def find_patient_dirs(root: Path) -> list[Path]:
    """`Lung_Dx-XNNNN` folders at most three levels under root (or root itself)."""
    if _PATIENT_DIR.fullmatch(root.name):
        return [root]
    found: list[Path] = []
    for pattern in ("Lung_Dx-*", "*/Lung_Dx-*", "*/*/Lung_Dx-*"):
        found = sorted(path for path in root.glob(pattern) if path.is_dir() and _PATIENT_DIR.fullmatch(path.name))
        if found:
            break
    return found


def _series_folders(patient_dir: Path) -> list[tuple[Path, list[str]]]:
    folders = []
    for folder, _, files in os.walk(patient_dir):
        dicoms = sorted(os.path.join(folder, name) for name in files if name.lower().endswith(".dcm"))
        if dicoms:
            folders.append((Path(folder), dicoms))
    return sorted(folders)


def _example(item: _SeriesItem, task: str) -> dict[str, Any]:
    """One example: the series read in HU and sorted by slice position (`BadFileError` naming the series folder when
    it cannot be read), its boxes on the sorted slices and its clinical row. Runs in the conversion's workers."""
    try:
        volume = read_ct_series(item.files)
    except (ValueError, OSError) as error:
        raise BadFileError(Path(item.files[0]).parent, str(error)) from error
    slice_of = {uid: index for index, uid in enumerate(volume.sop_instance_uids)}
    boxes = [
        {"slice_index": slice_of[uid], **box}
        for uid, uid_boxes in item.annotations.items()
        if uid in slice_of
        for box in uid_boxes
    ]
    boxes.sort(key=lambda box: (box["slice_index"], box["xmin"], box["ymin"]))
    annotated = [box["slice_index"] for box in boxes]
    raw = item.clinical.raw
    return {
        "volume": volume.hu,
        "patient_id": item.patient_id,
        "label": TASKS[task].index(item.letter),
        "histology": item.letter,
        "study": item.study,
        "series": item.series,
        "series_instance_uid": volume.series_instance_uid,
        "series_description": volume.series_description,
        "num_slices": volume.hu.shape[0],
        "slice_spacing": volume.slice_spacing,
        "slice_thickness": volume.slice_thickness if volume.slice_thickness is not None else float("nan"),
        "pixel_spacing": list(volume.pixel_spacing),
        "slice_positions": volume.positions,
        "sop_instance_uids": volume.sop_instance_uids,
        "lesion_slice_range": [min(annotated), max(annotated)] if annotated else [-1, -1],
        "boxes": boxes,
        "clinical_features": list(item.clinical.features),
        "clinical_mask": list(item.clinical.mask),
        "sex": raw["sex"],
        "age": raw["age"],
        "weight_kg": raw["weight"],
        "t_stage": raw["t_stage"],
        "n_stage": raw["n_stage"],
        "m_stage": raw["m_stage"],
        "histopathological_grading": raw["grading"],
        "smoking_history": raw["smoking"],
    }


def _summarize(
    dataset: datasets.DatasetDict,
    skipped: list[dict[str, str]],
    settings: dict[str, Any],
    series_skipped: Counter,
    patients_left_out: Counter,
    annotation_count: int,
) -> tuple[dict[str, Any], str]:
    names = dataset[next(iter(dataset))].features["label"].names
    counts: dict[str, dict[str, Any]] = {}
    matched = 0
    for split, part in dataset.items():
        labels = part.data.column("label").to_pylist()
        patients = part.data.column("patient_id").to_pylist()
        boxes = part.data.column("boxes").to_pylist()
        matched += sum(len({box["slice_index"] for box in series_boxes}) for series_boxes in boxes)
        counts[split] = {
            "series": part.num_rows,
            "patients": len(set(patients)),
            "series_with_boxes": sum(bool(series_boxes) for series_boxes in boxes),
            **{name: sum(label == index for label in labels) for index, name in enumerate(names)},
        }
    report = SOURCE.report(
        settings,
        counts,
        skipped,
        series_not_converted=dict(series_skipped),
        patients_left_out=dict(patients_left_out),
        annotation_files=annotation_count,
        annotation_files_matched_to_converted_slices=matched,
    )
    splits = list(counts)
    rows = [
        [name, *(counts[split][name] for split in splits)]
        for name in ("series", "patients", "series_with_boxes", *names)
    ]
    table = markdown_table(["", *splits], rows)
    not_converted = ", ".join(f"{reason}: {count}" for reason, count in sorted(series_skipped.items())) or "none"
    left_out = ", ".join(f"{reason}: {count}" for reason, count in sorted(patients_left_out.items())) or "none"
    print(f"Lung-PET-CT-Dx conversion (task {settings['task']}):\n{table}")
    print(f"series not converted: {not_converted}; patients left out: {left_out}")
    print(f"annotation XMLs: {annotation_count}, matched to converted slices: {matched}")
    card = render_card(
        "dataset_lung_pet_ct_dx.md",
        _FALLBACK_CARD,
        counts_table=table,
        total_series=sum(count["series"] for count in counts.values()),
        size_category=size_category(sum(count["series"] for count in counts.values())),
        task=settings["task"],
        classes=", ".join(f"{index} = {name}" for index, name in enumerate(names)),
        fractions=", ".join(f"{split} {share}" for split, share in settings["fractions"].items()),
        seed=settings["seed"],
        series_not_converted=not_converted,
        patients_left_out=left_out,
        annotation_count=annotation_count,
        annotation_matched=matched,
        clinical_features=", ".join(f"`{name}`" for name in CLINICAL_FEATURE_NAMES),
        skipped_section=skipped_section(skipped),
        **SOURCE.card_fields(),
    )
    return report, card


_FALLBACK_CARD = """# Lung-PET-CT-Dx, CT series ($total_series series, task $task)

$research_use Licence: CC BY 4.0; do not attempt to re-identify subjects.

Classes: $classes. Splits by patient ($fractions, seed $seed). Series not converted: $series_not_converted.
Patients left out: $patients_left_out. Annotation XMLs: $annotation_count ($annotation_matched on converted
slices). Clinical features: $clinical_features.

$counts_table

$skipped_section

Source: $homepage. Cite: $citation
"""


def convert_lung_pet_ct_dx(
    root: Path | str,
    clinical: Path | str,
    out_dir: Path | str | None = None,
    *,
    task: str = "abeg",
    annotations_dir: Path | str | None = None,
    seed: int = 0,
    validation_fraction: float = DEFAULT_FRACTIONS["validation"],
    test_fraction: float = DEFAULT_FRACTIONS["test"],
    num_proc: int | None = None,
    skip_bad: bool = False,
    overwrite: bool = False,
) -> ConversionResult:
    """Convert a Lung-PET-CT-Dx download into a `DatasetDict` of CT series saved at `out_dir`.

    Returns a `ConversionResult`: `.dataset` is the `DatasetDict` as `datasets.load_from_disk(out_dir)` reads it,
    with `.out_dir`, `.skipped` and `.report`. `out_dir` None writes to a fresh folder in the `datasets` cache.

    `task`: `ag` (adenocarcinoma vs squamous cell, other patients left out and counted) or `abeg` (four
    classes). `clinical`: the clinical table (.xlsx or .csv); every converted patient must be in it. Splits are by
    patient (`validation_fraction`, `test_fraction`, seeded, stratified by class). `num_proc`: worker processes
    that read the series (None or 1: in this process). `skip_bad` skips unreadable series, listing each one.

    Raises `FileExistsError` for an existing `out_dir` without `overwrite` (before reading anything),
    `FileNotFoundError` when no patient folder (or the given annotations folder) exists, `BadFileError` naming an
    unreadable series (without `skip_bad`), and `ValueError` for bad arguments, a bad clinical table or patients
    missing from it.
    """
    out_dir = SOURCE.out_dir(out_dir, overwrite)
    root = Path(root).expanduser()
    check_num_proc(num_proc)
    if task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
    fractions = {
        "train": 1.0 - validation_fraction - test_fraction,
        "validation": validation_fraction,
        "test": test_fraction,
    }
    if min(fractions.values()) < 0:
        raise ValueError(f"validation_fraction + test_fraction must not exceed 1, got {fractions}")
    clinical_records = read_clinical_table(clinical)
    patient_dirs = find_patient_dirs(root)
    if not patient_dirs:
        raise FileNotFoundError(f"no Lung_Dx-XNNNN patient folders under '{root}'")
    annotation_root = Path(annotations_dir).expanduser() if annotations_dir is not None else find_annotation_dir(root)
    if annotations_dir is not None and not annotation_root.is_dir():
        raise FileNotFoundError(f"annotations folder '{annotation_root}' does not exist")
    annotations = index_annotations(annotation_root) if annotation_root is not None else {}
    annotation_count = sum(len(per_patient) for per_patient in annotations.values())

    series_skipped: Counter = Counter()
    patients_left_out: Counter = Counter()
    missing_clinical: list[str] = []
    unreadable: list[dict[str, str]] = []
    items_by_patient: dict[str, list[_SeriesItem]] = defaultdict(list)
    print(f"reading the series headers of {len(patient_dirs)} patient folders")
    for patient_dir in patient_dirs:
        letter = _PATIENT_DIR.fullmatch(patient_dir.name).group(1)
        if letter not in HISTOLOGY:
            raise ValueError(f"'{patient_dir}': class letter {letter!r} is not one of {sorted(HISTOLOGY)}")
        if letter not in TASKS[task]:
            patients_left_out[f"class {letter} not in task {task}"] += 1
            continue
        short = short_patient_id(patient_dir.name)
        if short not in clinical_records:
            missing_clinical.append(patient_dir.name)
            continue
        for folder, files in _series_folders(patient_dir):
            try:
                header = read_series_header(files[0])
            except ValueError as error:
                if not skip_bad:
                    raise BadFileError(folder, str(error)) from error
                unreadable.append({"path": str(folder), "reason": str(error)})
                continue
            reason = _skip_reason(header)
            if reason:
                series_skipped[reason] += 1
                continue
            items_by_patient[patient_dir.name].append(
                _SeriesItem(
                    patient_id=patient_dir.name,
                    letter=letter,
                    study=folder.parent.name,
                    series=folder.name,
                    files=files,
                    clinical=clinical_records[short],
                    annotations=annotations.get(short, {}),
                )
            )
    if missing_clinical:
        raise ValueError(
            f"{len(missing_clinical)} patients are not in the clinical table '{clinical}': "
            f"{list_message(missing_clinical)}"
        )
    assignment = split_by_patient(
        {patient: series[0].letter for patient, series in items_by_patient.items()}, fractions, seed
    )
    split_items: dict[str, list[_SeriesItem]] = {split: [] for split in fractions}
    for patient, series in sorted(items_by_patient.items()):
        split_items[assignment[patient]].extend(series)
    check_patients_disjoint({split: [item.patient_id for item in items] for split, items in split_items.items()})

    settings = {"task": task, "seed": seed, "fractions": fractions, "skip_bad": skip_bad}
    return generate_dataset_dict(
        out_dir,
        split_items,
        partial(_example, task=task),
        features_for(task),
        SOURCE.info(),
        num_proc=num_proc,
        writer_batch_size=2,
        summarize=lambda dataset, skipped: _summarize(
            dataset, skipped, settings, series_skipped, patients_left_out, annotation_count
        ),
        skip_bad=skip_bad,
        description="Lung-PET-CT-Dx series",
        unit="series",
        overwrite=overwrite,
        already_skipped=unreadable,
    )


def _skip_reason(header: Any) -> str | None:
    """Why a series is not converted (None: convert it)."""
    if header.modality != "CT":
        return f"modality {header.modality or 'unknown'}"
    if "LOCALIZER" in header.image_type:
        return "CT localizer"
    if (header.rows, header.columns) != (MATRIX_SIZE, MATRIX_SIZE):
        return f"CT matrix {header.rows}x{header.columns}"
    return None
