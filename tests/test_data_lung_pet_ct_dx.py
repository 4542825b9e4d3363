"""Lung-PET-CT-Dx converter on a raw tree built from six real slices of patient A0002 (see fixtures)."""

from __future__ import annotations

import csv
import json
import shutil
import zipfile
from pathlib import Path

import datasets
import numpy as np
import pydicom
import pytest
from conftest import FIXTURES
from hf_cxr.modeling.common.ct import read_ct_folder, slice_to_hu
from huggingface_hub import DatasetCard
from pydicom.pixels import apply_modality_lut

from hf_cxr.data import convert_lung_pet_ct_dx
from hf_cxr.data._common import BadFileError
from hf_cxr.data.lung_pet_ct_dx import CLINICAL_FEATURE_NAMES, encode_clinical, read_clinical_table
from hf_cxr.data.tables import read_table

LUNG = FIXTURES / "lung_pet_ct_dx"
STUDY = "04-25-2007-NA-ThoraxAThoraxRoutine Adult-34834"
SERIES = "3.000000-ThoraxRoutine  8.0.0  B40f-10983"
SERIES_DIR = LUNG / "Lung_Dx-A0002" / STUDY / SERIES
# The archive's boxes for these slices (annotations.csv), by ImagePositionPatient z.
BOXES_BY_Z = {
    248.0: (172, 275, 232, 348),
    240.0: (167, 269, 234, 356),
    232.0: (171, 262, 231, 339),
    224.0: (166, 256, 226, 340),
    216.0: (160, 255, 217, 330),
}
CLINICAL_HEADER = [
    "No.",
    "NewPatientID",
    "Sex",
    "Age",
    "weight (kg)",
    "T-Stage",
    "N-Stage",
    "Ｍ-Stage",
    "Histopathological grading",
    "Smoking History",
]
PATIENTS = {
    "A0001": ["M", "63", "70", "2", "0", "0", "G2", "1"],
    "A0002": ["F", "58", "NA", "1b", "2", "1a", "NA", "0"],
    "A0003": ["M", "70", "81", "4", "3", "1", "G3", "1"],
    "B0001": ["M", "66", "60", "3", "2", "1c", "NA", "1"],
    "E0001": ["F", "49", "55", "is", "0", "0", "NA", "0"],
    "G0001": ["M", "72", "66", "2a", "1", "0", "G2", "1"],
    "G0002": ["M", "61", "77", "3", "1", "0", "NA", "1"],
    "G0003": ["F", "55", "58", "1a", "0", "0", "G1", "NA"],
}


def _make_pet_series(folder: Path) -> None:
    """A PET-like series (modality PT, 128x128) made from a real slice, as PET/CT studies contain."""
    folder.mkdir(parents=True)
    for index, source in enumerate(sorted(SERIES_DIR.glob("*.dcm"))[:2]):
        dataset = pydicom.dcmread(source)
        dataset.Modality = "PT"
        small = dataset.pixel_array[::4, ::4].copy()
        dataset.Rows, dataset.Columns = small.shape
        dataset.PixelData = small.tobytes()
        dataset.SeriesInstanceUID = dataset.SeriesInstanceUID[:-2] + "99"
        dataset.save_as(folder / f"1-{index + 1:02d}.dcm")


