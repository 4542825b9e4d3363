"""`hf-cxr demo` runs the main job end to end on the bundled sample: convert, train, evaluate, card, pipeline."""

from __future__ import annotations

import json

import datasets
import pytest
from huggingface_hub import DatasetCard, ModelCard

from hf_cxr.cli import main
from hf_cxr.labels import CHESTXRAY14_LABELS


@pytest.mark.slow
def test_demo_converts_trains_evaluates_and_predicts(tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--output-dir", str(out), "--max-steps", "4"]) == 0
    printed = capsys.readouterr().out
    assert "not medical devices" in printed and "not a result" in printed
    assert "best validation macro ROC-AUC" in printed and "test macro ROC-AUC" in printed
    assert printed.count("pipeline('image-classification') on") == 2
    heatmaps = list((out / "heatmaps").glob("*_heatmap.png"))
    assert len(heatmaps) == 1 and str(heatmaps[0]) in printed
    # The converted dataset: the real ChestX-ray14 converter's splits, by patient.
    report = json.loads((out / "data" / "conversion_report.json").read_text())
    assert json.dumps(report).count("train") and (out / "data" / "dataset_dict.json").is_file()
    # The Hub-ready folder: weights, processor, remote code, card, evaluation plots.
    hub = {path.name for path in (out / "hub").rglob("*") if path.is_file()}
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "modeling_cr_msnet.py", "README.md"} <= hub
    assert {"roc_curves.png", "reliability.png"} <= hub
    card = (out / "hub" / "README.md").read_text()
    assert "not a medical device" in card.lower() or "not medical devices" in card.lower()
    assert "optimizer steps on 1 x CPU" in card  # the compute section reads the training run's record
    # Thresholds were chosen on validation and stored in the model's config.
    config = json.loads((out / "model" / "config.json").read_text())
    assert set(config["decision_thresholds"]) <= set(CHESTXRAY14_LABELS) and config["decision_thresholds"]
    _cards_describe_the_run_that_happened(out)


def _strict(text: str) -> object:
    def refuse(constant: str) -> None:
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def _cards_describe_the_run_that_happened(out) -> None:
    """The demo's model card and dataset card state what the run did (needs train.py's run record: `run` and
    `training` in model/metrics.json, and the resolved recipe.yaml)."""
    # Every JSON file the run wrote is strict JSON (no bare NaN).
    written = sorted(out.rglob("*.json"))
    assert {path.relative_to(out).as_posix() for path in written} >= {
        "data/conversion_report.json", "model/metrics.json", "report/metrics.json", "hub/config.json",
    }  # fmt: skip
    for path in written:
        _strict(path.read_text())
    # The dataset card: the real row count, the seeded random split it was made with.
    data = datasets.load_from_disk(str(out / "data"))
    total = sum(part.num_rows for part in data.values())
    assert total == 400
    data_card = (out / "data" / "README.md").read_text()
    assert DatasetCard(data_card).data.size_categories == ["n<1K"] and f"({total} images)" in data_card
    assert "seeded random patient split, NOT the official NIH lists" in data_card
    assert "Protocol: **official NIH lists**" not in data_card
    # The model card: tiny preset, input size, steps run per stage, the random split, the row counts.
    record = _strict((out / "model" / "metrics.json").read_text())
    training = record["training"]
    assert training["step"] == 4 and record["run"]["preset"] == "tiny"
    card = (out / "hub" / "README.md").read_text()
    steps = ", ".join(f"{stage['name']}: {stage['steps']}" for stage in training["stages"])
    assert f"4 optimizer steps ({steps})" in card
    assert "- Model: preset `tiny` (" in card and f"input {record['run']['image_size']} px" in card
    assert "- Splits: a seeded random split by patient (seed 0" in card
    rows = f"training split `train`: {data['train'].num_rows} images; validation split `validation`: "
    assert rows + f"{data['validation'].num_rows} images" in card
    assert "The resolved recipe of this run" in card
    for claim in ("preset: paper", "split_protocol: official", "official NIH lists", "image_size: 224"):
        assert claim not in card, claim
    # 60-odd test images are a pipeline check: nothing in model-index, and the card says why.
    assert not ModelCard(card).data.eval_results and "None of these numbers is in this card's `model-index`" in card
    # Every sample patient has one image: the patient bootstrap says it equals resampling images.
    assert "so this is the same as resampling images" in (out / "report" / "report.md").read_text()
