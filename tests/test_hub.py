"""Model cards (every architecture's template, metadata checked with `huggingface_hub.ModelCard`), the `--dry-run`
folder, the upload up to the request boundary (HfApi mocked: no network), and the templates inside a wheel."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import datasets
import pytest
import torch
from conftest import NIH_DIR
from huggingface_hub import HfApi, ModelCard
from transformers import AutoModelForImageClassification

from hf_cxr.cli import main
from hf_cxr.evaluation import evaluate_model
from hf_cxr.hub import HUB_TAGS, NOT_A_MEDICAL_DEVICE, check_card, push_model, render_model_card
from hf_cxr.labels import CHESTXRAY14_LABELS, CHEXPERT_LABELS, label_maps
from hf_cxr.models import build_image_processor, build_model
from hf_cxr.sample import load_labelled_folder

REPO_ID = "hf-cxr-tests/cr-msnet-tiny"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A saved tiny CR-MSNet and its evaluation report on the NIH fixture images (validation 7, test 8)."""
    base = tmp_path_factory.mktemp("hub")
    sample = load_labelled_folder(NIH_DIR)
    splits = datasets.DatasetDict({"validation": sample.select(range(7)), "test": sample.select(range(7, 15))})
    build_model("cr_msnet", "tiny").save_pretrained(base / "model")
    build_image_processor("cr_msnet", "tiny").save_pretrained(base / "model")
    (base / "model" / "recipe.yaml").write_text("model:\n  model_type: cr_msnet\n  preset: tiny\n")
    evaluate_model(base / "model", splits, out_dir=base / "report", n_bootstrap=20)
    return base / "model", base / "report"


def _config_folder(tmp_path: Path, model_type: str, labels: tuple[str, ...]) -> Path:
    folder = tmp_path / model_type
    folder.mkdir()
    id2label, _ = label_maps(labels)
    config = {"model_type": model_type, "id2label": {str(k): v for k, v in id2label.items()}, "image_size": 224}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    ("model_type", "labels"),
    [
        ("cr_msnet", CHESTXRAY14_LABELS),
        ("ma_msf", CHESTXRAY14_LABELS),
        ("mxa_efficientvit", CHEXPERT_LABELS),
        ("mmcaf_net", ("adenocarcinoma", "squamous_cell_carcinoma")),
    ],
)
def test_every_template_renders_a_valid_card(tmp_path: Path, model_type: str, labels: tuple[str, ...]) -> None:
    card = render_model_card(_config_folder(tmp_path, model_type, labels), f"org/{model_type}")
    reparsed = ModelCard(str(card))
    data = reparsed.data
    expected_tag = "other" if model_type == "mmcaf_net" else "image-classification"  # CT + table: no widget fits
    assert data.library_name == "transformers" and data.pipeline_tag == expected_tag
    assert set(HUB_TAGS) <= set(data.tags) and data.license
    assert NOT_A_MEDICAL_DEVICE in reparsed.text and "## Citation" in reparsed.text
    assert "$" not in reparsed.text.replace("$$", "")  # every template field was filled
    assert "## Intended use" in reparsed.text and "## Limitations and biases" in reparsed.text
    if model_type == "mxa_efficientvit":  # trained on CheXpert: the licence is not Apache
        assert data.license == "other" and data.license_name and data.license_link


def test_card_from_a_report_carries_per_finding_metrics_with_intervals(run) -> None:
    model_dir, report_dir = run
    document = json.loads((report_dir / "metrics.json").read_text())
    card = render_model_card(model_dir, REPO_ID, report_dir)
    results = ModelCard(str(card)).data.eval_results
    by_config = {(r.metric_type, r.metric_config): r for r in results}
    assert by_config[("roc_auc", "macro")].metric_value == pytest.approx(
        document["summary"]["auc_macro"]["value"], 1e-3
    )
    defined = [name for name, entry in document["per_class"].items() if entry["auc"]["value"] is not None]
    undefined = [name for name, entry in document["per_class"].items() if entry["auc"]["value"] is None]
    assert defined and undefined  # the fixture split has findings with one class only
    for name in defined:
        result = by_config[("roc_auc", name)]
        assert result.metric_value == pytest.approx(document["per_class"][name]["auc"]["value"], abs=1e-4)
        assert result.metric_args["ci95"] == document["per_class"][name]["auc"]["ci95"]
        assert result.dataset_split == "test" and result.task_type == "image-classification"
    assert not any(("roc_auc", name) in by_config for name in undefined)  # never written as a number
    assert "measure the pipeline, not the model" in card.text and "recipe.yaml" in card.text