def _write_clinical_csv(path: Path, patients: dict[str, list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CLINICAL_HEADER)
        for number, (patient, values) in enumerate(patients.items(), start=1):
            writer.writerow([number, f"Lung_Dx-{patient}", *values])
    return path


@pytest.fixture(scope="module")
def raw_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The archive's layout: 8 patients (copies of the real A0002 series), one with an extra PET series."""
    root = tmp_path_factory.mktemp("lung") / "Lung-PET-CT-Dx"
    for patient in PATIENTS:
        shutil.copytree(SERIES_DIR, root / f"Lung_Dx-{patient}" / STUDY / SERIES)
    _make_pet_series(root / "Lung_Dx-A0002" / "04-25-2007-NA-PET01PTheadlung Adult-08981" / "4.000000-PET-77.0")
    shutil.copytree(LUNG / "Annotation", root / "Annotation")
    _write_clinical_csv(root.parent / "clinical.csv", PATIENTS)
    return root


@pytest.fixture(scope="module")
def converted(raw_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[datasets.DatasetDict, Path]:
    out = tmp_path_factory.mktemp("out") / "lung_abeg"
    dataset = convert_lung_pet_ct_dx(raw_tree, raw_tree.parent / "clinical.csv", out, task="abeg", seed=0).dataset
    return dataset, out


def test_ct_series_sorted_by_position_in_hu() -> None:
    volume = read_ct_folder(SERIES_DIR)
    assert volume.hu.dtype == np.int16 and volume.hu.shape == (6, 512, 512)
    assert volume.positions == [216.0, 224.0, 232.0, 240.0, 248.0, 256.0]  # files 1-13 ... 1-08
    assert Path(volume.files[0]).name == "1-13.dcm" and Path(volume.files[-1]).name == "1-08.dcm"
    assert volume.slice_spacing == pytest.approx(8.0)
    assert volume.pixel_spacing == pytest.approx((0.646484375, 0.646484375))
    stored = pydicom.dcmread(SERIES_DIR / "1-13.dcm").pixel_array.astype(np.int32)
    np.testing.assert_array_equal(volume.hu[0].astype(np.int32), stored - 1024)  # slope 1, intercept -1024
    assert volume.hu.min() == -1024 and volume.hu.max() > 1000  # air and bone


def test_ct_slice_to_hu_is_pydicoms_modality_lut_with_empty_rescale_as_identity() -> None:
    dataset = pydicom.dcmread(SERIES_DIR / "1-13.dcm")
    stored = dataset.pixel_array.astype(np.int32)
    expected = np.rint(apply_modality_lut(dataset.pixel_array, dataset)).astype(np.int32)
    np.testing.assert_array_equal(slice_to_hu(dataset, "'1-13.dcm'").astype(np.int32), expected)
    dataset.RescaleSlope, dataset.RescaleIntercept = None, None  # present but empty: the identity
    np.testing.assert_array_equal(slice_to_hu(dataset, "'1-13.dcm'").astype(np.int32), stored)
    dataset.RescaleSlope = 0  # not silently replaced by 1
    with pytest.raises(ValueError, match=r"1-13\.dcm.*RescaleSlope is 0"):
        slice_to_hu(dataset, "'1-13.dcm'")


def test_conversion_layout_labels_and_counts(converted: tuple[datasets.DatasetDict, Path]) -> None:
    _, out = converted
    reloaded = datasets.load_from_disk(str(out))
    assert set(reloaded) == {"train", "validation", "test"}
    assert sum(part.num_rows for part in reloaded.values()) == len(PATIENTS)  # one CT series each; PET skipped
    names = reloaded["train"].features["label"].names
    assert names == ["adenocarcinoma", "small_cell_carcinoma", "large_cell_carcinoma", "squamous_cell_carcinoma"]
    for part in reloaded.values():
        for patient, label, letter in zip(part["patient_id"], part["label"], part["histology"], strict=True):
            assert letter == patient.removeprefix("Lung_Dx-")[0]
            assert names[label] == {"A": names[0], "B": names[1], "E": names[2], "G": names[3]}[letter]
    report = (out / "conversion_report.json").read_text()
    assert '"modality PT": 1' in report
    card = (out / "README.md").read_text()
    assert "modality PT: 1" in card and "10.7937/TCIA.2020.NNC2-0461" in card and "Research use only" in card
    assert "re-identify" in card
    # Metadata from the series actually converted; the report is strict JSON (no NaN).
    assert DatasetCard(card).data.size_categories == ["n<1K"]
    assert f"({len(PATIENTS)} series, task `abeg`)" in card

    def refuse(constant: str) -> None:
        raise ValueError(f"not strict JSON: {constant}")

    assert json.loads(report, parse_constant=refuse)["settings"]["task"] == "abeg"


def test_patient_split_is_seeded_and_stratified(converted: tuple[datasets.DatasetDict, Path], raw_tree: Path) -> None:
    dataset, _ = converted
    patients = {split: set(part["patient_id"]) for split, part in dataset.items()}
    assert not (patients["train"] & patients["test"]) and not (patients["train"] & patients["validation"])
    # Stratified: each class with >= 2 patients has one in train; A and G (3 each) reach the test split.
    test_letters = sorted(p.removeprefix("Lung_Dx-")[0] for p in patients["test"])
    assert test_letters.count("A") == 1 and test_letters.count("G") == 1
    again = convert_lung_pet_ct_dx(raw_tree, raw_tree.parent / "clinical.csv", raw_tree.parent / "again", task="abeg")
    assert {split: set(part["patient_id"]) for split, part in again.dataset.items()} == patients


def test_volume_annotations_and_clinical(converted: tuple[datasets.DatasetDict, Path]) -> None:
    dataset, _ = converted
    part = next(p for p in dataset.values() if "Lung_Dx-A0002" in p["patient_id"])
    row = part.with_format("numpy")[part["patient_id"].index("Lung_Dx-A0002")]
    volume = row["volume"]
    assert volume.shape == (6, 512, 512)
    expected = read_ct_folder(SERIES_DIR).hu
    np.testing.assert_array_equal(volume, expected)
    assert float(row["slice_spacing"]) == pytest.approx(8.0)
    np.testing.assert_allclose(row["slice_positions"], [216, 224, 232, 240, 248, 256])
    assert list(row["lesion_slice_range"]) == [0, 4]  # z 216 ... 248 are annotated, 256 is not
    boxes = part[part["patient_id"].index("Lung_Dx-A0002")]["boxes"]
    assert len(boxes) == 5
    for box in boxes:
        z = float(row["slice_positions"][box["slice_index"]])
        assert (box["xmin"], box["ymin"], box["xmax"], box["ymax"]) == BOXES_BY_Z[z]
        assert box["label"] == "A"
    # Clinical: F, 58, weight NA, T1b, N2, M1a, smoking 0.
    features = dict(zip(CLINICAL_FEATURE_NAMES, row["clinical_features"].tolist(), strict=True))
    mask = dict(zip(CLINICAL_FEATURE_NAMES, row["clinical_mask"].tolist(), strict=True))
    assert features["sex"] == -1.0 and features["smoking"] == -1.0
    assert features["age"] == pytest.approx(2 * (58 - 20) / 80 - 1)
    assert features["t_stage"] == pytest.approx(-0.5) and features["n_stage"] == pytest.approx(1 / 3)
    assert features["m_stage"] == 1.0
    assert mask["weight"] == 0.0 and features["weight"] == 0.0 and sum(mask.values()) == 6
    assert row["weight_kg"] == "NA" and row["t_stage"] == "1b" and row["m_stage"] == "1a"


def test_task_ag_keeps_two_classes(raw_tree: Path, tmp_path: Path) -> None:
    dataset = convert_lung_pet_ct_dx(raw_tree, raw_tree.parent / "clinical.csv", tmp_path / "ag", task="ag").dataset
    letters = sorted(letter for part in dataset.values() for letter in part["histology"])
    assert letters == ["A"] * 3 + ["G"] * 3
    assert dataset["train"].features["label"].names == ["adenocarcinoma", "squamous_cell_carcinoma"]
    assert '"class B not in task ag": 1' in (tmp_path / "ag" / "conversion_report.json").read_text()


def test_missing_clinical_row_is_an_error(raw_tree: Path, tmp_path: Path) -> None:
    partial = {key: value for key, value in PATIENTS.items() if key != "G0003"}
    table = _write_clinical_csv(tmp_path / "clinical.csv", partial)
    with pytest.raises(ValueError, match="Lung_Dx-G0003"):
        convert_lung_pet_ct_dx(raw_tree, table, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_corrupt_slice_named_or_skipped(raw_tree: Path, tmp_path: Path) -> None:
    root = tmp_path / "raw"
    for patient in ("A0001", "G0001"):
        shutil.copytree(raw_tree / f"Lung_Dx-{patient}", root / f"Lung_Dx-{patient}")
    bad = root / "Lung_Dx-G0001" / STUDY / SERIES / "1-10.dcm"
    bad.write_bytes(bad.read_bytes()[:4000])  # truncated in the pixel data
    with pytest.raises(BadFileError, match=r"1-10\.dcm"):
        convert_lung_pet_ct_dx(root, raw_tree.parent / "clinical.csv", tmp_path / "out", test_fraction=0.5)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))
    dataset = convert_lung_pet_ct_dx(
        root,
        raw_tree.parent / "clinical.csv",
        tmp_path / "out",
        test_fraction=0.5,
        validation_fraction=0,
        skip_bad=True,
    ).dataset
    assert [p for part in dataset.values() for p in part["patient_id"]] == ["Lung_Dx-A0001"]
    assert "1-10.dcm" in (tmp_path / "out" / "skipped_files.txt").read_text()
    assert "1-10.dcm" in (tmp_path / "out" / "README.md").read_text()


def test_clinical_xlsx_with_full_width_m(tmp_path: Path) -> None:
    """The archive ships an .xlsx; a minimal workbook as spreadsheet programs write it (shared strings)."""
    rows = [CLINICAL_HEADER, ["1", "A0002", "F", "58", "NA", "1b", "2", "1a", "NA", "0"]]
    strings = sorted({cell for row in rows for cell in row if not cell.isdigit()})

    def cell(ref: str, value: str) -> str:
        if value.isdigit():
            return f'<c r="{ref}"><v>{value}</v></c>'
        return f'<c r="{ref}" t="s"><v>{strings.index(value)}</v></c>'

    sheet_rows = "".join(
        f'<row r="{r + 1}">' + "".join(cell(f"{chr(65 + c)}{r + 1}", v) for c, v in enumerate(row)) + "</row>"
        for r, row in enumerate(rows)
    )
    main = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
    rel = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
    path = tmp_path / "statistics-clinical-20201221.xlsx"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(
            "xl/workbook.xml",
            f'<workbook xmlns="{main}" xmlns:r="{rel}"><sheets><sheet name="S" sheetId="1" r:id="rId1"/></sheets>'
            "</workbook>",
        )
        archive.writestr(
            "xl/_rels/workbook.xml.rels",
            '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            f'<Relationship Id="rId1" Type="{rel}/worksheet" Target="worksheets/sheet1.xml"/></Relationships>',
        )
        archive.writestr(
            "xl/sharedStrings.xml",
            f'<sst xmlns="{main}">' + "".join(f"<si><t>{s}</t></si>" for s in strings) + "</sst>",
        )
        archive.writestr(
            "xl/worksheets/sheet1.xml", f'<worksheet xmlns="{main}"><sheetData>{sheet_rows}</sheetData></worksheet>'
        )
    assert read_table(path)[0]["Ｍ-Stage"] == "1a"
    record = read_clinical_table(path)["A0002"]
    assert record.raw["m_stage"] == "1a" and record.features[0] == -1.0


@pytest.mark.parametrize(
    ("column", "value"), [("sex", "X"), ("age", "old"), ("t_stage", "7"), ("smoking", "sometimes")]
)
def test_unreadable_clinical_value_is_an_error(column: str, value: str) -> None:
    raw = {"sex": "M", "age": "60", "weight": "70", "t_stage": "2", "n_stage": "1", "m_stage": "0", "smoking": "1"}
    raw[column] = value
    with pytest.raises(ValueError, match=value):
        encode_clinical(raw, "row 2")
