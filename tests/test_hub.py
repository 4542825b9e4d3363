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
import numpy as np
import pytest
import torch
import yaml
from conftest import NIH_DIR
from huggingface_hub import HfApi, ModelCard
from transformers import AutoModelForImageClassification

from hf_cxr.cli import main
from hf_cxr.evaluation import evaluate_model, score_predictions
from hf_cxr.evaluation.report import metrics_document
from hf_cxr.evaluation.scores import threshold_choices
from hf_cxr.hub import HUB_TAGS, NOT_A_MEDICAL_DEVICE, check_card, push_model, render_model_card
from hf_cxr.labels import CHESTXRAY14_LABELS, CHEXPERT_LABELS, label_maps
from hf_cxr.registry import build_image_processor, build_model
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


def _strict(text: str) -> dict:
    """json.loads that refuses NaN and infinities (what a strict parser, e.g. a browser's, does)."""

    def refuse(constant: str) -> None:
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_small_split_numbers_stay_out_of_model_index(run) -> None:
    """The fixture's 8-image test split is a pipeline check: its numbers are in the prose, not in `model-index`."""
    model_dir, report_dir = run
    document = _strict((report_dir / "metrics.json").read_text())
    assert document["num_images"] == 8
    card = render_model_card(model_dir, REPO_ID, report_dir)
    reparsed = ModelCard(str(card))
    assert not reparsed.data.eval_results and "model-index" not in reparsed.data.to_dict()
    assert "None of these numbers is in this card's `model-index` metadata" in card.text
    assert "8 images (under 1000)" in card.text and "measure the pipeline, not the model" in card.text
    macro = document["summary"]["auc_macro"]["value"]
    assert f"Macro ROC-AUC {macro:.3f}" in card.text  # still reported, in prose
    check_card(reparsed)


def _large_document(protocol: str = "official") -> dict:
    """An evaluation document of a 1200-image split (patients of two images) in which Hernia has 12 positives and
    Pneumonia none (undefined AUC); the other findings have hundreds of both classes."""
    rng = np.random.default_rng(0)
    prevalence = np.full(len(CHESTXRAY14_LABELS), 0.3)
    prevalence[CHESTXRAY14_LABELS.index("Pneumonia")] = 0.0
    targets = (rng.random((1200, len(CHESTXRAY14_LABELS))) < prevalence).astype(float)
    hernia = CHESTXRAY14_LABELS.index("Hernia")
    targets[:, hernia] = 0.0
    targets[:12, hernia] = 1.0
    probabilities = np.clip(0.3 * targets + rng.random(targets.shape) * 0.7, 0, 1)
    choices = threshold_choices(probabilities, targets, CHESTXRAY14_LABELS)
    scores = score_predictions(
        probabilities, targets, CHESTXRAY14_LABELS, np.arange(1200) // 2,
        {name: choice.value for name, choice in choices.items()}, n_bootstrap=10,
    )  # fmt: skip
    settings = {"split_protocol": protocol, "seed": 3, "validation_fraction": 0.1, "test_fraction": 0.2}
    methods = {name: {"method": choice.method, "reason": choice.reason} for name, choice in choices.items()}
    context = {"model": "m", "model_type": "cr_msnet", "dataset": "/data/nih", "split": "test",
               "threshold_split": "validation", "threshold_source": "chosen per finding on the `validation` split",
               "dataset_labels": list(CHESTXRAY14_LABELS), "threshold_methods": methods,
               "dataset_conversion": {"name": "chestxray14", "settings": settings}}  # fmt: skip
    return metrics_document(scores, context)


def test_model_index_carries_large_split_metrics_except_findings_with_few_cases(tmp_path: Path) -> None:
    document = _large_document()
    folder = _config_folder(tmp_path, "cr_msnet", CHESTXRAY14_LABELS)
    card = render_model_card(folder, REPO_ID, document)
    results = ModelCard(str(card)).data.eval_results
    by_config = {(r.metric_type, r.metric_config): r for r in results}
    assert by_config[("roc_auc", "macro")].metric_value == pytest.approx(
        document["summary"]["auc_macro"]["value"], abs=1e-4
    )
    published = {config for kind, config in by_config if kind == "roc_auc"} - {"macro", "micro"}
    # Hernia (12 positives) is left out by the rule; Pneumonia (no positives) has no AUC to publish.
    assert published == set(CHESTXRAY14_LABELS) - {"Hernia", "Pneumonia"}
    for name in published:
        result = by_config[("roc_auc", name)]
        assert result.metric_value == pytest.approx(document["per_class"][name]["auc"]["value"], abs=1e-4)
        assert result.metric_args["ci95"] == document["per_class"][name]["auc"]["ci95"]
        assert result.dataset_split == "test" and result.dataset_name == "NIH ChestX-ray14"
        assert result.dataset_config == "official" and result.dataset_args["num_images"] == 1200
        assert result.metric_args["bootstrap"] == "10 resamples by patient"
    left_out = "except the per-finding ROC-AUC of: Pneumonia (0 positives, 1200 negatives); Hernia (12 positives"
    assert left_out in card.text
    assert "official lists" in card.text
    # A seeded random split is never published under the bare name of the official benchmark.
    random_card = render_model_card(folder, REPO_ID, _large_document("random_patient"))
    names = {result.dataset_name for result in ModelCard(str(random_card)).data.eval_results}
    assert names == {"NIH ChestX-ray14 (seeded random patient split, seed 3; not the official lists)"}
    assert "a seeded random split by patient (seed 3" in random_card.text


