"""How the benchmarks measure: images/s of a step (`images_per_second`), runners timed in alternating order
(`interleaved_rates`) and the median of per-repeat ratios (`paired_ratio`), parameters, FLOPs by
`FlopCounterMode` (with a depthwise-correct convolution backward), the peak tensor memory of a step, and the bf16
peaks of known GPUs. Shared by `hf-cxr bench`, `benchmarks/bench_ma_msf.py` and `benchmarks/bench_mxa.py`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

# Dense (no sparsity) bf16 tensor-core peak in TFLOPS from the vendors' data sheets, matched against
# `torch.cuda.get_device_name()` in this order (the first key contained in the name wins).
PEAK_BF16_TFLOPS: dict[str, float] = {
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H200": 989.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
}


def images_per_second(
    run: Callable[[], object], batch_size: int, iterations: int, synchronize: Callable[[], None] | None = None
) -> float:
    """Images/s of `iterations` calls of `run` on batches of `batch_size`; `synchronize` waits for a GPU's queue."""
    if synchronize is not None:
        synchronize()
    start = time.perf_counter()
    for _ in range(iterations):
        run()
    if synchronize is not None:
        synchronize()
    return batch_size * iterations / (time.perf_counter() - start)


def interleaved_rates(
    runners: dict[str, Callable[[], object]],
    batch_size: int,
    iterations: int,
    repeats: int,
    synchronize: Callable[[], None] | None = None,
) -> dict[str, list[float]]:
    """Images/s of each runner per repeat, in alternating order (forward on even repeats, reversed on odd ones)."""
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for repeat in range(repeats):
        order = list(runners) if repeat % 2 == 0 else list(reversed(runners))
        for name in order:
            rates[name].append(images_per_second(runners[name], batch_size, iterations, synchronize))
    return rates


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Median over repeats of the ratio of two rates measured in the same repeat."""
    return statistics.median(a / b for a, b in zip(numerator, denominator, strict=True))


def parameter_count(module: nn.Module) -> int:
    return sum(param.numel() for param in module.parameters())


def _conv_backward_flops(
    grad_out_shape: list[int],
    x_shape: list[int],
    w_shape: list[int],
    _bias: Any,
    _stride: Any,
    _padding: Any,
    _dilation: Any,
    transposed: bool,
    _output_padding: Any,
    _groups: int,
    output_mask: Sequence[bool],
    out_shape: Any,
    **kwargs: Any,
) -> int:
    """Each of the input and weight gradients costs what the forward convolution costs.

    Replaces torch's formula, whose weight-gradient term ignores `groups` and so counts a depthwise convolution's
    backward `channels` times over (EfficientNet and EfficientViT came out at 5-14x their forward FLOPs).
    """
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def count_flops(run: Callable[[], object]) -> int:
    """FLOPs of everything `run` executes (forward, and backward if it calls it), by FlopCounterMode."""
    mapping = {torch.ops.aten.convolution_backward: _conv_backward_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        run()
    return int(counter.get_total_flops())


def peak_memory_bytes(run: Callable[[], object], device: torch.device) -> int:
    """Peak of the tensor memory that `run` allocates beyond what was live before it.

    On CUDA from the allocator's statistics; on CPU, where there are none, from the autograd profiler's record of
    every allocation and free (ops in start order, cumulative), which costs about one extra step.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run()
        torch.cuda.synchronize(device)
        return max(torch.cuda.max_memory_allocated(device) - before, 0)
    with torch.autograd.profiler.profile(profile_memory=True, use_kineto=False) as profile:
        run()
    current = peak = 0
    for event in sorted(profile.function_events, key=lambda event: event.time_range.start):
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return peak


def gpu_peak_bf16_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a known GPU (`PEAK_BF16_TFLOPS`), else None."""
    for key, tflops in PEAK_BF16_TFLOPS.items():
        if key.lower() in device_name.lower():
            return tflops
    return None
