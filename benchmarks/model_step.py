"""Model-only training-step throughput (the ceiling the data pipeline must feed), lever by lever.

Random inputs (never zeros), AdamW, cross-entropy; each lever adds to the previous one:
fp32 -> + cuDNN benchmark -> + bf16 autocast -> + channels_last_3d -> + torch.compile.
Also peak GPU memory per batch size and the largest batch that fits (bf16 + channels_last_3d).

    python benchmarks/model_step.py --models resnet18,resnet50,mosa_shared --size 128 --batch 16
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_time, print_table, write_result  # noqa: E402

from alz_monai.networks import get_network, to_device  # noqa: E402

LEVERS = ("fp32", "fp32_cudnn_benchmark", "bf16", "bf16_channels_last", "bf16_channels_last_compile")


def training_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                  labels: torch.Tensor, amp: bool) -> None:
    optimizer.zero_grad(set_to_none=True)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if amp else contextlib.nullcontext()
    with autocast:
        loss = torch.nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()


def measure(name: str, lever: str, size: int, batch: int, steps: int, device: torch.device) -> dict:
    torch.backends.cudnn.benchmark = lever != "fp32"
    amp = lever.startswith("bf16")
    channels_last = "channels_last" in lever
    model = to_device(get_network(name, num_classes=2, spatial_size=(size,) * 3), device, channels_last)
    memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    step_model = torch.compile(model) if lever.endswith("compile") else model
    images = torch.randn(batch, 1, size, size, size, device=device).contiguous(memory_format=memory_format)
    labels = torch.randint(0, 2, (batch,), device=device)
    warmup = 3 if not lever.endswith("compile") else 6
    seconds = device_time(lambda: training_step(step_model, optimizer, images, labels, amp), steps, warmup, device)
    return {"model": name, "lever": lever, "batch": batch, "size": size, "step_s": round(seconds, 5),
            "samples_per_s": round(batch / seconds, 1)}


def memory_profile(name: str, size: int, batches: list[int], device: torch.device) -> dict:
    """Peak memory of a bf16 + channels_last_3d step per batch size, and the largest batch a linear fit
    predicts (not run: autotuning convolutions at hundreds of 128^3 volumes takes minutes)."""
    torch.backends.cudnn.benchmark = True
    peaks = {}
    for batch in batches:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        measure_one = measure(name, "bf16_channels_last", size, batch, 1, device)
        peaks[batch] = torch.cuda.max_memory_allocated(device)
        del measure_one
    (b0, m0), (b1, m1) = sorted(peaks.items())[:2]
    per_sample = (m1 - m0) / (b1 - b0)
    total = torch.cuda.get_device_properties(device).total_memory
    predicted = int((0.95 * total - (m0 - per_sample * b0)) // per_sample)
    torch.cuda.empty_cache()
    return {"model": name, "peak_bytes_by_batch": {str(k): v for k, v in peaks.items()},
            "bytes_per_sample": int(per_sample), "largest_batch_predicted": predicted}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet18,resnet50,mosa_shared")
    parser.add_argument("--levers", default=",".join(LEVERS))
    parser.add_argument("--compile-models", default="resnet18,mosa_shared", help="models that try torch.compile")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--memory-batches", default="8,16", help="two batch sizes for the memory fit ('' skips)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for name in args.models.split(","):
        for lever in args.levers.split(","):
            if lever.endswith("compile") and name not in args.compile_models.split(","):
                continue
            if device.type == "cpu" and lever.startswith("bf16"):
                continue
            rows.append(measure(name, lever, args.size, args.batch, args.steps, device))
            print_table(rows[-1:], list(rows[-1]))
            write_result("model_step", {"rows": rows, "args": vars(args), "complete": False})
    memory = []
    if device.type == "cuda" and args.memory_batches:
        batches = [int(b) for b in args.memory_batches.split(",")]
        memory = [memory_profile(name, args.size, batches, device) for name in args.models.split(",")]
    print_table(rows, ["model", "lever", "batch", "step_s", "samples_per_s"])
    for row in memory:
        print(row)
    print(write_result("model_step", {"rows": rows, "memory": memory, "args": vars(args)}))


if __name__ == "__main__":
    main()
