"""Single-label CT evaluation (MMCAF-Net): patient-level numbers against scikit-learn and hand computation, the
patient bootstrap's interval width, and `hf-cxr evaluate` end to end on a tiny converted Lung-PET-CT-Dx dataset
built from the six real A0002 slices."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import datasets
import numpy as np
import pydicom
import pytest
import torch
from conftest import FIXTURES
from hf_cxr.modeling.mmcaf_net import MMCAFNetProcessor
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

import hf_cxr
from hf_cxr.cli import main
from hf_cxr.data import convert_lung_pet_ct_dx
from hf_cxr.evaluation import (
    aggregate_by_patient,
    evaluate_model,
    score_single_label,
    single_label_point_metrics,
)
from hf_cxr.evaluation.ct_report import single_label_document
from hf_cxr.evaluation.ct_scores import choose_threshold, choose_threshold_choice
from hf_cxr.hub import eval_results
from hf_cxr.inference.ct import CLINICAL_COLUMNS

AG = ["adenocarcinoma", "squamous_cell_carcinoma"]
ABEG = ["adenocarcinoma", "small_cell_carcinoma", "large_cell_carcinoma", "squamous_cell_carcinoma"]

# Six patients, 1-2 slabs each: [p(A), p(G)] per slab; G (index 1) is the positive class.
SLABS = np.array(
    [
        [0.8, 0.2],  # p1 (G)
        [0.3, 0.7],  # p1
        [0.9, 0.1],  # p2 (A)
        [0.6, 0.4],  # p2
        [0.45, 0.55],  # p3 (G)
        [0.4, 0.6],  # p4 (A)
        [0.7, 0.3],  # p4
        [0.95, 0.05],  # p5 (A)
        [0.6, 0.4],  # p6 (G)
        [0.65, 0.35],  # p6
    ]
)
SLAB_PATIENTS = ["p1", "p1", "p2", "p2", "p3", "p4", "p4", "p5", "p6", "p6"]
SLAB_LABELS = [1, 1, 0, 0, 1, 0, 0, 0, 1, 1]


# ------------------------------------------------------------------------------------------------ arrays


def test_max_aggregation_by_patient_and_binary_numbers_by_hand() -> None:
    patients = aggregate_by_patient(SLABS, SLAB_LABELS, SLAB_PATIENTS, "max")
    assert patients.patient_ids == ["p1", "p2", "p3", "p4", "p5", "p6"]
    assert patients.labels.tolist() == [1, 0, 1, 0, 0, 1]
    assert patients.slabs.tolist() == [2, 2, 1, 2, 1, 2]
    assert np.allclose(patients.probabilities[:, 1], [0.7, 0.4, 0.55, 0.6, 0.05, 0.4])
    assert np.allclose(patients.probabilities[:, 0], [0.8, 0.9, 0.45, 0.7, 0.95, 0.65])
    scores = score_single_label(SLABS, SLAB_LABELS, SLAB_PATIENTS, AG, n_bootstrap=0)
    metrics = scores.metrics
    # G scores of the positives {.7, .55, .4} against the negatives {.4, .6, .05}: 6.5 of 9 pairs ordered (a tie 1/2).
    assert metrics["auroc"] == pytest.approx(6.5 / 9)
    # At 0.5: p1, p3, p4 called G -> TP 2 (p1, p3), FP 1 (p4), FN 1 (p6), TN 2 (p2, p5).
    for key, expected in {
        "accuracy": 4 / 6,
        "sensitivity": 2 / 3,
        "specificity": 2 / 3,
        "ppv": 2 / 3,
        "npv": 2 / 3,
        "f1": 2 / 3,
    }.items():
        assert metrics[f"at_0.5/{key}"] == pytest.approx(expected), key
    assert scores.positive_class == "squamous_cell_carcinoma" and scores.num_patients == 6 and scores.num_slabs == 10
    # Mean instead of max: p1's G score becomes (0.2 + 0.7) / 2, which now falls below 0.5 (a false negative).
    mean = aggregate_by_patient(SLABS, SLAB_LABELS, SLAB_PATIENTS, "mean")
    assert np.allclose(mean.probabilities[:, 1], [0.45, 0.25, 0.55, 0.45, 0.05, 0.375])
    mean_scores = score_single_label(SLABS, SLAB_LABELS, SLAB_PATIENTS, AG, aggregate="mean", n_bootstrap=0)
    assert mean_scores.metrics["at_0.5/sensitivity"] == pytest.approx(1 / 3)
    # Slab order does not matter.
    order = np.random.default_rng(0).permutation(len(SLABS))
    shuffled = score_single_label(
        SLABS[order], np.asarray(SLAB_LABELS)[order], np.asarray(SLAB_PATIENTS)[order], AG, n_bootstrap=0
    )
    assert shuffled.metrics == pytest.approx(metrics)


def test_binary_metrics_match_sklearn_on_patient_maxima() -> None:
    rng = np.random.default_rng(3)
    patient_of_slab = rng.integers(0, 40, 130)
    labels_per_patient = rng.random(40) < 0.35
    g = np.clip(0.25 * labels_per_patient[patient_of_slab] + rng.random(130) * 0.75, 0, 1)
    slabs = np.stack([1 - g, g], axis=1)
    ids = [f"P{index:03d}" for index in patient_of_slab]
    labels = labels_per_patient[patient_of_slab].astype(int)
    scores = score_single_label(slabs, labels, ids, AG, threshold=0.62, n_bootstrap=0)
    present = sorted(set(patient_of_slab))
    truth = labels_per_patient[present].astype(int)
    score = np.array([g[patient_of_slab == patient].max() for patient in present])
    assert scores.num_patients == len(present)
    assert scores.metrics["auroc"] == pytest.approx(roc_auc_score(truth, score), abs=1e-12)
    for point, threshold in (("at_0.5", 0.5), ("at_threshold", 0.62)):
        predicted = (score >= threshold).astype(int)
        assert scores.metrics[f"{point}/accuracy"] == pytest.approx(accuracy_score(truth, predicted))
        assert scores.metrics[f"{point}/f1"] == pytest.approx(f1_score(truth, predicted))
        assert scores.metrics[f"{point}/sensitivity"] == pytest.approx(recall_score(truth, predicted))
        assert scores.metrics[f"{point}/specificity"] == pytest.approx(recall_score(1 - truth, 1 - predicted))
        assert scores.metrics[f"{point}/ppv"] == pytest.approx(precision_score(truth, predicted))
        assert scores.metrics[f"{point}/npv"] == pytest.approx(precision_score(1 - truth, 1 - predicted))
    # Positive class A instead: AUROC of A's patient maxima.
    as_a = score_single_label(slabs, labels, ids, AG, positive_class="adenocarcinoma", n_bootstrap=0)
    a_score = np.array([(1 - g)[patient_of_slab == patient].max() for patient in present])
    assert as_a.metrics["auroc"] == pytest.approx(roc_auc_score(1 - truth, a_score), abs=1e-12)


def test_four_classes_one_vs_rest_match_sklearn() -> None:
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 4, 50)
    logits = rng.normal(size=(50, 4)) + 1.2 * np.eye(4)[labels]
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    ids = [f"P{index}" for index in range(50)]  # one slab per patient: the aggregation is the identity
    metrics = score_single_label(probabilities, labels, ids, ABEG, n_bootstrap=0).metrics
    for index, name in enumerate(ABEG):
        assert metrics[f"auroc/{name}"] == pytest.approx(roc_auc_score(labels == index, probabilities[:, index]))
    assert metrics["auroc_macro"] == pytest.approx(roc_auc_score(labels, probabilities, multi_class="ovr"))
    predicted = probabilities.argmax(axis=1)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(labels, predicted))
    assert metrics["f1_macro"] == pytest.approx(f1_score(labels, predicted, average="macro"))
    # Max over two slabs per patient, then the argmax of the maxima.
    second = np.roll(probabilities, 1, axis=1)
    both = score_single_label(np.concatenate([probabilities, second]), np.tile(labels, 2), ids * 2, ABEG, n_bootstrap=0)
    maxima = np.maximum(probabilities, second)
    assert both.metrics["accuracy"] == pytest.approx(accuracy_score(labels, maxima.argmax(axis=1)))
    assert both.metrics["auroc/small_cell_carcinoma"] == pytest.approx(roc_auc_score(labels == 1, maxima[:, 1]))
    with pytest.raises(ValueError, match="two classes only"):
        score_single_label(probabilities, labels, ids, ABEG, threshold=0.4, n_bootstrap=0)


def test_inputs_are_checked() -> None:
    with pytest.raises(ValueError, match="different labels"):
        aggregate_by_patient(SLABS[:2], [0, 1], ["p1", "p1"])
    with pytest.raises(ValueError, match="aggregate"):
        aggregate_by_patient(SLABS, SLAB_LABELS, SLAB_PATIENTS, "median")
    with pytest.raises(ValueError, match="positive class"):
        score_single_label(SLABS, SLAB_LABELS, SLAB_PATIENTS, AG, positive_class="large_cell_carcinoma")
    one_class = single_label_point_metrics(np.array([[0.3, 0.7], [0.6, 0.4]]), np.array([1, 1]), AG, 1)
    assert math.isnan(one_class["auroc"]) and math.isnan(one_class["at_0.5/specificity"])


def _width(scores, key: str) -> float:
    interval = scores.intervals[key]
    return interval.high - interval.low


def test_fewer_patients_give_wider_intervals() -> None:
    """The same case mix at 12 and at 96 patients: equal point AUROC, a wider interval with fewer patients."""
    rng = np.random.default_rng(11)
    labels = np.array([0, 1] * 6)
    g = np.clip(0.3 * labels + rng.random(12) * 0.7, 0.0, 1.0)
    small_slabs = np.stack([1 - g, g], axis=1)
    copies = 8
    large_slabs = np.tile(small_slabs, (copies, 1))
    large_labels = np.tile(labels, copies)
    large_ids = [f"copy{copy}-p{index}" for copy in range(copies) for index in range(12)]
    small = score_single_label(small_slabs, labels, [f"p{i}" for i in range(12)], AG, n_bootstrap=400, seed=1)
    large = score_single_label(large_slabs, large_labels, large_ids, AG, n_bootstrap=400, seed=1)
    assert small.metrics["auroc"] == pytest.approx(large.metrics["auroc"])
    for key in ("auroc", "at_0.5/accuracy", "at_0.5/sensitivity"):
        assert _width(small, key) > 1.5 * _width(large, key), key
        assert small.intervals[key].low <= small.metrics[key] <= small.intervals[key].high
    # A patient's slabs move together: duplicating every slab of every patient changes nothing.
    doubled = score_single_label(
        np.concatenate([small_slabs, small_slabs]),
        np.tile(labels, 2),
        [f"p{i}" for i in range(12)] * 2,
        AG,
        n_bootstrap=400,
        seed=1,
    )
    assert doubled.intervals["auroc"] == small.intervals["auroc"]


def test_threshold_is_chosen_by_youden_on_patient_scores() -> None:
    g = [0.9, 0.2, 0.7, 0.5, 0.45, 0.3, 0.6, 0.1, 0.2, 0.1, 0.05]
    ids = ["P1", "P1", "P2", "P3", "P3", "P4", "N1", "N1", "N2", "N3", "N3"]
    labels = [1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    patients = aggregate_by_patient(np.stack([1 - np.asarray(g), g], axis=1), labels, ids, "max")
    # G maxima: positives .9 .7 .5 .3, negatives .6 .2 .1. J = TPR - FPR: .25 at .9, .5 at .7, .42 at .6,
    # .42 at .5, .67 at .3 (the maximum), .33 at .2, 0 at .1.
    assert choose_threshold(patients, 1, "squamous_cell_carcinoma") == pytest.approx(0.3)
    assert choose_threshold_choice(patients, 1, "squamous_cell_carcinoma").method == "youden_j"
    # Without negative patients no threshold can be chosen: the 0.5 fallback, with the reason.
    only_positive = aggregate_by_patient(np.stack([1 - np.asarray(g), g], axis=1), [1] * len(g), ids, "max")
    fallback = choose_threshold_choice(only_positive, 1, "squamous_cell_carcinoma")
    assert (fallback.value, fallback.method, fallback.reason) == (0.5, "fallback_0.5", "no negatives")
    # The slab maxima matter: with the mean, P1's score (.55) and N1's (.35) change the ranking.
    mean = aggregate_by_patient(np.stack([1 - np.asarray(g), g], axis=1), labels, ids, "mean")
    assert mean.probabilities[:, 1].tolist() == pytest.approx([0.55, 0.7, 0.475, 0.3, 0.35, 0.2, 0.075])


def _refuse(constant: str) -> None:
    raise ValueError(f"not strict JSON: {constant}")


@pytest.mark.parametrize(("squamous", "published"), [(30, True), (29, False)])
def test_ct_model_index_needs_thirty_patients_in_every_class(squamous: int, published: bool) -> None:
    rng = np.random.default_rng(0)
    labels = np.array([0] * 40 + [1] * squamous)
    positive = np.clip(0.3 * labels + rng.random(labels.size) * 0.7, 0, 1)
    scores = score_single_label(
        np.stack([1 - positive, positive], axis=1), labels, [f"p{i}" for i in range(labels.size)], AG, n_bootstrap=20
    )
    context = {"model": "m", "dataset": "d", "split": "test", "threshold_source": None, "num_series": labels.size,
               "slice_selection": "lesion", "slab_stride": None}  # fmt: skip
    document = json.loads(json.dumps(single_label_document(scores, context)), parse_constant=_refuse)
    results = eval_results(document, "lung_pet_ct_dx", "Lung-PET-CT-Dx")
    if published:
        auroc = [result for result in results if result.metric_type == "roc_auc"]
        assert len(auroc) == 1 and auroc[0].metric_value == pytest.approx(scores.metrics["auroc"], abs=1e-4)
        assert auroc[0].dataset_args == {"num_patients": 40 + squamous}
    else:
        assert results == []


# ------------------------------------------------------------------------------------------------ end to end

LUNG = FIXTURES / "lung_pet_ct_dx"
STUDY = "04-25-2007-NA-ThoraxAThoraxRoutine Adult-34834"
SERIES = "3.000000-ThoraxRoutine  8.0.0  B40f-10983"
SERIES_DIR = LUNG / "Lung_Dx-A0002" / STUDY / SERIES
HEADER = ["No.", "NewPatientID", "Sex", "Age", "weight (kg)", "T-Stage", "N-Stage", "Ｍ-Stage"]
HEADER += ["Histopathological grading", "Smoking History"]
AG_PATIENTS = [f"A000{index}" for index in range(1, 7)] + [f"G000{index}" for index in range(1, 7)]
ABEG_PATIENTS = [*AG_PATIENTS[:3], "B0001", "B0002", "E0001", "E0002", *AG_PATIENTS[6:9]]


def _copy_series(source: Path, target: Path, shift: int, series_suffix: str | None = None) -> None:
    """The real slices, rolled in-plane by `shift` pixels so that every patient's CT differs."""
    target.mkdir(parents=True)
    for path in sorted(source.glob("*.dcm")):
        dataset = pydicom.dcmread(path)
        dataset.PixelData = np.roll(dataset.pixel_array, shift, axis=(0, 1)).astype(np.uint16).tobytes()
        if series_suffix is not None:
            dataset.SeriesInstanceUID = dataset.SeriesInstanceUID[:-2] + series_suffix
        dataset.save_as(target / path.name)


