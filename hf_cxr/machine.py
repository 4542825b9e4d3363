"""What this machine is and how much of its CPU is free: for timing (benchmarks, ONNX latency), for choosing
worker and thread counts, and the torch device used when none is given."""

from __future__ import annotations

import os
import platform
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one (platform.processor() is often empty on Linux)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity; a container's limit), at least 1."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def default_threads() -> int:
    """The cores not already busy (1-minute load average), at least 1: oversubscribed OpenMP threads on a shared
    machine made steps 3-10x slower than one thread in our runs, which measures the neighbours, not the model."""
    cores = usable_cores()
    return max(1, min(cores, round(cores - os.getloadavg()[0])))


def torch_device(device: str | torch.device | None = None) -> torch.device:
    """`device` as a `torch.device`; when None, CUDA if it is available, else the CPU. Raises what `torch.device`
    raises for a name it does not know (`RuntimeError`)."""
    import torch

    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
