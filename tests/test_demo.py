"""`hf-cxr demo` runs the main job end to end on the bundled sample: convert, train, evaluate, card, pipeline."""

from __future__ import annotations

import json

from hf_cxr.cli import main
from hf_cxr.labels import CHESTXRAY14_LABELS


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
