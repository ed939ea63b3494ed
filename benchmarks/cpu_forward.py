"""CPU forward time of each network on one 96x112x96 volume, to size CPU runs and compare architectures.

Usage: python benchmarks/cpu_forward.py [--repeats 5] [--threads N] [--output-dir benchmarks/results]
Prints a table and writes ``cpu_forward_<date>.json`` (date, CPU, torch version, threads, timings).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from alz_monai.networks import get_network

SPATIAL_SIZE = (96, 112, 96)
# (label, get_network name, constructor options): default sizes, as a run would use them.
MODELS = [
    ("resnet18", "resnet18", {}),
    ("resnet50", "resnet50", {}),
    ("mosa(r18)", "mosa", {"backbone": "resnet18"}),
    ("mosa_shared(r18)", "mosa_shared", {"backbone": "resnet18"}),
    ("densenet121", "densenet121", {}),
    ("vit", "vit", {}),
]


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def time_forward(model: torch.nn.Module, example: torch.Tensor, repeats: int) -> list[float]:
    """Seconds per forward pass after one warm-up pass."""
    model.eval()
    with torch.inference_mode():
        model(example)
        timings = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(example)
            timings.append(time.perf_counter() - start)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per model (after one warm-up)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--output-dir", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    example = torch.randn(1, 1, *SPATIAL_SIZE)
    results = []
    print(f"{'model':<18}{'parameters':>14}{'median s':>10}{'min s':>10}")
    for label, name, options in MODELS:
        model = get_network(name, in_channels=1, num_classes=2, spatial_size=SPATIAL_SIZE, **options)
        timings = time_forward(model, example, args.repeats)
        parameters = sum(param.numel() for param in model.parameters())
        results.append(
            {
                "model": label,
                "parameters": parameters,
                "median_s": statistics.median(timings),
                "min_s": min(timings),
                "timings_s": timings,
            }
        )
        print(f"{label:<18}{parameters:>14,}{statistics.median(timings):>10.3f}{min(timings):>10.3f}")

    today = datetime.date.today().isoformat()
    report = {
        "date": today,
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "input_shape": list(example.shape),
        "repeats": args.repeats,
        "results": results,
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    output = args.output_dir / f"cpu_forward_{today}.json"
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
