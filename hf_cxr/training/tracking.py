"""What a run logs and reports: the CSV tracker, `--log-with` as Accelerate's trackers, how long steps wait for data,
the compute summary the model card quotes, and where the outputs went."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
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


class DataWaitClock:
    """How much of the training steps' time goes to waiting for the next batch from the DataLoader.

    `batches(loader)` yields the loader's batches and times each fetch (waiting) and the time from one batch's arrival
    to the next fetch (computing: forward, backward, optimizer, logging); whatever runs inside `excluded()`
    (validation, checkpoints) counts as neither. Host time: on a GPU, the loop's `loss.item()` synchronises each
    step, so a step's GPU work is in its computing time."""

    def __init__(self, timer: Callable[[], float] = time.perf_counter) -> None:
        self.timer = timer  # seconds
        self.waiting = self.computing = 0.0
        self._arrival: float | None = None
        self._excluded = 0.0

    def batches(self, loader: Iterable[Any]) -> Iterator[Any]:
        """The batches of `loader`, timed."""
        iterator = iter(loader)
        while True:
            start = self.timer()
            if self._arrival is not None:
                self.computing += start - self._arrival - self._excluded
            self._excluded = 0.0
            try:
                batch = next(iterator)
            except StopIteration:
                self._arrival = None
                return
            self._arrival = self.timer()
            self.waiting += self._arrival - start
            yield batch

    @contextmanager
    def excluded(self) -> Iterator[None]:
        """Time spent in the block is not step time (validation, checkpoints)."""
        start = self.timer()
        try:
            yield
        finally:
            self._excluded += self.timer() - start

    @property
    def share(self) -> float:
        """Waiting / (waiting + computing) so far, in [0, 1]; NaN before the first step."""
        total = self.waiting + self.computing
        return self.waiting / total if total > 0 else math.nan


def compute_summary(accelerator: Accelerator, batch_size: int, seconds: float, data_wait_share: float,
                    num_workers: int, augment_on: str | None = None) -> dict[str, Any]:  # fmt: skip
    """What the run trained on, for the model card's compute section, with the DataLoader workers per process, the
    share of step time spent waiting for data (`DataWaitClock.share`, this invocation's steps; None without) and
    where the 2D augmentation ran (`cpu`, `device`, `none`; None for CT)."""
    device = accelerator.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} logical cores)"
    return {"device": name, "processes": accelerator.num_processes, "mixed_precision": accelerator.mixed_precision,
            "batch_size_per_device": batch_size,
            "gradient_accumulation_steps": accelerator.gradient_accumulation_steps,
            "wall_seconds": round(seconds, 1), "dataloader_workers": num_workers,
            "data_wait_share": round(data_wait_share, 4) if math.isfinite(data_wait_share) else None,
            "augment_on": augment_on}  # fmt: skip


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
