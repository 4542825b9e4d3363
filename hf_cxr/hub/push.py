"""Publishing a saved model folder: `assemble_upload_folder` writes the exact folder `hf-cxr push` uploads (weights,
config, processor, remote code, the card, `recipe.yaml`, `evaluation/`), re-saving through the Auto classes when the
remote code is incomplete, and `push_model` uploads it (`HfApi.create_repo` plus one `upload_folder`), or with
`dry_run` only writes it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi

from hf_cxr.evaluation.report import REPORT_FILES
from hf_cxr.hub.cards import render_model_card
from hf_cxr.hub.metadata import EVALUATION_FOLDER, RECIPE_NAME

# Files of a saved model folder that belong on the Hub (plus every top-level *.py: the remote code).
MODEL_FILES = ("config.json", "preprocessor_config.json", "processor_config.json")
MODEL_SUFFIXES = (".safetensors", ".safetensors.index.json", ".py")


def _task_auto_class(model_dir: Path) -> Any:
    """The Auto class of the saved model's task (image classification; video classification for CT slabs); raises
    `ValueError` as `load_config` does for a model that is not one of hf-cxr's."""
    from hf_cxr.registry import ARCHITECTURES, load_config

    return ARCHITECTURES[load_config(model_dir).model_type].task_auto_class


def _auto_map_complete(model_dir: Path) -> bool:
    """True when the config and processor name their remote code and every named file is in the folder."""
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    auto_map = config.get("auto_map") or {}
    if not {"AutoConfig", "AutoModel", _task_auto_class(model_dir).__name__} <= set(auto_map):
        return False
    processor_path = model_dir / "preprocessor_config.json"
    if not processor_path.is_file():
        return False
    processor_map = json.loads(processor_path.read_text(encoding="utf-8")).get("auto_map") or {}
    references = [*auto_map.values(), *processor_map.values()]
    modules = {str(reference).split(".")[0] for reference in references if isinstance(reference, str)}
    return "AutoImageProcessor" in processor_map and all((model_dir / f"{module}.py").is_file() for module in modules)


def _copy_model_files(model_dir: Path, target: Path) -> list[str]:
    """Copy the Hub files of a saved folder; re-save through the Auto classes when remote code is incomplete."""
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"'{model_dir}' is not a saved model folder (no config.json)")
    if (model_dir / "pytorch_model.bin").is_file() and not any(model_dir.glob("*.safetensors")):
        raise ValueError(f"'{model_dir}' holds pickled weights only; hf-cxr publishes safetensors (save_pretrained)")
    if not _auto_map_complete(model_dir):
        from hf_cxr.registry import load_model  # hf-cxr's registered classes: save_pretrained writes auto_map

        model, processor = load_model(model_dir, device="cpu")
        model.save_pretrained(target)
        processor.save_pretrained(target)
        return sorted(path.name for path in target.iterdir())
    copied = []
    for path in sorted(model_dir.iterdir()):
        if path.is_file() and (path.name in MODEL_FILES or path.name.endswith(MODEL_SUFFIXES)):
            shutil.copy2(path, target / path.name)
            copied.append(path.name)
    if not any(name.endswith(".safetensors") for name in copied):
        raise FileNotFoundError(f"'{model_dir}' has no *.safetensors weights")
    return copied


def assemble_upload_folder(
    model_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    repo_id: str,
    report_dir: str | os.PathLike[str] | None = None,
    recipe: str | os.PathLike[str] | None = None,
    training_dataset: str | None = None,
    dataset_id: str | None = None,
    license: str | None = None,
) -> Path:
    """Write the exact folder `push` uploads: weights, config (auto_map), processor, remote code, README.md card,
    `recipe.yaml` when known, and `evaluation/` (report, metrics, plots) when a report folder is given."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"'{out_dir}' is not empty; the upload folder must hold only what is uploaded")
    out_dir.mkdir(parents=True, exist_ok=True)
    _copy_model_files(model_dir, out_dir)
    recipe_path = Path(recipe) if recipe is not None else model_dir / RECIPE_NAME
    if recipe_path.is_file():
        shutil.copy2(recipe_path, out_dir / RECIPE_NAME)
    if report_dir is not None:
        evaluation = out_dir / EVALUATION_FOLDER
        evaluation.mkdir()
        for name in REPORT_FILES:
            source = Path(report_dir) / name
            if not source.is_file():
                raise FileNotFoundError(f"'{source}' missing: pass the --out folder of `hf-cxr evaluate`")
            shutil.copy2(source, evaluation / name)
    card = render_model_card(
        out_dir,
        repo_id,
        report_dir,
        recipe,  # None: the model folder's own recipe.yaml (copied into out_dir), the run's record
        training_dataset,
        dataset_id,
        license,
        training_metrics=model_dir / "metrics.json",
    )
    card.save(out_dir / "README.md")
    return out_dir


@dataclass
class PushResult:
    """The folder that was (or, in a dry run, would be) uploaded and the upload's commit, if any."""

    folder: Path | None
    files: list[str]
    repo_url: str | None = None
    commit_url: str | None = None


def _listing(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


def push_model(
    model_dir: str | os.PathLike[str],
    repo_id: str,
    private: bool = False,
    report_dir: str | os.PathLike[str] | None = None,
    dry_run: bool = False,
    out_dir: str | os.PathLike[str] | None = None,
    recipe: str | os.PathLike[str] | None = None,
    training_dataset: str | None = None,
    dataset_id: str | None = None,
    license: str | None = None,
    token: str | None = None,
    commit_message: str = "Upload hf-cxr model, processor, remote code and card",
) -> PushResult:
    """Assemble the upload folder and publish it (`create_repo` + `upload_folder`); `dry_run` only writes it to
    `out_dir`. Without `dry_run` the folder is assembled in a temporary directory and removed afterwards."""
    options = dict(
        report_dir=report_dir, recipe=recipe, training_dataset=training_dataset, dataset_id=dataset_id, license=license
    )
    if dry_run:
        if out_dir is None:
            raise ValueError("--dry-run needs --out: the folder that would be uploaded is written there")
        folder = assemble_upload_folder(model_dir, out_dir, repo_id, **options)
        return PushResult(folder, _listing(folder))
    with tempfile.TemporaryDirectory(prefix="hf-cxr-push-") as staging:
        folder = assemble_upload_folder(model_dir, Path(staging) / "upload", repo_id, **options)
        files = _listing(folder)
        api = HfApi(token=token)
        repo_url = api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id, repo_type="model", folder_path=str(folder), commit_message=commit_message
        )
    return PushResult(None, files, str(repo_url), getattr(commit, "commit_url", None) or str(commit))
