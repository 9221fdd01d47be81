"""What a number was measured on: the machine description stored next to every benchmark and metric.

Timings and even float results depend on the CPU, the thread count, the GPU and the library
versions, so every ``metrics.json`` and benchmark JSON carries :func:`describe_machine`'s dict.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, which containers and SLURM restrict)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def describe_machine() -> dict:
    """A JSON-ready description: CPU, cores, threads, memory, versions, and the GPUs if any.

    ``cuda_devices`` lists the name and memory (GiB) of every visible device; empty without CUDA.
    """
    import kornia
    import numpy

    info = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": _memory_gib(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "kornia": kornia.__version__,
        "cuda": torch.version.cuda,
        "cuda_devices": [],
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            info["cuda_devices"].append({"name": props.name,
                                         "memory_gib": round(props.total_memory / 2**30, 1)})
    return info


def machine_line(info: dict) -> str:
    """One human line for tables: ``Intel(R) Xeon(R) Processor, 2 cores, 2 threads, torch 2.14.1``."""
    gpus = ", ".join(d["name"] for d in info.get("cuda_devices") or [])
    text = (f"{info.get('cpu')}, {info.get('usable_cores')} cores, {info.get('torch_threads')} threads, "
            f"torch {info.get('torch')}")
    return f"{text}, {gpus}" if gpus else text


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None
