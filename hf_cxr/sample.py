"""The real NIH ChestX-ray14 sample bundled with the package (the demo's default data).

A labelled folder is `images/*.png` plus `labels.csv` in the sample's format: NIH's `Data_Entry_2017` columns
and one 0/1 column per ChestX-ray14 finding. Full datasets go through `hf-cxr convert` instead.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import datasets

from hf_cxr.labels import CHESTXRAY14_LABELS

SAMPLE_DIR = Path(__file__).parent / "assets" / "nih_cxr14_sample"


def load_labelled_folder(folder: str | Path = SAMPLE_DIR) -> datasets.Dataset:
    """`image` (Image), `labels` (14 float32 in NIH order), `patient_id`, `image_index` from a labelled folder."""
    folder = Path(folder)
    table = folder / "labels.csv"
    if not table.is_file():
        raise ValueError(f"'{table}': no labels.csv in the labelled folder")
    with table.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    missing_columns = [name for name in ("Image Index", "Patient ID", *CHESTXRAY14_LABELS) if name not in rows[0]]
    if missing_columns:
        raise ValueError(f"'{table}': missing columns {missing_columns}")
    missing_files = [row["Image Index"] for row in rows if not (folder / "images" / row["Image Index"]).is_file()]
    if missing_files:
        raise ValueError(f"'{folder / 'images'}': {len(missing_files)} listed images are missing: {missing_files[:10]}")
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "labels": datasets.List(datasets.Value("float32"), length=len(CHESTXRAY14_LABELS)),
            "patient_id": datasets.Value("int64"),
            "image_index": datasets.Value("string"),
        }
    )
    return datasets.Dataset.from_dict(
        {
            "image": [str(folder / "images" / row["Image Index"]) for row in rows],
            "labels": [[float(row[name]) for name in CHESTXRAY14_LABELS] for row in rows],
            "patient_id": [int(row["Patient ID"]) for row in rows],
            "image_index": [row["Image Index"] for row in rows],
        },
        features=features,
    )


def write_sample_raw_tree(destination: str | Path) -> Path:
    """Lay the bundled sample out as NIH ships ChestX-ray14, so that `hf-cxr convert chestxray14` reads it.

    Writes `Data_Entry_2017_v2020.csv` (the sample's NIH rows) and `images/`. NIH's official `train_val_list.txt`
    and `test_list.txt` cover the full dataset and are not shipped, and no list is written in their place: convert
    the tree with `split_protocol="random_patient"` (`--split-protocol random-patient`), which splits the table's
    images by patient and says so in the dataset card; the default, NIH's official lists, refuses it.
    """
    destination = Path(destination)
    (destination / "images").mkdir(parents=True, exist_ok=True)
    with (SAMPLE_DIR / "labels.csv").open(newline="") as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], rows[1:]
    nih_header = [*header[:7], "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]"]
    with (destination / "Data_Entry_2017_v2020.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(nih_header)
        writer.writerows(row[:11] for row in body)
    for row in body:
        shutil.copyfile(SAMPLE_DIR / "images" / row[0], destination / "images" / row[0])
    return destination
