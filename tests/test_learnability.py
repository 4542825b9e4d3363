"""The learnability harness (`hf_cxr.benchmarks.learnability`, `hf-cxr bench --learnability`) at CPU sizes: held-out
backgrounds, exact grid cells, the calibration rule, seeded equal-budget training, the report, and input errors.
Large bright nodules are learned in a CPU minute; whether the architectures learn the benchmark's small ones takes
thousands of GPU steps: that is the benchmark's run, not a test."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from hf_cxr.benchmarks.learnability import (
    LABELS,
    SMALL_SETTINGS,
    LearnabilitySettings,
    ModelRun,
    Probe,
    build_splits,
    calibrate_budget,
    cell_name,
    format_markdown,
    run_learnability,
)
from hf_cxr.benchmarks.lesions import no_finding_images, resize_square
from hf_cxr.cli import main as cli_main

# Smaller still than `--small`: seconds on two cores.
QUICK = replace(SMALL_SETTINGS, checkpoints=(3, 6), train_samples=48, test_samples_per_cell=24, warmup_steps=2)


@pytest.fixture(scope="module")
def backgrounds() -> list[np.ndarray]:
    return no_finding_images()[:24]


def test_test_images_sit_on_held_out_backgrounds_with_each_cells_exact_nodules(backgrounds) -> None:
    data = build_splits(QUICK, backgrounds)
    assert sorted(data.train_backgrounds + data.test_backgrounds) == list(range(24))
    assert len(data.test_backgrounds) == round(24 * QUICK.test_fraction)
    assert data.train.pixels.shape == (48, 1, 64, 64) and data.test.pixels.shape == (4 * 24, 1, 64, 64)
    assert np.bincount(data.test.cells).tolist() == [24, 24, 24, 24]

    # An image with no finding is its background untouched: every such test image is a test background.
    def key(image) -> bytes:
        return np.asarray(image, dtype=np.float32).tobytes()

    test_keys = {key(resize_square(backgrounds[i], 64)) for i in data.test_backgrounds}
    train_keys = {key(resize_square(backgrounds[i], 64)) for i in data.train_backgrounds}
    untouched = data.test.pixels[data.test.labels.sum(dim=1) == 0][:, 0].numpy()
    assert len(untouched) > 0
    assert all(key(image) in test_keys and key(image) not in train_keys for image in untouched)
    nodule = LABELS.index("Nodule")
    assert 0.3 < data.test.labels[:, nodule].mean() < 0.7  # half of each block carries the cell's nodule
    assert data.train.labels[:, LABELS.index("Lucency")].mean() < 0.1  # the rare finding stays rare in training


def _run(aucs: list[float]) -> ModelRun:
    middle = cell_name(*QUICK.middle_cell)
    run = ModelRun("baseline", "timm baseline", 1)
    for step, auc in zip((100, 200, 400), aucs, strict=True):
        run.probes.append(Probe(step, 1.0, {middle: auc}, {}))
    return run


def test_the_budget_is_the_first_checkpoint_where_the_baseline_reaches_the_target() -> None:
    assert calibrate_budget(_run([0.55, 0.74, 0.9]), QUICK) == (200, "calibrated")
    assert calibrate_budget(_run([0.97, 0.99, 1.0]), QUICK) == (100, "too easy")
    assert calibrate_budget(_run([0.5, 0.6, 0.65]), QUICK) == (400, "not reached")


def test_a_seeded_run_trains_every_model_for_the_same_budget_and_repeats_exactly(backgrounds) -> None:
    settings = replace(QUICK, target_auc=(0.99, 1.0))  # unreachable in 6 steps: the budget is the last checkpoint
    first = run_learnability(settings, models=["ma_msf"], baseline="tiny", device="cpu", backgrounds=backgrounds)
    again = run_learnability(settings, models=["ma_msf"], baseline="tiny", device="cpu", backgrounds=backgrounds)
    assert (first.budget, first.calibration) == (6, "not reached")
    assert [run.name for run in first.runs] == ["torchxrayvision tiny", "ma_msf"]
    assert [run.kind for run in first.runs] == ["baseline", "hf-cxr tiny"]
    for run, repeat in zip(first.runs, again.runs, strict=True):
        assert [probe.step for probe in run.probes] == [3, 6]
        assert [probe.nodule_auc for probe in run.probes] == [probe.nodule_auc for probe in repeat.probes]
        assert [probe.finding_auc for probe in run.probes] == [probe.finding_auc for probe in repeat.probes]
        for probe in run.probes:
            assert len(probe.nodule_auc) == 4 and set(probe.finding_auc) == set(LABELS)
            values = [*probe.nodule_auc.values(), *probe.finding_auc.values(), *probe.train_finding_auc.values()]
            assert all(0.0 <= value <= 1.0 for value in values if not math.isnan(value))
    report = format_markdown(first)
    assert "NOT calibrated" in report and "not evidence about real disease" in report
    assert "| ma_msf | 0.3 |" in report and "| torchxrayvision tiny | baseline |" in report


@pytest.mark.slow
def test_a_baseline_learns_large_bright_nodules_on_unseen_backgrounds() -> None:
    """The harness measures something: 5-cm nodules at contrast 0.5 are learned within 60-120 CPU steps."""
    settings = replace(SMALL_SETTINGS, sizes_mm=(50.0,), contrasts=(0.5,), checkpoints=(60, 120), batch_size=32,
                       train_samples=768, test_samples_per_cell=96, target_auc=(0.8, 0.999))  # fmt: skip
    result = run_learnability(settings, models=[], baseline="tiny", device="cpu")
    assert result.calibration == "calibrated" and result.budget in (60, 120)
    probe = result.runs[0].at(result.budget)
    assert probe.nodule_auc[cell_name(50.0, 0.5)] >= 0.8  # on the 17 held-out backgrounds


def test_a_given_budget_skips_calibration_and_partial_results_are_reported(backgrounds) -> None:
    seen: list[list[str]] = []
    result = run_learnability(
        QUICK, models=["cr_msnet", "ma_msf"], baseline=None, budget=3, device="cpu", backgrounds=backgrounds,
        on_run=lambda partial: seen.append([run.name for run in partial.runs]),
    )  # fmt: skip
    assert (result.budget, result.calibration) == (3, "fixed")
    assert seen == [["cr_msnet"], ["cr_msnet", "ma_msf"]]
    assert all([probe.step for probe in run.probes] == [3] for run in result.runs)
    assert "given on the command line" in format_markdown(result)
    with pytest.raises(ValueError, match="budget: must be one of the checkpoints"):
        run_learnability(QUICK, models=[], budget=5, backgrounds=backgrounds)
    with pytest.raises(ValueError, match="give one, or give a budget"):
        run_learnability(QUICK, models=["ma_msf"], baseline=None, backgrounds=backgrounds)


def test_bad_settings_and_models_are_refused_by_name(backgrounds) -> None:
    with pytest.raises(ValueError, match="checkpoints: must be increasing"):
        LearnabilitySettings(checkpoints=(500, 250))
    with pytest.raises(ValueError, match="contrasts: must be increasing positive values"):
        LearnabilitySettings(contrasts=(0.2, 0.1))
    with pytest.raises(ValueError, match="target_auc"):
        LearnabilitySettings(target_auc=(0.9, 0.8))
    with pytest.raises(ValueError, match="other_sizes_mm: only opacity and effusion"):
        LearnabilitySettings(other_sizes_mm={"nodule": (1.0, 2.0)})
    with pytest.raises(ValueError, match="'mmcaf_net' is not a 2D hf-cxr architecture"):
        run_learnability(QUICK, models=["mmcaf_net"], backgrounds=backgrounds)
    with pytest.raises(ValueError, match=r"effusion from 10\.0 mm is under"):  # 10 mm is under 3 px at 64 px
        build_splits(replace(QUICK, other_sizes_mm={"effusion": (10.0, 20.0)}), backgrounds)
    with pytest.raises(ValueError, match="model_config: image_size, labels are set by the benchmark"):
        LearnabilitySettings(model_config={"labels": ["A"], "image_size": 32})
    with pytest.raises(ValueError, match=r"MAMSFConfig \(ma_msf\) has no field fusion_dimm"):  # before any training
        run_learnability(replace(QUICK, model_config={"fusion_dimm": 8}), models=["ma_msf"], backgrounds=backgrounds)
    with pytest.raises(ValueError, match=r"MAMSFConfig\.fusion must be one of"):  # a value its config refuses
        run_learnability(replace(QUICK, model_config={"fusion": "product"}), models=["ma_msf"], backgrounds=backgrounds)
    with pytest.raises(ValueError, match="model_config: no hf-cxr model is trained"):  # the baseline alone
        run_learnability(replace(QUICK, model_config={"fusion_dim": 8}), models=[], backgrounds=backgrounds)


def test_the_command_writes_the_report_and_its_json(tmp_path) -> None:
    out = tmp_path / "learnability.md"
    argv = ["bench", "--learnability", "--small", "--models", "cr_msnet", "--baselines", "tiny", "--checkpoints",
            "2", "--train-samples", "32", "--test-samples", "16", "--effusion-mm", "30", "45", "--device", "cpu",
            "--out", str(out)]  # fmt: skip
    assert cli_main(argv) == 0
    payload = json.loads(out.with_suffix(".json").read_text())
    assert payload["budget"] == 2 and [run["name"] for run in payload["runs"]] == ["torchxrayvision tiny", "cr_msnet"]
    assert payload["settings"]["image_size"] == 64 and payload["settings"]["train_samples"] == 32
    assert payload["settings"]["other_sizes_mm"] == {"effusion": [30.0, 45.0]}
    assert "## Lesion-insertion learnability" in out.read_text()
    with pytest.raises(SystemExit, match="--small --budget apply to --learnability only"):  # never silently ignored
        cli_main(["bench", "--small", "--budget", "2", "--no-data"])
    with pytest.raises(SystemExit, match="--repeats --no-data do not apply to --learnability"):
        cli_main(["bench", "--learnability", "--small", "--repeats", "2", "--no-data"])
    with pytest.raises(SystemExit, match="one to --presets"):
        cli_main(["bench", "--learnability", "--small", "--presets", "tiny", "paper"])
    with pytest.raises(SystemExit, match=r"--model-config expects key\.path=value, got 'fusion_dim'"):
        cli_main(["bench", "--learnability", "--small", "--model-config", "fusion_dim"])
    with pytest.raises(SystemExit, match="'fusion_kernels=\\[1, 3': the value is not valid YAML"):
        cli_main(["bench", "--learnability", "--small", "--model-config", "fusion_kernels=[1, 3"])
    fixed = tmp_path / "fixed.md"  # no baseline, a given budget, the paper preset with a one-block-per-stage backbone
    argv = ["bench", "--learnability", "--small", "--models", "ma_msf", "--presets", "paper", "--baselines",
            "--budget", "2", "--checkpoints", "2", "--train-samples", "32", "--test-samples", "16", "--device", "cpu",
            "--model-config", "backbone_kwargs.depth_multiplier=0.1", "--model-config", "fusion_dim=256",
            "--out", str(fixed)]  # fmt: skip
    assert cli_main(argv) == 0
    payload = json.loads(fixed.with_suffix(".json").read_text())
    assert payload["calibration"] == "fixed" and [run["name"] for run in payload["runs"]] == ["ma_msf"]
    assert payload["settings"]["preset"] == "paper" and payload["runs"][0]["kind"] == "hf-cxr paper + model_config"
    assert payload["settings"]["model_config"] == {"backbone_kwargs": {"depth_multiplier": 0.1}, "fusion_dim": 256}
    # The paper preset's full-width EfficientNetV2-S with one block per stage: neither the 29 M paper model nor the
    # 0.5 M tiny one.
    assert 5e6 < payload["runs"][0]["parameters"] < 20e6
    assert "paper preset (model_config: backbone_kwargs={'depth_multiplier': 0.1}, fusion_dim=256)" in fixed.read_text()


def test_backgrounds_can_come_from_a_converted_dataset(tmp_path) -> None:
    import datasets

    from hf_cxr.sample import SAMPLE_DIR

    names = sorted((SAMPLE_DIR / "images").glob("*.png"))[:8]
    split = datasets.Dataset.from_dict(
        {"image": [str(path) for path in names], "finding_labels": ["No Finding"] * 8, "view_position": ["PA"] * 8}
    ).cast_column("image", datasets.Image())
    datasets.DatasetDict({"train": split}).save_to_disk(str(tmp_path / "nih"))
    out = tmp_path / "own.md"
    argv = ["bench", "--learnability", "--small", "--models", "--baselines", "tiny", "--checkpoints", "2",
            "--train-samples", "16", "--test-samples", "8", "--device", "cpu", "--backgrounds", str(tmp_path / "nih"),
            "--max-backgrounds", "6", "--out", str(out)]  # fmt: skip
    assert cli_main(argv) == 0
    payload = json.loads(out.with_suffix(".json").read_text())
    assert (payload["train_backgrounds"], payload["test_backgrounds"]) == (4, 2)  # 6 backgrounds, a quarter held out