def test_fallback_thresholds_are_reported_as_such(tmp_path: Path) -> None:
    """Pneumonia has no positives on the threshold split: its 0.5 is a fallback, in the table and the config's."""
    document = _large_document()
    pneumonia = document["per_class"]["Pneumonia"]
    assert pneumonia["threshold_method"] == "fallback_0.5" and pneumonia["threshold_note"] == "no positives"
    assert document["per_class"]["Effusion"]["threshold_method"] == "youden_j"
    folder = _config_folder(tmp_path, "cr_msnet", CHESTXRAY14_LABELS)
    chosen = {name: entry["threshold"] for name, entry in document["per_class"].items()
              if entry["threshold_method"] == "youden_j"}  # fmt: skip
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "decision_thresholds": chosen}))
    text = render_model_card(folder, REPO_ID, document).text
    assert "| Pneumonia | 0 | n/a | n/a | 0.500 (fallback: no positives) |" in text
    assert "no threshold could be chosen on `validation` for 1 of 14 findings, which use the 0.5 fallback" in text
    assert "| Pneumonia | 0.5 | none stored, 0.5 applies: no threshold could be chosen on `validation` (no " in text
    assert f"| Effusion | {chosen['Effusion']:.3f} | chosen on the `validation` split by Youden's J" in text
    assert "Youden's J: " not in text  # no sentence claiming every threshold was chosen that way


def _recorded_run(folder: Path, protocol: str = "random_patient") -> dict:
    """train.py's records in a model folder, as the training contract describes them: the resolved recipe
    (which still holds the recipe's planned epochs) and metrics.json with `run` and `training`."""
    recipe = {"model": {"model_type": "cr_msnet", "preset": "tiny", "overrides": {}},
              "data": {"train_split": "train", "validation_split": "validation"},
              "curriculum": {"stage1": {"exclude_no_finding": True, "loss": "bce", "epochs": 5},
                             "stage2": {"exclude_no_finding": False, "epochs": 20}},
              "optimization": {"batch_size": 16, "learning_rate": 0.001, "seed": 0}}  # fmt: skip
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    conversion = {"image_size": None, "seed": 0, "validation_fraction": 0.15, "split_protocol": protocol,
                  "test_fraction": 0.15 if protocol == "random_patient" else None, "skip_bad": False,
                  "table": "Data_Entry_2017_v2020.csv"}  # fmt: skip
    run = {"command_line": ["hf-cxr", "train", "--model", "cr_msnet", "--preset", "tiny", "--max-steps", "120"],
           "model_type": "cr_msnet", "preset": "tiny", "image_size": 64, "recipe": "cr_msnet_chestxray14",
           "seed": 0, "max_steps": 120,
           "dataset": {"source": str(folder.parent / "data"), "name": "chestxray14", "train_split": "train",
                       "validation_split": "validation", "rows": {"train": 235, "validation": 60},
                       "conversion": conversion}}  # fmt: skip
    stages = [{"name": "stage1", "steps": 24, "exclude_no_finding": True, "learning_rate": 0.001, "loss": "bce"},
              {"name": "stage2", "steps": 96, "exclude_no_finding": False, "learning_rate": 0.001}]  # fmt: skip
    compute = {"device": "CPU (2 logical cores)", "processes": 1, "mixed_precision": "no",
               "batch_size_per_device": 16, "gradient_accumulation_steps": 1, "wall_seconds": 63.2}  # fmt: skip
    training = {"step": 120, "total_steps": 120, "finished": True, "best_step": 90, "best_validation_metric": 0.6,
                "stages": stages, "history": [], "compute": compute}  # fmt: skip
    metrics = {"selected_on": "validation", "select_best_by": "auc_macro", "step": 90,
               "validation": {"auc_macro": 0.6, "auc/Hernia": None}, "run": run, "training": training}  # fmt: skip
    (folder / "metrics.json").write_text(json.dumps(metrics, allow_nan=False))
    return metrics