def test_compute_section_counts_the_weights_and_reports_the_recorded_run(run, tmp_path: Path) -> None:
    model_dir, _ = run
    parameters = sum(p.numel() for p in build_model("cr_msnet", "tiny").state_dict().values())
    card = render_model_card(model_dir, REPO_ID)
    assert f"- Parameters: {parameters / 1e6:.2f} M" in card.text
    assert "hardware and time were not recorded" in card.text
    recorded = tmp_path / "recorded"
    shutil.copytree(model_dir, recorded)
    compute = {"device": "NVIDIA H100 80GB HBM3", "processes": 2, "mixed_precision": "bf16",
               "batch_size_per_device": 32, "gradient_accumulation_steps": 1, "wall_seconds": 5400.0}  # fmt: skip
    (recorded / "metrics.json").write_text(json.dumps({"training": {"step": 1200, "compute": compute}}))
    text = render_model_card(recorded, REPO_ID).text
    assert "1200 optimizer steps on 2 x NVIDIA H100 80GB HBM3, mixed precision bf16, batch 32 per device" in text
    assert "1.50 h of wall-clock time" in text


def test_check_card_rejects_bad_metadata(run) -> None:
    model_dir, report_dir = run
    card = render_model_card(model_dir, REPO_ID, report_dir)
    check_card(card)
    broken = ModelCard(str(card))
    broken.data.tags = ["medical"]
    broken.data.pipeline_tag = "text-classification"
    with pytest.raises(ValueError, match=r"pipeline_tag.*missing tags"):
        check_card(broken)
    no_statement = ModelCard(str(card).replace(NOT_A_MEDICAL_DEVICE, "Use freely."))
    with pytest.raises(ValueError, match="not-a-medical-device"):
        check_card(no_statement)


def _listing(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()}


def test_dry_run_writes_the_exact_upload_folder(run, tmp_path: Path) -> None:
    model_dir, report_dir = run
    (model_dir / "optimizer.pt").write_bytes(b"not for the Hub")
    out = tmp_path / "upload"
    argv = ["push", "--model", str(model_dir), "--repo-id", REPO_ID, "--report", str(report_dir)]
    assert main([*argv, "--dry-run", "--out", str(out)]) == 0
    files = _listing(out)
    expected = {"README.md", "config.json", "preprocessor_config.json", "model.safetensors", "recipe.yaml"}
    expected |= {f"evaluation/{name}" for name in ("metrics.json", "report.md", "roc_curves.png", "reliability.png")}
    assert expected <= files and "optimizer.pt" not in files
    config = json.loads((out / "config.json").read_text())
    for module in {reference.split(".")[0] for reference in config["auto_map"].values()}:
        assert f"{module}.py" in files
    assert {"AutoConfig", "AutoModel", "AutoModelForImageClassification"} <= set(config["auto_map"])
    assert not (files - expected - {name for name in files if name.endswith(".py")})  # nothing else
    check_card(ModelCard.load(out / "README.md"))
    # The folder is a working model: same logits as the source folder.
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        original = AutoModelForImageClassification.from_pretrained(model_dir).eval()(pixel_values=pixels).logits
        uploaded = AutoModelForImageClassification.from_pretrained(out).eval()(pixel_values=pixels).logits
    torch.testing.assert_close(uploaded, original, rtol=0, atol=0)
    with pytest.raises(FileExistsError):
        push_model(model_dir, REPO_ID, dry_run=True, out_dir=out)