@pytest.fixture(scope="module")
def raw_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fourteen patients (A, B, E, G) copied from A0002; A0001 has a second CT series."""
    root = tmp_path_factory.mktemp("lung") / "Lung-PET-CT-Dx"
    patients = list(dict.fromkeys(AG_PATIENTS + ABEG_PATIENTS))
    for number, patient in enumerate(patients):
        _copy_series(SERIES_DIR, root / f"Lung_Dx-{patient}" / STUDY / SERIES, 23 * number)
    _copy_series(SERIES_DIR, root / "Lung_Dx-A0001" / STUDY / "4.000000-ThoraxRoutine-2", 61, series_suffix="77")
    shutil.copytree(LUNG / "Annotation", root / "Annotation")
    with open(root.parent / "clinical.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        for number, patient in enumerate(patients, start=1):
            sex, age = ("M", 50 + number) if number % 2 else ("F", 70 - number)
            writer.writerow([number, f"Lung_Dx-{patient}", sex, age, 60 + number, "2", "1", "0", "NA", number % 2])
    return root


def _tiny_model_folder(folder: Path, **overrides) -> Path:
    torch.manual_seed(0)
    hf_cxr.build_model("mmcaf_net", "tiny", **overrides).save_pretrained(folder)
    MMCAFNetProcessor(num_slices=4, size=32, slice_selection="sliding", slab_stride=2).save_pretrained(folder)
    return folder


@torch.no_grad()
def _expected_patient_scores(model_dir: Path, part: datasets.Dataset) -> dict[str, tuple[int, np.ndarray]]:
    """Patient -> (class index, max softmax over its slabs), computed directly with the processor and model."""
    from transformers import AutoModelForVideoClassification, AutoProcessor

    model = AutoModelForVideoClassification.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    names = part.features["label"].names
    to_model = {name: model.config.label2id[name] for name in names}
    result: dict[str, tuple[int, np.ndarray]] = {}
    columns = ["volume", "lesion_slice_range", "patient_id", "label", *CLINICAL_COLUMNS]
    for row in part.select_columns(columns).with_format("numpy", columns=["volume"], output_all_columns=True):
        inputs = processor(row)
        probabilities = torch.softmax(model(inputs["pixel_values"], inputs["clinical_values"]).logits, -1).numpy()
        label, previous = to_model[names[row["label"]]], result.get(row["patient_id"], (None, None))[1]
        maxima = probabilities.max(axis=0) if previous is None else np.maximum(previous, probabilities.max(axis=0))
        result[row["patient_id"]] = (label, maxima)
    return result


def test_hf_cxr_evaluate_mmcaf_net_end_to_end(
    raw_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "lung_ag"
    converted = convert_lung_pet_ct_dx(
        raw_tree,
        raw_tree.parent / "clinical.csv",
        data_dir,
        task="ag",
        seed=0,
        validation_fraction=0.25,
        test_fraction=0.4,
    ).dataset
    model_dir = _tiny_model_folder(tmp_path / "model")
    out = tmp_path / "report"
    code = main(
        ["evaluate", "--model", str(model_dir), "--dataset", str(data_dir), "--out", str(out), "--bootstrap", "300"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "patients" in printed and "AUROC" in printed and "few dozen patients" in printed
    assert sorted(path.name for path in out.iterdir()) == [
        "metrics.json",
        "reliability.png",
        "report.md",
        "roc_curves.png",
    ]
    document = json.loads((out / "metrics.json").read_text(), parse_constant=_refuse)
    test = converted["test"]
    expected = _expected_patient_scores(model_dir, test)
    assert document["evaluation"] == "single_label_ct" and document["task"] == "binary"
    assert document["split"] == "test" and document["patient_aggregation"] == "max"
    assert document["num_patients"] == len(set(test["patient_id"])) == len(expected)
    assert document["num_series"] == len(test)
    assert document["num_slabs"] == 2 * len(test)  # 6 slices, slabs of 4 every 2 slices
    truth = np.array([label for label, _ in expected.values()])
    score = np.array([maxima[1] for _, maxima in expected.values()])
    by_patient = {entry["patient_id"]: entry for entry in document["patients"]}
    for patient, (label, maxima) in expected.items():
        assert by_patient[patient]["label"] == AG[label]
        assert [by_patient[patient]["scores"][name] for name in AG] == pytest.approx(maxima.tolist(), abs=1e-5)
    metrics = document["metrics"]
    assert metrics["auroc"]["value"] == pytest.approx(roc_auc_score(truth, score), abs=1e-5)
    assert metrics["at_0.5/accuracy"]["value"] == pytest.approx(np.mean((score >= 0.5) == truth), abs=1e-6)
    low, high = metrics["auroc"]["ci95"]
    assert low <= metrics["auroc"]["value"] <= high and metrics["auroc"]["bootstrap_defined"] > 0
    assert document["threshold_split"] == "validation" and "validation" in document["threshold_source"]
    assert "at_threshold/npv" in metrics
    report = (out / "report.md").read_text()
    assert "(test split)" in report and f"{document['num_patients']} patients" in report
    assert "A test set of a few dozen patients gives wide 95 % intervals" in report
    assert "squamous_cell_carcinoma" in report and "Research use only" in report
    assert "| AUROC |" in report and "| NPV at 0.5 |" in report
    # The model card of a push carries the per-patient numbers with their intervals.
    from huggingface_hub import ModelCard

    from hf_cxr.hub import push_model

    pushed = push_model(model_dir, "org/mmcaf-net", report_dir=out, dry_run=True, out_dir=tmp_path / "upload")
    card = ModelCard.load(Path(pushed.folder) / "README.md")
    assert "patient-level AUROC" in card.text and f"{document['num_patients']} patients" in card.text
    # A few patients per class: the numbers are in the prose, not in the model-index metadata.
    assert not card.data.eval_results and "None of these numbers is in this card's `model-index`" in card.text
    assert "fewer than 30 patients in a class" in card.text
    # Mean aggregation through the same entry point changes the patient scores, not the patients.
    mean = evaluate_model(
        model_dir, data_dir, out_dir=tmp_path / "mean", threshold_split="none", aggregate="mean", n_bootstrap=0
    )
    assert mean.document["patient_aggregation"] == "mean" and mean.document["num_patients"] == len(expected)
    assert "ci95" not in mean.document["metrics"]["auroc"]
    # --write-thresholds stores the validation threshold for the positive class in the model's config.
    stored = evaluate_model(model_dir, data_dir, out_dir=tmp_path / "stored", store_thresholds=True, n_bootstrap=0)
    config = json.loads((model_dir / "config.json").read_text())
    assert config["decision_thresholds"] == {"squamous_cell_carcinoma": pytest.approx(stored.threshold)}
    with pytest.raises(ValueError, match="may not be chosen"):
        evaluate_model(model_dir, data_dir, out_dir=tmp_path / "bad", threshold_split="test")


def test_four_classes_end_to_end(raw_tree: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "lung_abeg"
    convert_lung_pet_ct_dx(raw_tree, raw_tree.parent / "clinical.csv", data_dir, task="abeg", seed=0, test_fraction=0.5)
    model_dir = _tiny_model_folder(tmp_path / "model", labels=ABEG)
    report = evaluate_model(model_dir, data_dir, out_dir=tmp_path / "report", n_bootstrap=100)
    document = report.document
    assert document["task"] == "multiclass" and document["threshold"] is None
    assert set(document["metrics"]) >= {"auroc_macro", "accuracy", "f1_macro", *(f"auroc/{name}" for name in ABEG)}
    patients = report.scores.patients
    predicted = patients.probabilities.argmax(axis=1)
    assert document["metrics"]["accuracy"]["value"] == pytest.approx(accuracy_score(patients.labels, predicted))
    assert "macro AUROC (one vs rest)" in (tmp_path / "report" / "report.md").read_text()
    # A two-class model on the four-class dataset is refused with the way out.
    with pytest.raises(ValueError, match="--task ag"):
        evaluate_model(_tiny_model_folder(tmp_path / "ag"), data_dir, out_dir=tmp_path / "bad", n_bootstrap=0)
