"""Speed of the hf-cxr architectures beside the models users compare them with, and of the data path feeding them.

`run_benchmark` measures, for every architecture at each preset, inference and training-step images/s, the
tensor memory of one step, parameters and FLOPs, beside timm baselines (DenseNet-121, the CheXNet standard;
EfficientViT-M4/M5; EfficientNetV2-S) and the plain timm backbone(s) each model is built on. All entries of one
preset and input size form a group measured in the same run, interleaved (A B C, C B A, ...) so that a change in
machine load hits all alike; reported are medians over repeats and, per model/comparator pair, the median of the
per-repeat ratios (the steadier figure on a shared machine). `measure_data_path` times raw PNG decoding, the
image processor and a converted-style dataset read through `with_transform` with N DataLoader workers, so a user
sees whether the loader or the model is the bottleneck. Speed is never asserted in tests: this is a script.

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` (2 per multiply-add, so twice the "GMACs" some
papers call GFLOPs); a training step's FLOPs are counted on its forward and backward pass.

This module holds the whole run (`run_benchmark`, `BenchmarkResult`, `machine_description`); the parts live beside
it: `timing` (images/s, interleaved repeats, FLOPs, memory, GPU peaks), `model_speed` (the groups of models,
backbones and baselines, and `measure_group`), `data_path` (`measure_data_path`) and `speed_report`
(`format_markdown`).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import timm
import torch
import transformers

from hf_cxr.benchmarks.data_path import DataPathResult, measure_data_path
from hf_cxr.benchmarks.model_speed import (
    DEFAULT_BASELINES,
    EntryResult,
    RatioResult,
    build_groups,
    measure_group,
)
from hf_cxr.benchmarks.timing import gpu_peak_bf16_tflops
from hf_cxr.machine import cpu_name, default_threads, torch_device
from hf_cxr.registry import IMAGE_MODEL_TYPES


@dataclass
class BenchmarkResult:
    entries: list[EntryResult]
    ratios: list[RatioResult]
    data_path: list[DataPathResult]
    settings: dict[str, Any]
    machine: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def machine_description(device: torch.device, threads: int) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu": cpu_name(),
        "logical_cpus": os.cpu_count(),
        "threads": threads,
        "load_average_1min_before": os.getloadavg()[0],
        "system": platform.system(),
        "python": platform.python_version(),
        "versions": {
            "torch": torch.__version__,
            "timm": timm.__version__,
            "transformers": transformers.__version__,
        },
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def run_benchmark(
    model_types: Sequence[str] | None = None,
    presets: Sequence[str] = ("tiny", "paper"),
    baselines: Sequence[str] = DEFAULT_BASELINES,
    batch_size: int | None = None,
    repeats: int = 3,
    warmup: int | None = None,
    iterations: int = 1,
    device: str | None = None,
    threads: int | None = None,
    train: bool = True,
    compile_model: bool = False,
    channels_last: bool | None = None,
    use_bf16: bool | None = None,
    peak_tflops: float | None = None,
    data_path: bool = True,
    data_workers: Sequence[int] = (0, 2),
    data_images: int = 200,
    progress: Callable[[str], None] | None = None,
) -> BenchmarkResult:
    """Every group measured in turn (see the module docstring); the data path last.

    Defaults: CUDA when available (batch 64, 3 warm-up steps for `torch.compile`), else CPU (batch 2, one warm-up
    step, `default_threads()` threads). Raises `ValueError`, before measuring, for `warmup` < 1 and for `train`
    with `batch_size` < 2; then, when the groups are built, for an unknown model type or preset (as
    `registry.build_config` does); `RuntimeError` for a `device` torch does not know (`torch_device`).
    """
    model_types = list(model_types) if model_types else list(IMAGE_MODEL_TYPES)
    resolved = torch_device(device)
    cuda = resolved.type == "cuda"
    batch_size = batch_size or (64 if cuda else 2)
    warmup = warmup if warmup is not None else (3 if cuda else 1)
    if warmup < 1:
        raise ValueError("warmup must be at least 1 (memory is measured during the first warm-up step)")
    if train and batch_size < 2:
        raise ValueError("a training step needs batch_size >= 2 (BatchNorm in training mode)")
    threads = threads or (torch.get_num_threads() if cuda else default_threads())
    if peak_tflops is None and cuda:
        peak_tflops = gpu_peak_bf16_tflops(torch.cuda.get_device_name(resolved))
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    machine = machine_description(resolved, threads)
    settings = {
        "device": str(resolved),
        "batch_size": batch_size,
        "repeats": repeats,
        "warmup": warmup,
        "iterations": iterations,
        "train": train,
        "bf16_autocast": cuda if use_bf16 is None else use_bf16,
        "channels_last": cuda if channels_last is None else channels_last,
        "compile": compile_model,
        "peak_bf16_tflops": peak_tflops,
        "models": model_types,
        "presets": list(presets),
        "baselines": list(baselines),
    }
    entries: list[EntryResult] = []
    ratios: list[RatioResult] = []
    data: list[DataPathResult] = []
    try:
        for group, (size, members) in build_groups(model_types, presets, baselines).items():
            if progress:
                progress(f"measuring {group}: {', '.join(m.name for m in members)}")
            group_entries, group_ratios = measure_group(
                group,
                size,
                members,
                batch_size,
                repeats,
                warmup,
                iterations,
                resolved,
                train,
                use_bf16,
                channels_last,
                compile_model,
                peak_tflops if cuda else None,
            )
            entries += group_entries
            ratios += group_ratios
        if data_path:
            if progress:
                progress("measuring the data path")
            data = measure_data_path(
                model_types[0], presets[-1], data_workers, data_images, repeats=repeats, device=resolved
            )
    finally:
        torch.set_num_threads(previous_threads)
    machine["load_average_1min_after"] = os.getloadavg()[0]
    return BenchmarkResult(entries, ratios, data, settings, machine)