def test_upload_goes_through_create_repo_and_upload_folder(run, tmp_path: Path, monkeypatch) -> None:
    model_dir, report_dir = run
    calls: list[tuple[str, dict]] = []
    uploaded: dict[str, set[str]] = {}

    def create_repo(self, **kwargs):
        calls.append(("create_repo", kwargs))
        return f"https://huggingface.co/{kwargs['repo_id']}"

    def upload_folder(self, **kwargs):
        calls.append(("upload_folder", kwargs))
        folder = Path(kwargs["folder_path"])
        uploaded["files"] = _listing(folder)
        uploaded["card"] = {(folder / "README.md").read_text()}
        return type("Commit", (), {"commit_url": f"https://huggingface.co/{kwargs['repo_id']}/commit/abc"})()

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    result = push_model(model_dir, REPO_ID, private=True, report_dir=report_dir, token="hf_test_token")
    assert [name for name, _ in calls] == ["create_repo", "upload_folder"]
    assert calls[0][1] == {"repo_id": REPO_ID, "repo_type": "model", "private": True, "exist_ok": True}
    assert calls[1][1]["repo_id"] == REPO_ID and calls[1][1]["repo_type"] == "model"
    assert not Path(calls[1][1]["folder_path"]).exists()  # the staging folder is removed afterwards
    dry = push_model(model_dir, REPO_ID, report_dir=report_dir, dry_run=True, out_dir=tmp_path / "dry")
    assert uploaded["files"] == set(dry.files) == set(result.files)
    assert result.commit_url.endswith("/commit/abc")
    assert uploaded["card"] == {(tmp_path / "dry" / "README.md").read_text()}


def test_templates_and_metric_module_ship_in_the_wheel(tmp_path: Path) -> None:
    """Build the wheel, import hf_cxr from it (not the checkout) and read a card template and the metric module."""
    # Build from a copy of the source files (tracked and untracked, not ignored): no build/ left in the checkout.
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    source = tmp_path / "source"
    for name in listed.stdout.splitlines():
        if (ROOT / name).is_file() and not name.startswith("tests/"):
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    wheel_command = [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation"]
    build = subprocess.run(
        [*wheel_command, "-q", "-w", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert build.returncode == 0, build.stderr
    wheel = next(tmp_path.glob("hf_cxr-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for card in ("model_cr_msnet", "model_ma_msf", "model_mxa_efficientvit", "model_mmcaf_net", "dataset_chexpert"):
        assert f"hf_cxr/hub_cards/{card}.md" in names
    assert "hf_cxr/evaluation/cxr_multilabel/cxr_multilabel.py" in names
    installed = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(installed)
    script = (
        "import os, sys\n"
        "import hf_cxr, evaluate, numpy as np\n"
        "from hf_cxr.hub import model_card_template\n"
        "from hf_cxr.data._common import hub_cards_dir\n"
        "from hf_cxr.evaluation import evaluate_module_path\n"
        f"assert hf_cxr.__file__.startswith({str(installed)!r}), hf_cxr.__file__\n"
        f"assert evaluate_module_path().startswith({str(installed)!r})\n"
        "assert 'CR-MSNet' in model_card_template('cr_msnet')\n"
        "assert (hub_cards_dir() / 'dataset_chestxray14.md').is_file()\n"
        "metric = evaluate.load(evaluate_module_path())\n"
        "result = metric.compute(predictions=[[0.9], [0.2], [0.6]], references=[[1], [0], [0]], label_names=['x'])\n"
        "assert result['auc/x'] == 1.0, result\n"
    )
    env = {"PYTHONPATH": str(installed), "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    env |= {key: value for key, value in os.environ.items() if key in ("PATH", "HOME", "OMP_NUM_THREADS")}
    check = subprocess.run(  # run outside the checkout, so that the checkout's hf_cxr is not on sys.path
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path
    )
    assert check.returncode == 0, check.stderr[-3000:]
