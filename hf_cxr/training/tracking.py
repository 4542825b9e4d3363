"""What a run logs and reports: the CSV tracker, `--log-with` as Accelerate's trackers, the compute summary the model
card quotes, and where the outputs went."""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.tracking import GeneralTracker

from hf_cxr.training.checkpoint import TrainingProgress


class CSVTracker(GeneralTracker):
    """Accelerate tracker writing one `metrics.csv` row per logged value (no extra dependency)."""

    name = "csv"
    requires_logging_directory = True
    main_process_only = True

    def __init__(self, run_name: str, logging_dir: str | os.PathLike) -> None:
        super().__init__()
        self.path = Path(logging_dir) / run_name / "metrics.csv"  # created on the first write

    @property
    def tracker(self) -> Path:
        """The CSV file."""
        return self.path

    def store_init_configuration(self, values: dict) -> None:
        """Write the run's configuration as `config.json` beside the CSV file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        (self.path.parent / "config.json").write_text(json.dumps(values, indent=2, default=str, allow_nan=False))

    def log(self, values: dict, step: int | None = None, **kwargs: Any) -> None:
        """Append one `step,name,value` row per value (a resumed run appends to the file it has)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            if handle.tell() == 0:
                handle.write("step,name,value\n")
            for key, value in values.items():
                handle.write(f"{step},{key},{value}\n")


def tracker_list(log_with: str, logging_dir: Path) -> list[Any] | None:
    """`--log-with` as Accelerate's `log_with`: our CSV tracker as an instance, the others by name. Raises
    `ValueError` for an unknown tracker."""
    names = [name.strip() for name in log_with.split(",") if name.strip()]
    if names == ["none"]:
        return None
    if names == ["auto"]:
        names = ["csv"] + (["tensorboard"] if importlib.util.find_spec("tensorboard") is not None else [])
    unknown = sorted(set(names) - {"csv", "tensorboard", "wandb"})
    if unknown:
        raise ValueError(f"--log-with: unknown tracker(s) {unknown}; use csv, tensorboard, wandb, auto or none")
    return [CSVTracker("run", logging_dir) if name == "csv" else name for name in names]


def compute_summary(accelerator: Accelerator, batch_size: int, seconds: float) -> dict[str, Any]:
    """What the run trained on, for the model card's compute section."""
    device = accelerator.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} logical cores)"
    return {"device": name, "processes": accelerator.num_processes, "mixed_precision": accelerator.mixed_precision,
            "batch_size_per_device": batch_size,
            "gradient_accumulation_steps": accelerator.gradient_accumulation_steps,
            "wall_seconds": round(seconds, 1)}  # fmt: skip


def print_outputs(output_dir: Path, summary: dict[str, Any], progress: TrainingProgress) -> None:
    """Where the run's outputs went, printed at its end."""
    state = "finished" if summary["finished"] else "stopped"
    print(f"training {state} at step {summary['step']} of {summary['total_steps']}")
    if (output_dir / "config.json").is_file():
        best = "undefined" if not math.isfinite(progress.best_metric) else f"{progress.best_metric:.4f}"
        print(f"  model folder (best on validation, step {progress.best_step}, {best}): {output_dir}/")
        print(f"  its validation numbers and the run record: {output_dir / 'metrics.json'}")
    print(f"  checkpoints (--resume-from-checkpoint latest): {output_dir / 'checkpoints'}/")
    print(f"  logs (CSV, TensorBoard when installed): {output_dir / 'logs' / 'run'}/")
