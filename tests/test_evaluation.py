"""Evaluation numbers against scikit-learn on fixed arrays, patient-level bootstrap, Youden thresholds, ignored
labels, cross-dataset finding pairs, the offline `evaluate` module, and `hf-cxr evaluate` end to end."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import datasets
import evaluate
import numpy as np
import pytest
from conftest import NIH_DIR
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)
from transformers import AutoConfig

import hf_cxr
from hf_cxr.cli import main
from hf_cxr.data.chexpert import shared_finding_columns
from hf_cxr.evaluation import (
    evaluate_model,
    evaluate_module_path,
    patient_bootstrap_indices,
    point_metrics,
    predict_probabilities,
    score_predictions,
    shared_findings,
    threshold_metrics,
    youden_thresholds,
)
from hf_cxr.evaluation.report import markdown_report, metrics_document, write_report
from hf_cxr.evaluation.scores import (
    calibration_bins,
    confusion_metrics,
    expected_calibration_error,
    prediction_metrics,
    threshold_choices,
)
from hf_cxr.labels import CHESTXRAY14_LABELS, CHESTXRAY14_TO_CHEXPERT, CHEXPERT_LABELS
from hf_cxr.losses import IGNORE_LABEL
from hf_cxr.registry import build_image_processor, build_model
from hf_cxr.sample import load_labelled_folder

NAMES = ["a", "b", "c"]


@pytest.fixture
def arrays() -> tuple[np.ndarray, np.ndarray]:
    """60 images x 3 findings; scores correlated with the labels; a few ignored labels in finding 'b'."""
    rng = np.random.default_rng(7)
    targets = (rng.random((60, 3)) < [0.3, 0.5, 0.2]).astype(float)
    probabilities = np.clip(0.35 * targets + rng.random((60, 3)) * 0.7, 0.0, 1.0)
    targets[[3, 10, 11, 40], 1] = IGNORE_LABEL
    return probabilities, targets


def _kept(probabilities: np.ndarray, targets: np.ndarray, column: int) -> tuple[np.ndarray, np.ndarray]:
    keep = targets[:, column] != IGNORE_LABEL
    return targets[keep, column], probabilities[keep, column]


def test_point_metrics_match_sklearn(arrays) -> None:
    probabilities, targets = arrays
    thresholds = {"a": 0.4, "b": 0.55, "c": 0.62}
    metrics = point_metrics(probabilities, targets, NAMES, thresholds)
    aucs = []
    for column, name in enumerate(NAMES):
        truth, score = _kept(probabilities, targets, column)
        aucs.append(roc_auc_score(truth, score))
        assert metrics[f"auc/{name}"] == pytest.approx(aucs[-1], abs=1e-12)
        assert metrics[f"ap/{name}"] == pytest.approx(average_precision_score(truth, score), abs=1e-12)
        for point, threshold in (("at_0.5", 0.5), ("at_threshold", thresholds[name])):
            predicted = (score >= threshold).astype(int)
            assert metrics[f"{point}/sensitivity/{name}"] == pytest.approx(recall_score(truth, predicted))
            assert metrics[f"{point}/specificity/{name}"] == pytest.approx(recall_score(1 - truth, 1 - predicted))
            assert metrics[f"{point}/precision/{name}"] == pytest.approx(precision_score(truth, predicted))
            assert metrics[f"{point}/f1/{name}"] == pytest.approx(f1_score(truth, predicted))
    assert metrics["auc_macro"] == pytest.approx(np.mean(aucs), abs=1e-12)
    keep = targets != IGNORE_LABEL
    assert metrics["auc_micro"] == pytest.approx(roc_auc_score(targets[keep], probabilities[keep]), abs=1e-12)


def test_confusion_metrics_match_sklearn_and_stay_nan_where_undefined() -> None:
    rng = np.random.default_rng(2)
    truth = (rng.random(80) < 0.4).astype(float)
    score = np.clip(0.3 * truth + rng.random(80) * 0.7, 0.0, 1.0)
    metrics = confusion_metrics(truth, score, 0.45)
    predicted = (score >= 0.45).astype(int)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(truth, predicted))
    assert metrics["sensitivity"] == pytest.approx(recall_score(truth, predicted))
    assert metrics["specificity"] == pytest.approx(recall_score(1 - truth, 1 - predicted))
    assert metrics["precision"] == pytest.approx(precision_score(truth, predicted))
    assert metrics["npv"] == pytest.approx(precision_score(1 - truth, 1 - predicted))
    assert metrics["f1"] == pytest.approx(f1_score(truth, predicted))
    # No positives: sensitivity undefined (NaN, not 0); no positive calls: precision undefined; nothing: all NaN.
    negatives_only = prediction_metrics(np.zeros(3), np.array([True, False, False]))
    assert math.isnan(negatives_only["sensitivity"]) and negatives_only["specificity"] == pytest.approx(2 / 3)
    assert negatives_only["precision"] == 0.0 and negatives_only["f1"] == 0.0
    no_calls = prediction_metrics(np.array([1.0, 0.0]), np.zeros(2, dtype=bool))
    assert math.isnan(no_calls["precision"]) and no_calls["npv"] == 0.5 and no_calls["f1"] == 0.0
    assert all(math.isnan(value) for value in prediction_metrics(np.zeros(0), np.zeros(0, dtype=bool)).values())
    with pytest.raises(ValueError, match="must both be"):
        prediction_metrics(np.zeros(3), np.zeros(2, dtype=bool))


def test_calibration_bins_and_expected_calibration_error_by_hand() -> None:
    truth = np.array([0.0, 0.0, 1.0, 1.0, 1.0, 0.0])
    score = np.array([0.05, 0.1, 0.35, 0.95, 1.0, 0.99])
    binned = calibration_bins(truth, score, 10)
    # Bins of width 0.1, the last one closed: 0.05 -> 0, 0.1 -> 1, 0.35 -> 3, 0.95 / 0.99 / 1.0 -> 9.
    assert binned.counts.tolist() == [1, 1, 0, 1, 0, 0, 0, 0, 0, 3]
    assert binned.filled.tolist() == [True, True, False, True] + [False] * 5 + [True]
    assert binned.mean_score[9] == pytest.approx((0.95 + 1.0 + 0.99) / 3) and binned.observed_rate[9] == 2 / 3
    assert math.isnan(binned.mean_score[2]) and math.isnan(binned.observed_rate[2])
    expected = (0.05 + 0.1 + 0.65 + 3 * abs(2 / 3 - 2.94 / 3)) / 6
    assert expected_calibration_error(score[:, None], truth[:, None]) == pytest.approx(expected)
    # Ignored labels are left out; nothing scored gives NaN.
    with_ignored = np.column_stack([truth, np.full(6, IGNORE_LABEL)])
    assert expected_calibration_error(np.column_stack([score, score]), with_ignored) == pytest.approx(expected)
    assert math.isnan(expected_calibration_error(score[:, None], np.full((6, 1), IGNORE_LABEL)))
    assert calibration_bins(truth, score, 2).counts.tolist() == [3, 3]
    with pytest.raises(ValueError, match="bins"):
        calibration_bins(truth, score, 0)


def test_ignored_labels_are_left_out_of_their_finding_only(arrays) -> None:
    probabilities, targets = arrays
    before = point_metrics(probabilities, targets, NAMES, {"a": 0.5, "b": 0.5, "c": 0.5})
    moved = probabilities.copy()
    moved[targets == IGNORE_LABEL] = 1.0 - moved[targets == IGNORE_LABEL]  # ignored entries must not matter
    assert point_metrics(moved, targets, NAMES, {"a": 0.5, "b": 0.5, "c": 0.5}) == before
    # Treating them as negatives instead does change finding "b" (so the test above can fail).
    as_negative = np.where(targets == IGNORE_LABEL, 0.0, targets)
    assert point_metrics(moved, as_negative, NAMES)["auc/b"] != before["auc/b"]
    scores = score_predictions(probabilities, targets, NAMES, n_bootstrap=0)
    assert scores.counts["b"]["ignored"] == 4 and scores.counts["a"]["ignored"] == 0


def test_youden_threshold_on_a_hand_case() -> None:
    # thresholds 0.9: J=1/3; 0.6: J=2/3 (best); 0.5: J=1/6; 0.3: J=1/2; 0.1: J=0
    truth = np.array([[0.0], [0.0], [1.0], [1.0], [1.0]])
    score = np.array([[0.1], [0.5], [0.3], [0.6], [0.9]])
    assert youden_thresholds(score, truth, ["x"]) == {"x": pytest.approx(0.6)}
    # One class only, or an ignored-only finding: keep 0.5.
    assert youden_thresholds(score, np.ones_like(truth), ["x"]) == {"x": 0.5}
    assert youden_thresholds(score, np.full_like(truth, IGNORE_LABEL), ["x"]) == {"x": 0.5}
    # Scores ranked exactly backwards: no threshold beats chance.
    assert youden_thresholds(1.0 - np.array([[0.1], [0.2], [0.7], [0.8], [0.9]]), truth, ["x"]) == {"x": 0.5}
    per_finding = threshold_metrics(score, truth, ["x"], {"x": 0.6})["x"]
    assert per_finding["sensitivity"] == pytest.approx(2 / 3) and per_finding["specificity"] == 1.0
    # Each fallback says why no threshold could be chosen.
    three = np.column_stack([truth[:, 0], np.zeros(5), np.ones(5)])
    backwards = np.column_stack([1.0 - np.array([0.1, 0.2, 0.7, 0.8, 0.9]), score[:, 0], score[:, 0]])
    choices = threshold_choices(backwards, three, ["backwards", "none", "all"])
    assert [(c.value, c.method, c.reason) for c in choices.values()] == [
        (0.5, "fallback_0.5", "no threshold beats chance (Youden's J <= 0)"),
        (0.5, "fallback_0.5", "no positives"),
        (0.5, "fallback_0.5", "no negatives"),
    ]
    assert threshold_choices(score, truth, ["x"])["x"].method == "youden_j"


def test_bootstrap_resamples_whole_patients() -> None:
    patients = np.repeat(np.arange(12), [1, 2, 3, 1, 4, 2, 2, 1, 3, 1, 2, 5])
    rows_of = {patient: set(np.flatnonzero(patients == patient)) for patient in range(12)}
    draws = list(patient_bootstrap_indices(patients, 50, seed=3))
    for rows in draws:
        counts = np.bincount(rows, minlength=patients.size)
        for rows_of_patient in rows_of.values():
            # every row of a drawn patient appears exactly as often as the patient was drawn
            assert len({counts[row] for row in rows_of_patient}) == 1
        drawn_patients = sum(counts[min(rows_of_patient)] for rows_of_patient in rows_of.values())
        assert drawn_patients == 12  # as many patients as the split has, not as many rows
    again = list(patient_bootstrap_indices(patients, 50, seed=3))
    assert all(np.array_equal(x, y) for x, y in zip(draws, again, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(draws, patient_bootstrap_indices(patients, 50, 4), strict=True))


def test_duplicated_images_of_a_patient_do_not_narrow_the_interval() -> None:
    """Each of 40 patients has 10 identical images: by patient, the interval equals that of one image per patient;
    resampling images as if independent makes it much narrower (the error patient resampling prevents)."""
    rng = np.random.default_rng(0)
    truth = (rng.random((40, 1)) < 0.4).astype(float)
    score = np.clip(0.3 * truth + rng.random((40, 1)) * 0.7, 0, 1)
    once = score_predictions(score, truth, ["x"], patient_ids=list(range(40)), n_bootstrap=200, seed=1)
    tenfold = score_predictions(
        np.repeat(score, 10, axis=0), np.repeat(truth, 10, axis=0), ["x"], np.repeat(np.arange(40), 10), None, 200, 1
    )
    by_image = score_predictions(np.repeat(score, 10, axis=0), np.repeat(truth, 10, axis=0), ["x"], None, None, 200, 1)
    assert tenfold.intervals["auc/x"].as_list() == pytest.approx(once.intervals["auc/x"].as_list(), abs=1e-12)
    width = np.diff(tenfold.intervals["auc/x"].as_list())[0]
    assert np.diff(by_image.intervals["auc/x"].as_list())[0] < 0.6 * width
    assert tenfold.num_patients == 40 and by_image.bootstrap["unit"].startswith("image")
    low, high = tenfold.intervals["auc/x"].as_list()
    assert low <= tenfold.metrics["auc/x"] <= high


def _strict(text: str) -> dict:
    """json.loads that refuses NaN and infinities, as strict JSON parsers do."""

    def refuse(constant: str) -> None:
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def _document(scores, **context) -> dict:
    return metrics_document(scores, {"model": "m", "dataset": "d", "split": "test", **context})


def test_report_says_when_resampling_patients_is_resampling_images(arrays) -> None:
    probabilities, targets = arrays
    one_each = score_predictions(probabilities, targets, NAMES, patient_ids=list(range(60)), n_bootstrap=5)
    assert one_each.bootstrap["unit"] == "patient" and one_each.bootstrap["one_image_per_patient"] is True
    text = markdown_report(_document(one_each))
    assert "5 resamples by patient (every patient in this split has exactly one image, so this is the same as " in text
    pairs = score_predictions(probabilities, targets, NAMES, patient_ids=np.arange(60) // 2, n_bootstrap=5)
    assert pairs.bootstrap["one_image_per_patient"] is False
    assert "exactly one image" not in markdown_report(_document(pairs))


def test_fallback_thresholds_are_reported_per_finding(arrays) -> None:
    probabilities, targets = arrays
    validation = targets.copy()
    validation[:, 2] = 0.0  # finding "c": no positives on the threshold split
    choices = threshold_choices(probabilities, validation, NAMES)
    methods = {name: {"method": choice.method, "reason": choice.reason} for name, choice in choices.items()}
    scores = score_predictions(
        probabilities, targets, NAMES, thresholds={n: c.value for n, c in choices.items()}, n_bootstrap=0
    )
    document = _document(
        scores, threshold_split="validation", threshold_source="chosen per finding on the `validation` split "
        "(Youden's J)", threshold_methods=methods,
    )  # fmt: skip
    assert document["per_class"]["c"]["threshold_method"] == "fallback_0.5"
    assert document["per_class"]["c"]["threshold_note"] == "no positives"
    assert document["per_class"]["a"]["threshold_method"] == "youden_j" and "threshold_methods" not in document
    text = markdown_report(document)
    assert "no threshold could be chosen on `validation` for 1 of 3 findings, which use the 0.5 fallback: c" in text
    assert "| c | 0.500 (fallback: no positives) |" in text
    assert f"| a | {document['per_class']['a']['threshold']:.3f} |" in text


def test_report_metrics_json_is_strict_json(arrays, tmp_path: Path) -> None:
    probabilities, targets = arrays
    targets = targets.copy()
    targets[:, 2] = 0.0  # an undefined AUC and AP
    scores = score_predictions(probabilities, targets, NAMES, n_bootstrap=5)
    assert math.isnan(scores.metrics["auc/c"])
    context = {"model": "m", "dataset": "d", "split": "test", "note": float("nan")}
    write_report(tmp_path, scores, probabilities, targets, context)
    document = _strict((tmp_path / "metrics.json").read_text())
    assert document["per_class"]["c"]["auc"]["value"] is None and document["note"] is None


def test_cross_dataset_scores_only_the_shared_findings() -> None:
    pairs = shared_findings(CHESTXRAY14_LABELS, CHEXPERT_LABELS)
    names, nih_columns, chexpert_columns = shared_finding_columns()
    assert [name for name, _, _ in pairs] == names
    assert sorted(names) == sorted(CHESTXRAY14_TO_CHEXPERT)
    assert [column for _, column, _ in pairs] == nih_columns
    assert [column for _, _, column in pairs] == chexpert_columns
    assert shared_findings(CHESTXRAY14_LABELS, CHESTXRAY14_LABELS) == [
        (n, i, i) for i, n in enumerate(CHESTXRAY14_LABELS)
    ]
    reverse = shared_findings(CHEXPERT_LABELS, CHESTXRAY14_LABELS)
    assert {name for name, _, _ in reverse} == set(CHESTXRAY14_TO_CHEXPERT.values())


def test_evaluate_module_loads_offline_from_the_package(arrays) -> None:
    probabilities, targets = arrays
    path = evaluate_module_path()
    assert Path(path).is_relative_to(Path(hf_cxr.__file__).parent)
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    metric = evaluate.load(path)
    result = metric.compute(predictions=probabilities, references=targets, label_names=NAMES)
    expected = point_metrics(probabilities, targets, NAMES)
    assert result.keys() == expected.keys()
    assert all(result[key] == pytest.approx(value, nan_ok=True) for key, value in expected.items())
    patients = np.arange(60) // 2
    with_ci = metric.compute(
        predictions=probabilities, references=targets, label_names=NAMES, patient_ids=patients, n_bootstrap=30, seed=2
    )
    direct = score_predictions(probabilities, targets, NAMES, patients, n_bootstrap=30, seed=2)
    assert with_ci["auc_macro_ci95"] == pytest.approx(direct.intervals["auc_macro"].as_list())


# --------------------------------------------------------------------------------------------- end to end


def _tiny_splits() -> datasets.DatasetDict:
    """The 15 real NIH fixture images with seeded labels (both classes in every finding of each split) and pairs of
    images sharing a patient id, split into validation (7) and test (8)."""
    sample = load_labelled_folder(NIH_DIR)
    rng = np.random.default_rng(5)
    labels = (rng.random((len(sample), len(CHESTXRAY14_LABELS))) < 0.5).astype(np.float32)
    labels[[0, 7]] = 1.0  # the first two rows of each split: all positive, all negative
    labels[[1, 8]] = 0.0
    sample = sample.remove_columns(["labels", "patient_id"])
    sample = sample.add_column("labels", labels.tolist()).add_column("patient_id", [i // 2 for i in range(len(sample))])
    return datasets.DatasetDict({"validation": sample.select(range(7)), "test": sample.select(range(7, len(sample)))})


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("evaluation")
    _tiny_splits().save_to_disk(str(base / "data"))
    build_model("cr_msnet", "tiny").save_pretrained(base / "model")
    build_image_processor("cr_msnet", "tiny").save_pretrained(base / "model")
    return base / "model", base / "data"


def test_cli_evaluate_end_to_end(tiny_run, tmp_path: Path, capsys) -> None:
    model_dir, data_dir = tiny_run
    out = tmp_path / "report"
    argv = ["evaluate", "--model", str(model_dir), "--dataset", str(data_dir), "--split", "test", "--out", str(out)]
    assert main([*argv, "--bootstrap", "25", "--batch-size", "4", "--write-thresholds"]) == 0
    assert "these numbers measure the pipeline, not the model" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} >= {"metrics.json", "report.md", "roc_curves.png", "reliability.png"}
    for picture in ("roc_curves.png", "reliability.png"):
        assert (out / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    document = _strict((out / "metrics.json").read_text())
    report = (out / "report.md").read_text()
    assert "measure the pipeline, not the model" in report and document["small_split_note"]
    assert "chosen per finding on the `validation` split" in report and "`test`: 8 images of 5 patients" in report
    assert document["num_patients"] == 5 and document["scored_findings"] == list(CHESTXRAY14_LABELS)

    # The numbers in metrics.json are scikit-learn's on the model's own probabilities and the split's labels.
    splits = datasets.load_from_disk(str(data_dir))
    model, processor = hf_cxr.registry.load_model(model_dir, device="cpu")
    probabilities = predict_probabilities(model, processor, splits["test"], batch_size=3)
    targets = np.asarray(splits["test"]["labels"])
    for column, name in enumerate(CHESTXRAY14_LABELS):
        expected = roc_auc_score(targets[:, column], probabilities[:, column])
        assert document["per_class"][name]["auc"]["value"] == pytest.approx(expected, abs=1e-5)
    # Thresholds: chosen on validation (never test), written into the model folder's config.
    validation = predict_probabilities(model, processor, splits["validation"])
    chosen = youden_thresholds(validation, np.asarray(splits["validation"]["labels"]), CHESTXRAY14_LABELS)
    assert document["thresholds"] == pytest.approx(chosen)
    # Stored: the thresholds that were chosen, not the 0.5 fallbacks.
    choices = threshold_choices(validation, np.asarray(splits["validation"]["labels"]), CHESTXRAY14_LABELS)
    stored = {name: choice.value for name, choice in choices.items() if choice.chosen}
    config = json.loads((model_dir / "config.json").read_text())
    assert config["decision_thresholds"] == pytest.approx(stored) and "auto_map" in config
    assert AutoConfig.from_pretrained(model_dir).decision_thresholds == pytest.approx(stored)


def test_a_threshold_that_could_not_be_chosen_is_a_fallback_and_not_stored(tiny_run, tmp_path: Path) -> None:
    model_dir, data_dir = tiny_run
    splits = datasets.load_from_disk(str(data_dir))
    labels = np.asarray(splits["validation"]["labels"])
    labels[:, CHESTXRAY14_LABELS.index("Hernia")] = 0.0  # no positive Hernia on the threshold split
    validation = splits["validation"].remove_columns(["labels"]).add_column("labels", labels.tolist())
    splits = datasets.DatasetDict({"validation": validation, "test": splits["test"]})
    report = evaluate_model(model_dir, splits, out_dir=tmp_path, store_thresholds=True, n_bootstrap=0)
    hernia = report.document["per_class"]["Hernia"]
    assert hernia["threshold"] == 0.5 and hernia["threshold_method"] == "fallback_0.5"
    assert hernia["threshold_note"] == "no positives"
    assert "| Hernia | 0.500 (fallback: no positives) |" in (tmp_path / "report.md").read_text()
    config = json.loads((model_dir / "config.json").read_text())
    assert "Hernia" not in config["decision_thresholds"]
    chosen = [name for name, entry in report.document["per_class"].items() if entry["threshold_method"] == "youden_j"]
    assert sorted(config["decision_thresholds"]) == sorted(chosen)
    _strict((tmp_path / "metrics.json").read_text())


def test_thresholds_are_never_chosen_on_the_scored_or_test_split(tiny_run, tmp_path: Path) -> None:
    model_dir, data_dir = tiny_run
    with pytest.raises(ValueError, match="may not be chosen"):
        evaluate_model(model_dir, data_dir, split="validation", out_dir=tmp_path, threshold_split="validation")
    with pytest.raises(ValueError, match="may not be chosen"):
        evaluate_model(model_dir, data_dir, split="validation", out_dir=tmp_path, threshold_split="test")
    with pytest.raises(ValueError, match="no 'train' split"):
        evaluate_model(model_dir, data_dir, split="train", out_dir=tmp_path)


def test_nih_model_on_chexpert_scores_only_shared_findings(tiny_run, tmp_path: Path) -> None:
    """A CheXpert-style split (CheXpert label order, label_mask) built from the fixture images."""
    model_dir, _ = tiny_run
    sample = load_labelled_folder(NIH_DIR)
    rng = np.random.default_rng(1)
    labels = (rng.random((len(sample), len(CHEXPERT_LABELS))) < 0.5).astype(np.float32)
    labels[4], labels[5] = 1.0, 0.0
    mask = np.ones_like(labels)
    pleural = CHEXPERT_LABELS.index("Pleural Effusion")
    mask[[0, 3], pleural] = 0.0  # uncertain under the `ignore` policy
    labels[[0, 3], pleural] = IGNORE_LABEL
    part = sample.remove_columns(["labels"]).add_column("labels", labels.tolist())
    part = part.add_column("label_mask", mask.tolist()).remove_columns(["image_index"])
    chexpert = datasets.DatasetDict({"test": part})
    report = evaluate_model(model_dir, chexpert, split="test", out_dir=tmp_path, threshold_split=None, n_bootstrap=0)
    assert report.scores.label_names == shared_finding_columns()[0]
    assert report.document["cross_dataset"] is True
    assert report.document["finding_map"]["Effusion"] == "Pleural Effusion"
    assert report.document["per_class"]["Effusion"]["ignored"] == 2
    effusion = report.scores.label_names.index("Effusion")
    keep = np.ones(len(part), bool)
    keep[[0, 3]] = False
    expected = roc_auc_score(labels[keep, pleural], report.probabilities[keep, effusion])
    assert report.scores.metrics["auc/Effusion"] == pytest.approx(expected)
    assert "only the shared findings are scored" in (tmp_path / "report.md").read_text()
    with pytest.raises(ValueError, match="cross-dataset"):
        evaluate_model(
            model_dir, datasets.DatasetDict({"test": part, "validation": part}), out_dir=tmp_path, store_thresholds=True
        )
    assert not math.isnan(report.scores.metrics["auc_micro"])
