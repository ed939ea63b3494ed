"""Model-only training-step throughput (the ceiling the data pipeline must feed), lever by lever.

Random inputs (never zeros), fused AdamW, cross-entropy; each lever adds to the previous one:
fp32 -> + cuDNN benchmark -> + bf16 autocast -> + channels_last_3d -> + the space-to-depth stem (``stem``) ->
+ torch.compile (default mode) -> + CUDA graphs (torch.compile mode "reduce-overhead"); ``..._compile_autotune``
(mode "max-autotune-no-cudagraphs") on request. Every row gets its model FLOP utilisation: the FLOPs PyTorch counts
for the step with the direct stem (the work the model needs, not the space-to-depth stem's padded sums) over the
step time and the bf16 matrix rate measured at the start (random 8192^3 products). Also: peak GPU memory per
batch size and the largest batch that fits (bf16 + channels_last_3d + stem, predicted from two sizes, then run);
samples/s at other batch sizes; and profiles (``--profile-models`` x ``--profile-levers``): GPU time per step by
kernel category, the share of the step the GPU is busy, and the matrix throughput of the convolutions.

    python benchmarks/model_step.py --models resnet18,resnet50,mosa_shared --size 128 --batch 16
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import re
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_time, print_table, write_result  # noqa: E402

from alz_monai.networks import get_network, to_device  # noqa: E402

LEVERS = ("fp32", "fp32_cudnn_benchmark", "bf16", "bf16_channels_last", "bf16_channels_last_stem",
          "bf16_channels_last_stem_compile", "bf16_channels_last_stem_compile_cudagraphs")
COMPILE_MODES = {"compile": "default", "compile_cudagraphs": "reduce-overhead",
                 "compile_autotune": "max-autotune-no-cudagraphs"}
# GPU kernels by what they do, from their names (cuDNN/CUTLASS convolutions, PyTorch's native kernels, Inductor's
# Triton kernels, named after the operations they fuse); the first matching pattern wins, so the specific ones
# come first
KERNEL_CATEGORIES = (
    ("layout conversion", re.compile(r"nchwToNhwc|nhwcToNchw|transpose|permute", re.I)),
    ("batch norm (+ fused ReLU/add when compiled)", re.compile(r"batch_norm|batchnorm|welford|bn_", re.I)),
    ("pooling", re.compile(r"pool", re.I)),
    ("optimizer", re.compile(r"multi_tensor|adam|foreach", re.I)),
    ("other compiled elementwise (Triton)", re.compile(r"^triton_", re.I)),
    ("convolution", re.compile(r"conv|xmma|implicit|gemm|dgrad|wgrad|fprop|cutlass|sm\d\d_", re.I)),
    ("copies and casts", re.compile(r"copy_kernel|convert", re.I)),
    ("elementwise (ReLU, add, ...)", re.compile(r"elementwise|vectorized|unrolled|relu|threshold", re.I)),
    ("reduction", re.compile(r"reduce", re.I)),
)


def training_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                  labels: torch.Tensor, amp: bool) -> None:
    optimizer.zero_grad(set_to_none=True)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if amp else contextlib.nullcontext()
    with autocast:
        loss = torch.nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()


def build_step(name: str, lever: str, size: int, batch: int, device: torch.device) -> Callable[[], None]:
    """One training step of ``name`` with the lever's settings, on fixed random inputs."""
    torch.backends.cudnn.benchmark = lever != "fp32"
    amp = lever.startswith("bf16")
    channels_last = "channels_last" in lever
    network = get_network(name, num_classes=2, spatial_size=(size,) * 3)
    model = to_device(network, device, channels_last, space_to_depth="_stem" in lever)
    memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    compile_mode = next((mode for suffix, mode in COMPILE_MODES.items() if lever.endswith(suffix)), None)
    step_model = torch.compile(model, mode=compile_mode) if compile_mode else model
    images = torch.randn(batch, 1, size, size, size, device=device).contiguous(memory_format=memory_format)
    labels = torch.randint(0, 2, (batch,), device=device)
    return lambda: training_step(step_model, optimizer, images, labels, amp)


def matmul_tflops(device: torch.device, size: int = 8192) -> float:
    """The measured bf16 matrix rate (random operands), the ceiling model FLOP utilisation is taken against."""
    a, b = (torch.randn(size, size, device=device, dtype=torch.bfloat16) for _ in range(2))
    seconds = device_time(lambda: a @ b, 20, 5, device)
    return 2 * size**3 / seconds / 1e12


