"""What this machine is and how much of its CPU is free: for timing (benchmarks, ONNX latency) and for choosing
worker and thread counts."""

from __future__ import annotations

import os
import platform


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
