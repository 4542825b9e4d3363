"""Checkpoints and the model folder: the run's position (`TrainingProgress`), atomic `save_state` checkpoints that
resume to the same weights, the best model written with `save_pretrained`, and the output folder's guard."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import yaml
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from transformers.utils import logging as transformers_logging

from hf_cxr.data._common import strict_json
from hf_cxr.training.config import Recipe, recipe_dict

CHECKPOINT_PREFIX = "step-"
TRAINING_STATE = "training_state.json"
EMA_WEIGHTS = "ema.safetensors"
# What a run writes in its output folder (besides the saved model's *.py remote code).
RUN_OUTPUTS = ("checkpoints", "logs", "config.json", "model.safetensors", "preprocessor_config.json",
               "processor_config.json", "metrics.json", "recipe.yaml")  # fmt: skip


class TrainingProgress:
    """The position in the run and the best validation result so far (saved as JSON in each checkpoint)."""

    def __init__(self) -> None:
        self.step = 0
        self.best_metric = -math.inf
        self.best_step = -1
        self.history: list[dict[str, Any]] = []
        self.seconds = 0.0  # wall-clock training time over every session of the run, validation included
        self._clock: tuple[float, float] | None = None

    def start_clock(self) -> None:
        """Count wall-clock time from now on top of the time already recorded."""
        self._clock = (time.perf_counter(), self.seconds)

    def tick(self) -> None:
        """Bring `seconds` up to now."""
        if self._clock is not None:
            self.seconds = self._clock[1] + time.perf_counter() - self._clock[0]

    def state_dict(self) -> dict[str, Any]:
        """The progress as strict JSON data (no validation yet: `best_metric` is null, not -Infinity)."""
        self.tick()
        best = self.best_metric if math.isfinite(self.best_metric) else None
        return {"step": self.step, "best_metric": best, "best_step": self.best_step,
                "history": self.history, "seconds": round(self.seconds, 3)}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned and restart the clock."""
        self.step, self.best_step = state["step"], state["best_step"]
        self.best_metric = -math.inf if state["best_metric"] is None else float(state["best_metric"])
        self.history = state["history"]
        self.seconds = float(state.get("seconds", 0.0))  # absent from checkpoints written before it was recorded
        self.start_clock()


def save_checkpoint(
    accelerator: Accelerator, checkpoints: Path, keep: int, progress: TrainingProgress, scheduler: Any, ema: Any
) -> None:
    """`save_state` (model, optimiser, RNG) plus the run's position, schedule and EMA weights (JSON and safetensors:
    no pickled objects), into a temporary folder renamed when complete, so that a crash never leaves a half-written
    checkpoint; only the `keep` newest checkpoints stay."""
    final = checkpoints / f"{CHECKPOINT_PREFIX}{progress.step:08d}"
    partial = checkpoints / f".{final.name}.partial"
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    if accelerator.is_main_process:
        state = {"progress": progress.state_dict(), "scheduler": scheduler.state_dict()}
        (partial / TRAINING_STATE).write_text(strict_json(state))
        if ema is not None:
            save_file({k: v.contiguous() for k, v in ema.module.state_dict().items()}, str(partial / EMA_WEIGHTS))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
        for old in sorted(checkpoints.glob(f"{CHECKPOINT_PREFIX}*"))[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def load_checkpoint(
    accelerator: Accelerator, folder: Path, progress: TrainingProgress, scheduler: Any, ema: Any
) -> None:
    """Restore a checkpoint `save_checkpoint` wrote: Accelerate's state, the run's position, schedule and EMA."""
    accelerator.load_state(str(folder))
    state = json.loads((folder / TRAINING_STATE).read_text())
    progress.load_state_dict(state["progress"])
    scheduler.load_state_dict(state["scheduler"])
    if ema is not None:
        ema.module.load_state_dict(load_file(str(folder / EMA_WEIGHTS)))


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest checkpoint folder of a run's output folder, None when it has none."""
    found = sorted((Path(output_dir) / "checkpoints").glob(f"{CHECKPOINT_PREFIX}*"))
    return found[-1] if found else None


def save_model(model: Any, processor: Any, output_dir: Path, metrics: dict[str, Any], recipe: Recipe) -> None:
    """Write the model folder atomically: weights, config with remote code, processor, metrics, and the resolved
    recipe it was trained with (`recipe.yaml`, which the model card quotes)."""
    staging = output_dir / ".model.partial"
    if staging.exists():
        shutil.rmtree(staging)
    bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()  # no "Writing model shards" bar inside the training bar
    try:
        model.save_pretrained(staging)
    finally:
        if bars:
            transformers_logging.enable_progress_bar()
    processor.save_pretrained(staging)
    (staging / "metrics.json").write_text(strict_json(metrics))
    (staging / "recipe.yaml").write_text(yaml.safe_dump(recipe_dict(recipe), sort_keys=False))
    for path in staging.iterdir():
        os.replace(path, output_dir / path.name)
    staging.rmdir()


def prepare_output_dir(output_dir: Path, resume: str | None, overwrite: bool) -> None:
    """Before any work: an output folder that already holds a run is refused (`FileExistsError`) unless the run is
    resumed (`resume`) or replaced (`overwrite`: its checkpoints, logs and model files are removed first, so the new
    run's logs and checkpoints are not mixed with the old ones). A `resume` path that is not one of train.py's
    checkpoints raises `FileNotFoundError`."""
    if resume not in (None, "latest") and not (Path(resume) / TRAINING_STATE).is_file():
        checkpoints = output_dir / "checkpoints"
        raise FileNotFoundError(f"--resume-from-checkpoint '{resume}' is not a checkpoint folder of train.py (no "
                                f"{TRAINING_STATE}); pass one of '{checkpoints}'/step-* or 'latest'")  # fmt: skip
    if not output_dir.exists():
        return
    if not output_dir.is_dir():
        raise FileExistsError(f"--output-dir '{output_dir}' is a file, not a folder")
    held = [name for name in RUN_OUTPUTS if (output_dir / name).exists()]
    if not held or resume:
        return
    if not overwrite:
        raise FileExistsError(
            f"'{output_dir}' already holds a training run ({', '.join(held)}); resume it with "
            "--resume-from-checkpoint latest, start again with --overwrite-output-dir, or choose another --output-dir"
        )
    for name in held:
        target = output_dir / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    for code in output_dir.glob("*.py"):  # the previous model's remote code
        code.unlink()
