"""`hf-cxr demo` runs end to end on the bundled sample: train, evaluate, save, reload through a pipeline."""

from __future__ import annotations

import math

from hf_cxr.cli import main
from hf_cxr.labels import CHESTXRAY14_LABELS


def test_demo_trains_saves_and_predicts_through_the_pipeline(tmp_path, capsys) -> None:
    assert main(["demo", "--output-dir", str(tmp_path / "demo"), "--max-steps", "6"]) == 0
    output = capsys.readouterr().out
    assert "not medical devices" in output and "not a result" in output
    assert "validation macro ROC-AUC" in output
    saved = {path.name for path in (tmp_path / "demo").iterdir()}
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "modeling_cr_msnet.py"} <= saved
    assert output.count("pipeline('image-classification') on") == 2


def test_demo_result_values(tmp_path) -> None:
    from hf_cxr.demo import run_demo

    result = run_demo(tmp_path, max_steps=4, batch_size=8)
    assert math.isfinite(result.first_train_loss) and math.isfinite(result.last_train_loss)
    assert 0.0 <= result.validation_macro_auc <= 1.0
    for scores in result.predictions.values():
        assert {item["label"] for item in scores} == set(CHESTXRAY14_LABELS)
        assert all(0.0 < item["score"] < 1.0 for item in scores)