def test_card_states_the_run_that_happened(tmp_path: Path) -> None:
    folder = _config_folder(tmp_path, "cr_msnet", CHESTXRAY14_LABELS)
    _recorded_run(folder)
    text = render_model_card(folder, REPO_ID).text
    assert "- Model: preset `tiny` (" in text and "input 64 px" in text
    assert "120 optimizer steps (stage1: 24, stage2: 96)" in text and "`--max-steps 120`" in text
    assert "best validation `auc_macro`, at step 90" in text
    assert "- Splits: a seeded random split by patient (seed 0: train 0.70, validation 0.15, test 0.15" in text
    assert "training split `train`: 235 images; validation split `validation`: 60 images" in text
    assert "The resolved recipe of this run" in text and "preset: tiny" in text
    assert "hf-cxr train --model cr_msnet --preset tiny --max-steps 120" in text
    assert "NIH ChestX-ray14" in text and "a local folder (`data`)" in text
    claims = ("preset: paper", "preset `paper`", "split_protocol: official", "official NIH lists",
              "NIH's official lists:", "image_size: 224", "overrides, if any, are not included")  # fmt: skip
    for claim in claims:
        assert claim not in text, claim
    # The same run on NIH's official lists says so.
    official = tmp_path / "official"
    shutil.copytree(folder, official)
    _recorded_run(official, "official")
    assert "- Splits: NIH's official lists: `test` is NIH's test list" in render_model_card(official, REPO_ID).text


def test_card_of_an_unrecorded_run_asserts_nothing_about_it(tmp_path: Path) -> None:
    folder = _config_folder(tmp_path, "cr_msnet", CHESTXRAY14_LABELS)
    (folder / "recipe.yaml").write_text("model:\n  model_type: cr_msnet\n  preset: paper\n")
    text = render_model_card(folder, REPO_ID).text
    assert "has no record of its training run" in text and "were not recorded" in text
    assert "whether the recipe includes the run's command-line overrides was not recorded" in text
    assert "The resolved recipe" not in text and "- Model: preset" not in text
    assert "hardware and time were not recorded" in text and "Training length" not in text
    # A record of the steps alone (an older train.py) is stated; what it lacks stays unrecorded.
    (folder / "metrics.json").write_text(json.dumps({"select_best_by": "auc_macro", "step": 3, "training": {
        "step": 4, "total_steps": 4, "best_step": 3, "stages": [{"name": "stage1", "steps": 1},
        {"name": "stage2", "steps": 3}]}}))  # fmt: skip
    text = render_model_card(folder, REPO_ID).text
    assert "- Training length: 4 optimizer steps (stage1: 1, stage2: 3); the weights are" in text
    assert "has no record of its training run" in text and "- Model: preset" not in text
    # A recipe supplied at upload is not presented as the run's.
    supplied = tmp_path / "supplied.yaml"
    supplied.write_text("model:\n  preset: paper\n")
    _recorded_run(folder)
    text = render_model_card(folder, REPO_ID, recipe=supplied).text
    assert "The recipe supplied when this card was made (`hf-cxr push --recipe`)" in text


def test_how_to_use_names_the_remote_code_and_its_pipeline(tmp_path: Path) -> None:
    folder = _config_folder(tmp_path, "cr_msnet", CHESTXRAY14_LABELS)
    text = render_model_card(folder, REPO_ID).text
    assert "import only torch, timm, transformers (with its dependency huggingface_hub), safetensors, numpy" in text
    assert "`pydicom`, imported only when a DICOM is read" in text and "chest-x-ray-classification" not in text
    config = json.loads((folder / "config.json").read_text())
    pipelines = {"chest-x-ray-classification": {"impl": "pipeline_cxr.ChestXRayClassificationPipeline"}}
    (folder / "config.json").write_text(json.dumps({**config, "custom_pipelines": pipelines}))
    assert "chest-x-ray-classification" not in render_model_card(folder, REPO_ID).text  # listed, code absent
    (folder / "pipeline_cxr.py").write_text("class ChestXRayClassificationPipeline: ...\n")
    text = render_model_card(folder, REPO_ID).text
    assert 'pipeline("chest-x-ray-classification", model=..., trust_remote_code=True)' in text


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


def test_a_folder_with_incomplete_remote_code_is_saved_again_with_all_of_it(tmp_path: Path) -> None:
    """A saved folder missing a file its auto_map names is loaded (hf-cxr's classes, nothing downloaded) and saved
    again into the upload folder, with every remote-code file and the same weights."""
    from hf_cxr.hub.push import assemble_upload_folder

    torch.manual_seed(0)
    model, processor = build_model("cr_msnet", "tiny").eval(), build_image_processor("cr_msnet", "tiny")
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    (tmp_path / "model" / "modeling_cr_msnet.py").unlink()
    assemble_upload_folder(tmp_path / "model", tmp_path / "upload", REPO_ID)
    assert (tmp_path / "upload" / "modeling_cr_msnet.py").is_file()
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "upload").eval()
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(reloaded(pixels).logits, model(pixels).logits)


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


@pytest.mark.slow
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
