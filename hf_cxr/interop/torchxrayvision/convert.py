"""Converting a weight set into an hf-cxr model folder: `weights_path` finds the release file (hf-cxr never
downloads it), `convert_state_dict` maps torchxrayvision's state dict onto `TorchXRayVisionForImageClassification`
(keeping only the trained outputs), `build_imported_model` builds the model with the weight set's labels and
operating points, and `import_torchxrayvision` writes the folder (weights, config, processor, remote code, card).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from hf_cxr.interop.torchxrayvision.release_files import load_release_file
from hf_cxr.interop.torchxrayvision.weight_sets import DEFAULT_CACHE_DIR, WeightSet, weight_set


def weights_path(
    name: str, weights_file: str | os.PathLike[str] | None = None, cache_dir: str | os.PathLike[str] | None = None
) -> Path:
    """Where the release file of weight set `name` is: `weights_file` when given, else `cache_dir` (default
    torchxrayvision's `~/.torchxrayvision/models_data/`) / its file name.

    Raises `FileNotFoundError` in one line naming the path looked for and how to get the file (hf-cxr never
    downloads it).
    """
    entry = weight_set(name)
    if weights_file is not None:
        path = Path(weights_file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"--weights-file '{path}' does not exist")
        return path
    path = Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR).expanduser() / entry.file_name
    if not path.is_file():
        raise FileNotFoundError(
            f"torchxrayvision weights {name!r} not found at '{path}'; hf-cxr never downloads them: run "
            f"`python -c \"import torchxrayvision as xrv; xrv.models.get_model('{name}')\"` (torchxrayvision saves "
            f"the file there) or download {entry.url} to that path, or pass --weights-file PATH"
        )
    return path


def convert_state_dict(
    entry: WeightSet, source: Mapping[str, torch.Tensor], model: torch.nn.Module, path: Path
) -> dict[str, torch.Tensor]:
    """torchxrayvision's state dict -> `model`'s (a `TorchXRayVisionForImageClassification` of `entry`'s config).

    The backbone keys carry over under `torchxrayvision.backbone.` (timm's DenseNet-121 and ResNet-50 use
    torchxrayvision's and torchvision's names); the classifier (`classifier.*` for the DenseNet, `fc.*` for the
    ResNet) keeps only the rows of the trained outputs. A saved `op_threshs` buffer is dropped (the thresholds come
    from the table, as torchxrayvision sets them). Raises `ValueError` naming the file when keys or shapes differ.
    """
    head = "classifier." if entry.architecture == "densenet121" else "fc."
    expected = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for key, value in source.items():
        if key == "op_threshs" or key.startswith(head):
            continue
        mapped[f"torchxrayvision.backbone.{key}"] = value
    weight, bias = source.get(head + "weight"), source.get(head + "bias")
    outputs = len(entry.outputs)
    if weight is None or bias is None or weight.ndim != 2 or weight.shape[0] != outputs or bias.shape != (outputs,):
        got = "missing" if weight is None or bias is None else f"{tuple(weight.shape)} / {tuple(bias.shape)}"
        raise ValueError(
            f"'{path}' is not a {entry.name} file: its {head}weight/bias should have {outputs} outputs, got {got}"
        )
    kept = torch.tensor(entry.kept_indices)
    mapped["classifier.weight"] = weight.index_select(0, kept).clone()
    mapped["classifier.bias"] = bias.index_select(0, kept).clone()
    missing = sorted(set(expected) - set(mapped))
    unexpected = sorted(set(mapped) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"'{path}' is not a {entry.name} file ({entry.architecture}): {len(missing)} weights missing "
            f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}"
        )
    wrong = [key for key, value in mapped.items() if tuple(value.shape) != tuple(expected[key].shape)]
    if wrong:
        key = wrong[0]
        raise ValueError(
            f"'{path}' is not a {entry.name} file: {key} has shape {tuple(mapped[key].shape)}, expected "
            f"{tuple(expected[key].shape)} ({len(wrong)} tensors differ)"
        )
    return mapped


def build_imported_model(name: str, state_dict: Mapping[str, torch.Tensor], path: Path) -> Any:
    """A `TorchXRayVisionForImageClassification` (eval mode) holding weight set `name`'s converted weights: its
    trained labels, its operating points as `decision_thresholds`, its resolution as `image_size`."""
    from hf_cxr.modeling.torchxrayvision import TorchXRayVisionConfig, TorchXRayVisionForImageClassification

    entry = weight_set(name)
    config = TorchXRayVisionConfig.from_preset(
        entry.architecture,
        torchxrayvision_weights=entry.name,
        image_size=entry.input_resolution,
        labels=entry.labels,
        decision_thresholds=entry.thresholds,
    )
    model = TorchXRayVisionForImageClassification(config)
    model.load_state_dict(convert_state_dict(entry, state_dict, model, path), strict=True)
    return model.eval()


def check_out_dir(out_dir: str | os.PathLike[str], overwrite: bool) -> Path:
    """The output folder, checked before any work: `FileExistsError` when it is a file, or a non-empty folder and
    `overwrite` is not set."""
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out '{out}' is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"--out '{out}' is not empty; choose another folder or pass --overwrite to replace it")
    return out


def import_torchxrayvision(
    weights: str,
    out_dir: str | os.PathLike[str],
    weights_file: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    repo_id: str | None = None,
) -> Path:
    """Convert torchxrayvision weight set `weights` (e.g. `"densenet121-res224-chex"`) into an hf-cxr model folder.

    Args:
        weights: a name of `WEIGHT_SETS`.
        out_dir: the folder to write: `model.safetensors`, `config.json`, `preprocessor_config.json`, the remote
            code (`*.py`) and `README.md` (the model card). Written in a hidden sibling folder and renamed when
            complete.
        weights_file: the release file; default `cache_dir` / its file name.
        cache_dir: torchxrayvision's cache folder (default `~/.torchxrayvision/models_data/`).
        overwrite: replace a non-empty `out_dir`.
        repo_id: the id the card's code examples name (default: the folder's name); `hf-cxr push` renders the card
            again with the real id.

    Returns the folder. Raises `ValueError` (unknown weights, a file that is not that weight set or is refused by
    the safe loader), `FileExistsError` (`out_dir` taken) and `FileNotFoundError` (no release file: the message names
    the path looked for and how to get the file).
    """
    entry = weight_set(weights)
    out = check_out_dir(out_dir, overwrite)
    path = weights_path(entry.name, weights_file, cache_dir)
    model = build_imported_model(entry.name, load_release_file(path), path)

    from hf_cxr.hub import render_model_card
    from hf_cxr.modeling.torchxrayvision import TorchXRayVisionImageProcessor

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        model.save_pretrained(staging)
        TorchXRayVisionImageProcessor(size=entry.input_resolution).save_pretrained(staging)
        render_model_card(staging, repo_id or out.name).save(staging / "README.md")
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out