@functools.cache
def model_flops(name: str, size: int, batch: int, device: torch.device) -> int:
    """FLOPs of one training step with the direct stem, as PyTorch's counter counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    step = build_step(name, "bf16_channels_last", size, batch, device)
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def measure(name: str, lever: str, size: int, batch: int, steps: int, device: torch.device,
            peak_tflops: float | None) -> dict:
    step = build_step(name, lever, size, batch, device)
    warmup = 6 if "compile" in lever else 3
    seconds = device_time(step, steps, warmup, device)
    row = {"model": name, "lever": lever, "batch": batch, "size": size, "step_s": round(seconds, 5),
           "samples_per_s": round(batch / seconds, 1)}
    if peak_tflops:
        row["mfu"] = round(model_flops(name, size, batch, device) / seconds / 1e12 / peak_tflops, 3)
    return row


def profile(name: str, lever: str, size: int, batch: int, steps: int, device: torch.device) -> dict:
    """Where the GPU time of a step goes: per kernel category, busy share, convolution TFLOP/s."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity
    step = build_step(name, lever, size, batch, device)
    step_s = device_time(step, steps, 6 if "compile" in lever else 3, device)
    flops = model_flops(name, size, batch, device)
    with torch.profiler.profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize(device)
    kernel_us: dict[str, float] = {}
    top: list[tuple[float, str]] = []
    for event in prof.key_averages():
        self_us = event.self_device_time_total
        if event.device_type != DeviceType.CUDA or self_us <= 0:  # CPU ops count their kernels' time too
            continue
        category = next((label for label, pattern in KERNEL_CATEGORIES if pattern.search(event.key)), "other")
        kernel_us[category] = kernel_us.get(category, 0.0) + self_us / steps
        top.append((self_us / steps, event.key))
    busy_s = sum(kernel_us.values()) / 1e6
    convolution_s = kernel_us.get("convolution", 0.0) / 1e6
    return {
        "model": name, "lever": lever, "batch": batch, "step_s": round(step_s, 5),
        "gpu_busy_share": round(busy_s / step_s, 3), "flops_per_step": flops,
        "tflops_per_s_step": round(flops / step_s / 1e12, 1),
        "tflops_per_s_convolution_kernels": round(flops / convolution_s / 1e12, 1) if convolution_s else None,
        "ms_per_step_by_category": {k: round(v / 1e3, 2) for k, v in sorted(kernel_us.items(), key=lambda kv: -kv[1])},
        "top_kernels_ms": [(round(us / 1e3, 3), key) for us, key in sorted(top, reverse=True)[:25]],
    }


def peak_memory(name: str, size: int, batch: int, device: torch.device, autotune: bool = True) -> int:
    """Peak bytes allocated by one bf16 + channels_last_3d + stem training step (AdamW state included)."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    step = build_step(name, "bf16_channels_last_stem", size, batch, device)
    torch.backends.cudnn.benchmark = autotune
    step()
    torch.cuda.synchronize(device)
    del step
    return torch.cuda.max_memory_allocated(device)


def memory_fit(name: str, size: int, batches: list[int], device: torch.device) -> dict:
    """Peak memory per batch size and the largest batch a linear fit predicts within 95% of the GPU's memory."""
    peaks = {batch: peak_memory(name, size, batch, device) for batch in batches}
    (b0, m0), (b1, m1) = sorted(peaks.items())[:2]
    per_sample = (m1 - m0) / (b1 - b0)
    total = torch.cuda.get_device_properties(device).total_memory
    predicted = int((0.95 * total - (m0 - per_sample * b0)) // per_sample)
    torch.cuda.empty_cache()
    return {"model": name, "peak_bytes_by_batch": {str(k): v for k, v in sorted(peaks.items())},
            "total_bytes": total, "bytes_per_sample": int(per_sample), "largest_batch_predicted": predicted}


def confirm_largest_batch(fit: dict, size: int, device: torch.device) -> dict:
    """Run the predicted largest batch (without cuDNN autotuning, minutes at that size), stepping down by 10%
    on out-of-memory, and record the batch that ran and its peak."""
    largest = fit["largest_batch_predicted"]
    while largest > 1:
        try:
            peak = peak_memory(fit["model"], size, largest, device, autotune=False)
            return {**fit, "largest_batch_run": largest, "largest_batch_peak_bytes": peak}
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            largest = int(largest * 0.9)
    return {**fit, "largest_batch_run": None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet18,resnet50,mosa_shared")
    parser.add_argument("--levers", default=",".join(LEVERS))
    parser.add_argument("--compile-models", default="resnet18,mosa_shared", help="models that try torch.compile")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--memory-batches", default="8,16", help="two batch sizes for the memory fit ('' skips)")
    parser.add_argument("--extra-batches", default="", help="other batch sizes for bf16 + channels_last_3d + stem")
    parser.add_argument("--profile-models", default="", help="models to profile")
    parser.add_argument("--profile-levers", default="bf16_channels_last_stem", help="levers the profiles run")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    peak_tflops = round(matmul_tflops(device), 1) if device.type == "cuda" else None
    print(f"bf16 matrix rate: {peak_tflops} TFLOP/s")
    rows: list[dict] = []
    profiles: list[dict] = []
    memory: list[dict] = []

    def save(complete: bool = False) -> Path:
        """Everything measured so far: a call cut short by its time limit still leaves its figures."""
        return write_result("model_step", {"rows": rows, "profiles": profiles, "memory": memory,
                                           "bf16_matmul_tflops": peak_tflops, "args": vars(args),
                                           "complete": complete})

    for name in args.models.split(","):
        for lever in args.levers.split(","):
            if "compile" in lever and name not in args.compile_models.split(","):
                continue
            if device.type == "cpu" and lever.startswith("bf16"):
                continue
            rows.append(measure(name, lever, args.size, args.batch, args.steps, device, peak_tflops))
            print_table(rows[-1:], list(rows[-1]))
            save()
        for batch in filter(None, args.extra_batches.split(",") if device.type == "cuda" else []):
            rows.append(measure(name, "bf16_channels_last_stem", args.size, int(batch), args.steps, device,
                                peak_tflops))
            print_table(rows[-1:], list(rows[-1]))
    if device.type == "cuda":
        for name in filter(None, args.profile_models.split(",")):
            for lever in args.profile_levers.split(","):
                profiles.append(profile(name, lever, args.size, args.batch, args.steps, device))
                print(profiles[-1])
                save()
        batches = [int(b) for b in filter(None, args.memory_batches.split(","))]
        for name in args.models.split(",") if batches else []:  # the cheap fits first, each saved at once
            memory.append(memory_fit(name, args.size, batches, device))
            print(memory[-1])
            save()
        for index, fit in enumerate(memory):
            memory[index] = confirm_largest_batch(fit, args.size, device)
            print(memory[index])
            save()
    print_table(rows, ["model", "lever", "batch", "step_s", "samples_per_s", "mfu"])
    print(save(complete=True))


if __name__ == "__main__":
    main()
