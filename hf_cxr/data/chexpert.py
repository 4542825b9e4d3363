"""Stanford CheXpert (raw download -> `datasets.DatasetDict`).

Raw layout as Stanford ships it: `root` is `CheXpert-v1.0-small/` or `CheXpert-v1.0/`, holding `train.csv`,
`valid.csv` (and, when present, the test labels `test_labels.csv` or `test.csv`) plus the JPEGs under
`train/patientNNNNN/studyN/viewN_frontal.jpg`. CSV paths are relative to the root's parent
(`CheXpert-v1.0-small/train/...`); a renamed root folder and root-relative paths (`test/...`) are found too.

Labels: 1 positive, 0 negative, blank = 0 (not mentioned), -1 uncertain, resolved by `uncertain`:
`ones` (U-Ones), `zeros` (U-Zeros) or `ignore` (label set to `IGNORE_LABEL`, -100, and 0 in `label_mask`,
so the hf-cxr losses skip it). The raw uncertainty is kept in `uncertain` whatever the policy.
The splits are Stanford's: train, validation (`valid.csv`) and test; no patient may be in two of them.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
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
    markdown_table,
)
from hf_cxr.data.storage import (
    check_storage_options,
    print_conversion_summary,
    render_image_dataset_card,
    stored_image,
)
from hf_cxr.labels import CHESTXRAY14_LABELS, CHESTXRAY14_TO_CHEXPERT, CHEXPERT_LABELS
from hf_cxr.losses import IGNORE_LABEL

UNCERTAIN_POLICIES = ("ones", "zeros", "ignore")
SPLIT_FILES = {"train": ("train.csv",), "validation": ("valid.csv",), "test": ("test_labels.csv", "test.csv")}
DEFAULT_IMAGE_SIZE = 512
_PATH_PATTERN = re.compile(r"(patient\d+)/study(\d+)/view(\d+)_(frontal|lateral)", re.IGNORECASE)

HOMEPAGE = "https://stanfordmlgroup.github.io/competitions/chexpert/"
CITATION = (
    "Irvin J, Rajpurkar P, Ko M, et al. CheXpert: A Large Chest Radiograph Dataset with Uncertainty Labels and "
    "Expert Comparison. AAAI 2019, 33(01):590-597."
)
LICENSE = "Stanford University School of Medicine CheXpert Dataset Research Use Agreement (no redistribution)"
SOURCE = DatasetSource("chexpert", "CheXpert converted locally by hf-cxr.", HOMEPAGE, CITATION, LICENSE)

FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "path": datasets.Value("string"),
        "labels": datasets.List(datasets.Value("float32"), length=len(CHEXPERT_LABELS)),
        "label_mask": datasets.List(datasets.Value("float32"), length=len(CHEXPERT_LABELS)),
        "uncertain": datasets.List(datasets.Value("bool"), length=len(CHEXPERT_LABELS)),
        "patient_id": datasets.Value("string"),
        "study_id": datasets.Value("int32"),
        "view_id": datasets.Value("int32"),
        "frontal_lateral": datasets.Value("string"),
        "ap_pa": datasets.Value("string"),
        "sex": datasets.Value("string"),
        "age": datasets.Value("int32"),
        "original_width": datasets.Value("int32"),
        "original_height": datasets.Value("int32"),
    }
)


@dataclass(frozen=True)
class CheXpertRecord:
    """One CSV row: the raw label values (1, 0, -1, or None for blank) and the metadata."""

    path: str
    raw_labels: tuple[float | None, ...]
    patient_id: str
    study_id: int
    view_id: int
    frontal_lateral: str
    ap_pa: str
    sex: str
    age: int


def shared_finding_columns() -> tuple[list[str], list[int], list[int]]:
    """For cross-dataset evaluation (a ChestX-ray14 model scored on CheXpert without retraining).

    Returns (ChestX-ray14 names, their column indices in a ChestX-ray14 model's logits, the matching column
    indices in this dataset's `labels`), for exactly the findings both label sets share
    (`hf_cxr.labels.CHESTXRAY14_TO_CHEXPERT`): score `logits[:, nih]` against `labels[:, chexpert]`.
    """
    names = [name for name in CHESTXRAY14_LABELS if name in CHESTXRAY14_TO_CHEXPERT]
    nih = [CHESTXRAY14_LABELS.index(name) for name in names]
    chexpert = [CHEXPERT_LABELS.index(CHESTXRAY14_TO_CHEXPERT[name]) for name in names]
    return names, nih, chexpert


def _parse_label(text: str, where: str) -> float | None:
    value = text.strip()
    if value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if number not in (1.0, 0.0, -1.0):
        raise ValueError(f"{where}: label value {text!r} is not 1, 0, -1 or blank")
    return number


def resolve_labels(raw: tuple[float | None, ...], uncertain: str) -> tuple[list[float], list[float], list[bool]]:
    """(labels, label_mask, uncertain flags) for one row under an uncertainty policy (see the module doc). Raises
    `ValueError` for an `uncertain` policy not in `UNCERTAIN_POLICIES`."""
    if uncertain not in UNCERTAIN_POLICIES:
        raise ValueError(f"uncertain must be one of {UNCERTAIN_POLICIES}, got {uncertain!r}")
    labels, mask, flags = [], [], []
    for value in raw:
        is_uncertain = value == -1.0
        flags.append(is_uncertain)
        if not is_uncertain:
            labels.append(float(value or 0.0))
            mask.append(1.0)
        elif uncertain == "ignore":
            labels.append(IGNORE_LABEL)
            mask.append(0.0)
        else:
            labels.append(1.0 if uncertain == "ones" else 0.0)
            mask.append(1.0)
    return labels, mask, flags


def read_chexpert_csv(path: Path | str) -> list[CheXpertRecord]:
    """Parse a CheXpert label CSV; every finding column must be present, values 1/0/-1/blank.

    Raises `ValueError` when `Path` or a `CHEXPERT_LABELS` column is missing (listing them), and naming the file and
    line for a `Path` not of the form patientNNNNN/studyN/viewN_frontal|lateral or a label value other than 1, 0, -1
    or blank (an `Age` that is not a number raises `float`'s own `ValueError`); `FileNotFoundError` when `path`
    does not exist.
    """
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        missing = [name for name in ("Path", *CHEXPERT_LABELS) if name not in columns]
        if missing:
            raise ValueError(f"'{path}' lacks CheXpert columns {missing} (has {columns})")
        records = []
        for line_number, row in enumerate(reader, start=2):
            where = f"'{path}' line {line_number}"
            match = _PATH_PATTERN.search(row["Path"])
            if match is None:
                raise ValueError(f"{where}: path {row['Path']!r} is not patientNNNNN/studyN/viewN_frontal|lateral")
            age_text = (row.get("Age") or "").strip()
            records.append(
                CheXpertRecord(
                    path=row["Path"].strip(),
                    raw_labels=tuple(_parse_label(row[name], f"{where}, {name}") for name in CHEXPERT_LABELS),
                    patient_id=match.group(1),
                    study_id=int(match.group(2)),
                    view_id=int(match.group(3)),
                    frontal_lateral=(row.get("Frontal/Lateral") or match.group(4).capitalize()).strip(),
                    ap_pa=(row.get("AP/PA") or "").strip(),
                    sex=(row.get("Sex") or "").strip(),
                    age=int(float(age_text)) if age_text else -1,
                )
            )
    return records


def resolve_image_path(root: Path, relative: str) -> Path | None:
    """The file a CSV path names: relative to root's parent (Stanford's layout), or to root itself."""
    parts = Path(relative).parts
    for candidate in (root.parent / relative, root / relative, root.joinpath(*parts[1:]) if len(parts) > 1 else None):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def _example(
    item: tuple[str, CheXpertRecord], image_size: int | None, image_format: str, uncertain: str
) -> dict[str, Any]:
    """One example: the image read, resized and encoded (`stored_image`; `BadFileError` for an unreadable file) and
    its CSV row under the uncertainty policy. Runs in the conversion's worker processes."""
    path, record = item
    stored = stored_image(Path(path), image_size, image_format)
    labels, mask, flags = resolve_labels(record.raw_labels, uncertain)
    return {
        "image": {"bytes": stored.data, "path": None},
        "path": record.path,
        "labels": labels,
        "label_mask": mask,
        "uncertain": flags,
        "patient_id": record.patient_id,
        "study_id": record.study_id,
        "view_id": record.view_id,
        "frontal_lateral": record.frontal_lateral,
        "ap_pa": record.ap_pa,
        "sex": record.sex,
        "age": record.age,
        "original_width": stored.original_width,
        "original_height": stored.original_height,
    }


def _summarize(
    dataset: datasets.DatasetDict, skipped: list[dict[str, str]], settings: dict[str, Any], laterals_dropped: int
) -> tuple[dict[str, Any], str]:
    counts: dict[str, dict[str, Any]] = {}
    for split, part in dataset.items():
        labels = np.asarray(part.data.column("labels").to_pylist(), dtype=np.float32).reshape(-1, 14)
        flags = np.asarray(part.data.column("uncertain").to_pylist(), dtype=bool).reshape(-1, 14)
        positive = (labels == 1.0) & ~flags  # before the uncertainty policy
        counts[split] = {
            "images": part.num_rows,
            "patients": len(set(part.data.column("patient_id").to_pylist())),
            "frontal": sum(view == "Frontal" for view in part.data.column("frontal_lateral").to_pylist()),
            "positive": {name: int(positive[:, i].sum()) for i, name in enumerate(CHEXPERT_LABELS)},
            "uncertain": {name: int(flags[:, i].sum()) for i, name in enumerate(CHEXPERT_LABELS)},
        }
    report = SOURCE.report(settings, counts, skipped, lateral_images_left_out=laterals_dropped)
    splits = list(counts)
    rows = [[name, *(counts[split][name] for split in splits)] for name in ("images", "patients", "frontal")]
    rows += [
        [name, *(f"{counts[s]['positive'][name]} / {counts[s]['uncertain'][name]}" for s in splits)]
        for name in CHEXPERT_LABELS
    ]
    table = markdown_table(["(positive / uncertain)", *splits], rows)
    print_conversion_summary("CheXpert", settings, table, skipped, f"uncertain={settings['uncertain']}")
    total = sum(count["images"] for count in counts.values())
    card = render_image_dataset_card(
        SOURCE, "dataset_chexpert.md", _FALLBACK_CARD, settings, total, skipped, CHEXPERT_LABELS,
        counts_table=table, uncertain=settings["uncertain"], laterals_dropped=laterals_dropped,
        frontal_only="yes" if settings["frontal_only"] else "no",
    )  # fmt: skip
    return report, card


_FALLBACK_CARD = """# CheXpert ($total_images images, converted locally)

$research_use Licence: $license. Do not redistribute.

Findings (order of `labels`): $labels. Uncertain labels: $uncertain. Frontal only: $frontal_only
($laterals_dropped lateral images left out). Shorter side stored at $image_size px.

$counts_table

$skipped_section

Source: $homepage. Cite: $citation
"""


def convert_chexpert(
    root: Path | str,
    out_dir: Path | str | None = None,
    *,
    uncertain: str = "ignore",
    frontal_only: bool = False,
    image_size: int | None = DEFAULT_IMAGE_SIZE,
    image_format: str = "png",
    num_proc: int | None = None,
    skip_bad: bool = False,
    overwrite: bool = False,
) -> ConversionResult:
    """Convert a CheXpert download into a `DatasetDict` (train/validation[/test]) saved at `out_dir`.

    Returns a `ConversionResult`: `.dataset` is the `DatasetDict` as `datasets.load_from_disk(out_dir)` reads it,
    with `.out_dir`, `.skipped` and `.report`. `out_dir` None writes to a fresh folder in the `datasets` cache.

    `uncertain` resolves -1 labels (`ones`, `zeros`, `ignore`); `frontal_only` leaves out lateral views (the number
    is reported); images larger than `image_size` px (shorter side) are downsized, smaller ones are stored
    unchanged (in "png"). `image_format`: "png" (portable, the default; resized JPEGs stay JPEG) or "raw"
    (uncompressed image files, faster to read); both are read by `datasets.Image` without being told. `num_proc`:
    worker processes that read and resize images (None or 1: in this process). `skip_bad` skips unreadable images,
    listing each one in the card and `skipped_files.txt`.

    Raises `FileExistsError` for an existing `out_dir` without `overwrite` (before reading anything),
    `FileNotFoundError`/`MissingFilesError` for a missing CSV or image, `PatientLeakError` for a patient in two
    splits, `BadFileError` naming an unreadable image (without `skip_bad`), and `ValueError` for bad arguments or
    label values.
    """
    out_dir = SOURCE.out_dir(out_dir, overwrite)
    root = Path(root).expanduser()
    if uncertain not in UNCERTAIN_POLICIES:
        raise ValueError(f"uncertain must be one of {UNCERTAIN_POLICIES}, got {uncertain!r}")
    check_storage_options(image_size, image_format)
    check_num_proc(num_proc)
    split_records: dict[str, list[CheXpertRecord]] = {}
    for split, names in SPLIT_FILES.items():
        found = next((root / name for name in names if (root / name).is_file()), None)
        if found is not None:
            split_records[split] = read_chexpert_csv(found)
        elif split != "test":
            raise FileNotFoundError(f"no {names[0]} in '{root}' (expected Stanford's CheXpert layout)")
    check_patients_disjoint({split: [r.patient_id for r in records] for split, records in split_records.items()})

    laterals_dropped = 0
    if frontal_only:
        for split, records in split_records.items():
            kept = [record for record in records if record.frontal_lateral.lower() == "frontal"]
            laterals_dropped += len(records) - len(kept)
            split_records[split] = kept

    items: dict[str, list[tuple[str, CheXpertRecord]]] = {}
    missing: list[str] = []
    for split, records in split_records.items():
        items[split] = []
        for record in records:
            path = resolve_image_path(root, record.path)
            if path is None:
                missing.append(record.path)
            else:
                items[split].append((str(path), record))
    if missing:
        raise MissingFilesError(f"images listed in the CSVs (looked under '{root.parent}' and '{root}')", missing)

    settings = {
        "uncertain": uncertain,
        "frontal_only": frontal_only,
        "image_size": image_size,
        "image_format": image_format,
        "skip_bad": skip_bad,
    }
    return generate_dataset_dict(
        out_dir,
        items,
        partial(_example, image_size=image_size, image_format=image_format, uncertain=uncertain),
        FEATURES,
        SOURCE.info(),
        num_proc=num_proc,
        writer_batch_size=200,
        summarize=lambda dataset, skipped: _summarize(dataset, skipped, settings, laterals_dropped),
        skip_bad=skip_bad,
        description="CheXpert images",
        overwrite=overwrite,
    )
