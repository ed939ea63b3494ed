"""Shared helpers of the benchmark scripts: environment record, timing, result files."""

from __future__ import annotations

import datetime
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: ``python -m monai.bundle run`` arguments keeping Ignite's evaluator lines, which the bundles' logging.conf quiets
#: and the timing benchmarks read.
ENGINE_LOGGING_ARGS = ["--logging_file", str(Path(__file__).resolve().parent / "logging_engines.conf")]


def environment() -> dict[str, Any]:
    """Date, hardware and versions, stored with every result."""
    import monai

    info: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cuda": torch.version.cuda,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def write_result(name: str, payload: dict[str, Any], out_dir: str | Path | None = None) -> Path:
    """``<out_dir or benchmarks/results>/<name>_<date>.json`` with the environment record added."""
    out = Path(out_dir or os.environ.get("BENCH_OUT", RESULTS_DIR))
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}_{datetime.date.today().isoformat()}.json"
    path.write_text(json.dumps({"environment": environment(), **payload}, indent=2, default=str) + "\n")
    return path


def device_time(fn: Callable[[], Any], repeats: int, warmup: int, device: torch.device) -> float:
    """Median seconds per call, timed with CUDA events on the GPU (host clock after a sync on the CPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            began = time.perf_counter()
            fn()
            times.append(time.perf_counter() - began)
    times.sort()
    return times[len(times) // 2]


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(f"{r.get(c, '')}") for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(f"{row.get(c, '')}".ljust(widths[c]) for c in columns), flush=True)
