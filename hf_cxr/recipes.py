"""Training recipes: YAML files holding a paper's hyper-parameters, and the one schema `train.py` reads.

A recipe is looked up by name in `training_scripts/recipes/` (shipped inside the package as `hf_cxr.recipes_data`)
or given as a path. Command-line flags override its fields. Every key is either used or refused: an unknown
key is an error, so a typo never silently trains something else.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

# The keys a recipe may hold, per section. Descriptive keys (read by no code in train.py): model.backbone_init
# (MMCAF-Net; the 2D recipes state their backbone weights as the model.overrides fields `*backbone_weights`),
# augmentation.normalization (must be `processor`), evaluation.{metrics, threshold, confidence_intervals} (what
# `hf-cxr evaluate` reports). Every `data` key takes effect or is checked against the dataset's conversion report
# (`hf_cxr.training.apply_data_section`): dataset, labels, split_protocol, uncertain_labels, views, task, resize_mode.
# The input size and channels are the model's (preset and model.overrides), not the data section's. CT-only keys
# (MMCAF-Net): data.processor (MMCAFNetProcessor arguments, plus `fit_clinical_statistics: train`),
# data.oversample_minority ({class, target_count, train_only: true}: rows of that class repeated in the training
# split), data.task, augmentation.sharpen, optimization.momentum (SGD), evaluation.{positive_class, patient_level:
# {windows, window_stride, aggregate}} (validation scoring) and the stage keys classification_head / frozen_parts.
RECIPE_SCHEMA: dict[str, set[str]] = {
    "model": {"model_type", "preset", "overrides", "backbone_init"},
    "data": {
        "dataset", "labels", "train_split", "validation_split", "resize_mode", "split_protocol", "uncertain_labels",
        "views", "task", "processor", "oversample_minority",
    },
    "split_protocols": None,  # free-form documentation of the split protocols a recipe supports
    "anchor": {"update", "carry_over_between_stages"},
    "curriculum": None,  # stage name -> STAGE_KEYS
    "augmentation": {
        "random_resized_crop", "horizontal_flip", "rotate", "affine", "elastic", "gaussian_blur", "mixup", "cutmix",
        "sharpen", "normalization",
    },
    "optimization": {
        "optimizer", "learning_rate", "weight_decay", "betas", "eps", "batch_size", "epochs", "scheduler",
        "warmup_epochs", "warmup_learning_rate", "min_learning_rate", "cooldown_epochs", "gradient_clipping", "ema",
        "seed", "mixed_precision", "gradient_accumulation_steps", "momentum",
    },
    "distillation": {"enabled", "teacher", "teacher_outputs", "type", "alpha", "dynamic_weights"},
    "evaluation": {
        "metrics", "select_best_by", "threshold", "positive_class", "patient_level", "confidence_intervals",
    },
}  # fmt: skip
STAGE_KEYS = {
    "description", "exclude_no_finding", "loss", "focal_gamma", "class_balance_mode", "class_balance_beta",
    "asymmetric_gamma_pos", "asymmetric_gamma_neg", "asymmetric_clip", "epochs", "learning_rate",
    "classification_head", "frozen_parts",
}  # fmt: skip


def recipes_dir() -> Path:
    """Where the shipped recipes live (the repository's `training_scripts/recipes`, packaged as data)."""
    return Path(str(resources.files("hf_cxr.recipes_data")))


def available_recipes() -> list[str]:
    return sorted(path.stem for path in recipes_dir().glob("*.yaml"))


def load_recipe(name_or_path: str | Path) -> dict[str, Any]:
    """A recipe by shipped name (e.g. `cr_msnet_chestxray14`) or YAML path, validated against the schema."""
    path = Path(name_or_path)
    if not path.is_file():
        path = recipes_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ValueError(f"no recipe '{name_or_path}': not a file and not one of {available_recipes()}")
    try:
        recipe = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"'{path}': not valid YAML ({error})") from error
    validate_recipe(recipe, str(path))
    return recipe


def validate_recipe(recipe: Mapping[str, Any], where: str = "recipe") -> None:
    """Raise `ValueError` naming every key the training script would not use."""
    unknown = [f"{section}" for section in recipe if section not in RECIPE_SCHEMA]
    for section, keys in RECIPE_SCHEMA.items():
        values = recipe.get(section) or {}
        if not isinstance(values, Mapping):
            raise ValueError(f"{where}: section '{section}' must be a mapping")
        if keys is not None:
            unknown += [f"{section}.{key}" for key in values if key not in keys]
    for stage, values in (recipe.get("curriculum") or {}).items():
        unknown += [f"curriculum.{stage}.{key}" for key in (values or {}) if key not in STAGE_KEYS]
    if unknown:
        raise ValueError(f"{where}: unknown recipe keys {unknown}")


def set_by_path(recipe: dict[str, Any], dotted_key: str, value: Any) -> None:
    """`optimization.learning_rate=3e-4`-style override (the value is parsed as YAML)."""
    parts = dotted_key.split(".")
    node = recipe
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"cannot set '{dotted_key}': '{part}' is not a section")
    node[parts[-1]] = value


def apply_assignments(target: dict[str, Any], assignments: list[str], option: str) -> None:
    """Apply `key.path=value` assignments to `target` in place, each value parsed as YAML; `option` names the
    command-line flag in errors (`--set`, `hf-cxr bench --model-config`)."""
    for assignment in assignments:
        key, separator, raw = assignment.partition("=")
        if not separator or not key.strip():
            raise ValueError(f"{option} expects key.path=value, got '{assignment}'")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as error:
            raise ValueError(f"{option} {assignment!r}: the value is not valid YAML ({error})") from None
        set_by_path(target, key.strip(), value)


def apply_overrides(recipe: Mapping[str, Any], assignments: list[str]) -> dict[str, Any]:
    """A copy of `recipe` with each `section.key=value` assignment applied, validated."""
    result = copy.deepcopy(dict(recipe))
    apply_assignments(result, assignments, "--set")
    validate_recipe(result, "recipe after --set")
    return result
