"""The Accelerate training behind `training_scripts/train.py` and `hf-cxr train`.

One loop for every architecture and every machine: CPU, one GPU, or many GPUs/nodes under `accelerate launch` (DDP;
FSDP/DeepSpeed through Accelerate's own config), mixed precision, gradient accumulation and an optional
`torch.compile`. A recipe (YAML, parsed into the typed `Recipe` of `hf_cxr.training.config`) gives the paper's
hyper-parameters: a curriculum of stages (e.g. abnormal images first, then all images with a class-balanced loss),
optimiser and schedule, augmentation, gradient clipping, model EMA and distillation.

What differs by architecture is chosen by `model_type`: the 2D classifiers read images with their image processor
and are scored by AUCs over findings; MMCAF-Net (3D CT + 7 clinical values) reads converted Lung-PET-CT-Dx rows with
`MMCAFNetProcessor` (one lesion-centred slab per row), trains stage by stage (`classification_head`,
`frozen_parts`) with SGD and is scored per patient (max over sliding slabs: AUROC, or accuracy for four classes).

Checkpoints (`accelerator.save_state`: model, optimiser, scheduler, RNG, EMA, position in the data) are written
atomically every `checkpointing_steps`; `--resume-from-checkpoint latest` continues the same run and ends with the
same weights as an uninterrupted one. The best model on the validation split (never the test split) is written to the
output folder with `save_pretrained`, with its image processor, `metrics.json` and the resolved `recipe.yaml`.

Modules: `config` (the typed recipe and run), `arguments` (the command line), `schedule` (stages, optimiser, learning
rate), `augment`, `data` (datasets, samplers, the recipe's data section), `teacher` (distillation), `validation`,
`checkpoint`, `tracking` (logs and summaries) and `loop` (`train`).
"""

from hf_cxr.training.arguments import add_train_arguments, config_from_arguments, main
from hf_cxr.training.checkpoint import latest_checkpoint, prepare_output_dir
from hf_cxr.training.config import (
    Recipe,
    TrainingConfig,
    apply_overrides,
    available_recipes,
    load_recipe,
    parse_recipe,
)
from hf_cxr.training.data import apply_data_section, oversampled_indices
from hf_cxr.training.loop import train
from hf_cxr.training.schedule import Stage, lr_at, stages_from_recipe
from hf_cxr.training.teacher import Teacher, load_teacher
from hf_cxr.training.tracking import CSVTracker, tracker_list
from hf_cxr.training.validation import evaluate_ct, evaluate_images

__all__ = [
    "CSVTracker",
    "Recipe",
    "Stage",
    "Teacher",
    "TrainingConfig",
    "add_train_arguments",
    "apply_data_section",
    "apply_overrides",
    "available_recipes",
    "config_from_arguments",
    "evaluate_ct",
    "evaluate_images",
    "latest_checkpoint",
    "load_recipe",
    "load_teacher",
    "lr_at",
    "main",
    "oversampled_indices",
    "parse_recipe",
    "prepare_output_dir",
    "stages_from_recipe",
    "tracker_list",
    "train",
]
