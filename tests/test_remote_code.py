"""A saved model runs as remote code with only the dependencies the README declares for it.

Remote code may import torch, timm, transformers, safetensors, numpy and Pillow; DICOM needs pydicom, imported only
when a DICOM is read. The check loads every architecture by repo id from a Hugging Face cache in a fresh interpreter
where `hf_cxr` and `pydicom` cannot be imported: transformers scans the imports of hub-cached module files (loading
from a local folder skips part of that scan, so only a repo id shows a missing package).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from conftest import FIXTURES, NIH_DIR
from test_image_processing import write_dicom
from transformers import pipeline
from transformers.dynamic_module_utils import get_imports

import hf_cxr
from hf_cxr.hub import add_to_cache
from hf_cxr.registry import ARCHITECTURES

IMAGE_CLASSIFIERS = sorted(name for name in ARCHITECTURES if name != "mmcaf_net")
# The packages the README declares for remote code (PIL is Pillow's import name; huggingface_hub comes with
# transformers).
REMOTE_CODE_PACKAGES = {"torch", "timm", "transformers", "huggingface_hub", "safetensors", "numpy", "PIL"}
CT_SERIES = (
    FIXTURES
    / "lung_pet_ct_dx"
    / "Lung_Dx-A0002"
    / "04-25-2007-NA-ThoraxAThoraxRoutine Adult-34834"
    / "3.000000-ThoraxRoutine  8.0.0  B40f-10983"
)
CLINICAL = {"Sex": "F", "Age": 58, "T-Stage": "T1b", "N-Stage": "N2", "Ｍ-Stage": "M1a", "Smoking History": 0}

# Runs in the blocked interpreter. argv: the JSON file the parent wrote (repo ids, inputs, expected scores).
CHILD = r'''
import sys


class Missing:
    """Makes these packages unimportable, as on a machine where they are not installed."""

    BLOCKED = {"hf_cxr", "pydicom"}

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in self.BLOCKED:
            raise ModuleNotFoundError(f"No module named '{name}'", name=name)
        return None


sys.meta_path.insert(0, Missing())

import json

import torch
from transformers import AutoImageProcessor, AutoModelForVideoClassification, pipeline

torch.set_num_threads(1)
plan = json.load(open(sys.argv[1]))
remote = {"trust_remote_code": True}


def check(condition, message):
    if not condition:
        sys.exit(message)


def expect_missing_pydicom(call, what):
    try:
        call()
    except ImportError as error:
        check("pydicom" in str(error), f"{what}: the error does not name pydicom: {error}")
        return
    sys.exit(f"{what}: no ImportError without pydicom")


for repo, expected in plan["classifiers"].items():
    processor = AutoImageProcessor.from_pretrained(repo, **remote)
    check(type(processor).__module__.startswith("transformers_modules"), f"{repo}: processor {type(processor)}")
    pixel_values = processor(plan["png"], return_tensors="pt")["pixel_values"]
    check(pixel_values.ndim == 4 and pixel_values.shape[0] == 1, f"{repo}: pixel_values {tuple(pixel_values.shape)}")
    standard = pipeline("image-classification", model=repo, **remote)
    cxr = pipeline("chest-x-ray-classification", model=repo, **remote)
    check(type(cxr).__module__.startswith("transformers_modules"), f"{repo}: pipeline class {type(cxr)}")
    runs = {"image-classification": standard(plan["png"], top_k=len(expected)), cxr.task: cxr(plan["png"])}
    for task, scores in runs.items():
        got = {entry["label"]: entry["score"] for entry in scores}
        check(got.keys() == expected.keys(), f"{repo} {task}: labels {sorted(got)}")
        worst = max(abs(got[label] - score) for label, score in expected.items())
        check(worst < 1e-5, f"{repo} {task}: scores differ from the saved model's by {worst}")
    expect_missing_pydicom(lambda: processor(plan["dicom"]), f"{repo} processor on a DICOM")
    expect_missing_pydicom(lambda: cxr(plan["dicom"]), f"{repo} chest-x-ray-classification on a DICOM")

ct_repo = plan["ct_repo"]
processor = AutoImageProcessor.from_pretrained(ct_repo, **remote)
check(type(processor).__module__.startswith("transformers_modules"), f"{ct_repo}: processor {type(processor)}")
model = AutoModelForVideoClassification.from_pretrained(ct_repo, **remote)
check(type(model).__module__.startswith("transformers_modules"), f"{ct_repo}: model {type(model)}")
expect_missing_pydicom(lambda: processor(plan["ct_series"], clinical=plan["clinical"]), f"{ct_repo} on a DICOM series")
print("ok")
'''


def test_with_hf_cxr_imported_the_registered_pipeline_runs_without_trust_remote_code(tmp_path: Path) -> None:
    """The saved `custom_pipelines` entry (for environments without hf-cxr) must not make `pipeline()` demand
    `trust_remote_code` when hf-cxr has registered the task itself."""
    model = hf_cxr.build_model("cr_msnet", "tiny").eval()
    model.save_pretrained(tmp_path)
    hf_cxr.build_image_processor("cr_msnet", "tiny").save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["custom_pipelines"] == {
        hf_cxr.CXR_TASK: {
            "impl": "pipeline_cxr.ChestXRayClassificationPipeline",
            "pt": ["AutoModelForImageClassification"],
        }
    }
    assert (tmp_path / "pipeline_cxr.py").is_file()
    classify = pipeline(hf_cxr.CXR_TASK, model=str(tmp_path))
    assert type(classify) is hf_cxr.ChestXRayClassificationPipeline
    assert len(classify(str(sorted((NIH_DIR / "images").glob("*.png"))[0]))) == model.config.num_labels
    classify.save_pretrained(tmp_path / "again")  # re-saving keeps the entry
    assert json.loads((tmp_path / "again" / "config.json").read_text())["custom_pipelines"] == saved["custom_pipelines"]


def test_saved_models_run_without_hf_cxr_and_pydicom(tmp_path: Path) -> None:
    png = sorted((NIH_DIR / "images").glob("*.png"))[0]
    classifiers = {}
    for model_type in IMAGE_CLASSIFIERS:
        model = hf_cxr.build_model(model_type, "tiny").eval()
        processor = hf_cxr.build_image_processor(model_type, "tiny")
        folder = tmp_path / "models" / model_type
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        repo_id = f"org/{model_type.replace('_', '-')}"
        add_to_cache(folder, repo_id, cache_dir=tmp_path / "cache")
        with torch.no_grad():
            probabilities = torch.sigmoid(model(**processor(str(png), return_tensors="pt")).logits)[0]
        classifiers[repo_id] = {model.config.id2label[i]: float(p) for i, p in enumerate(probabilities)}
    ct_folder = tmp_path / "models" / "mmcaf_net"
    hf_cxr.build_model("mmcaf_net", "tiny").save_pretrained(ct_folder)
    hf_cxr.build_image_processor("mmcaf_net", "tiny").save_pretrained(ct_folder)
    add_to_cache(ct_folder, "org/mmcaf-net", cache_dir=tmp_path / "cache")
    # What transformers requires of a remote-code file (its imports outside `try` blocks): only the declared packages.
    for source in sorted((tmp_path / "models").glob("*/*.py")):
        packages = set(get_imports(source)) - set(sys.stdlib_module_names)
        assert packages <= REMOTE_CODE_PACKAGES, f"{source.parent.name}/{source.name}"
    dicom = write_dicom(tmp_path / "cxr.dcm", np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    plan = {
        "classifiers": classifiers,
        "png": str(png),
        "dicom": str(dicom),
        "ct_repo": "org/mmcaf-net",
        "ct_series": str(CT_SERIES),
        "clinical": CLINICAL,
    }
    (tmp_path / "plan.json").write_text(json.dumps(plan, ensure_ascii=False))
    (tmp_path / "child.py").write_text(CHILD, encoding="utf-8")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_CACHE": str(tmp_path / "cache"),
           "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "OMP_NUM_THREADS": "1"}  # fmt: skip
    result = subprocess.run(
        [sys.executable, str(tmp_path / "child.py"), str(tmp_path / "plan.json")],
        capture_output=True, text=True, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stdout + result.stderr[-3000:]
