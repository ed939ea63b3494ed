"""Ways to compute the ResNet stem on CUDA, alone and in whole training steps, to choose the defaults.

The profile of a ResNet18-3D step with the space-to-depth stem (``model_step.py``) left two stem kernels on
top: the space-to-depth convolution's forward (8 input channels per tap, a cuDNN kernel far below the tensor-core
rate) and, once compiled, Inductor's max-pool (a 27-tap window reduction on the channels-last stem output).
This times, in one run: the stem convolution with its taps folded into channels (``fold``, see
``alz_monai.networks.space_to_depth.space_to_depth_conv3d``); the 3^3 stride-2 max-pool eager and compiled, as
one pool or as three one-axis pools (same maxima; the gradient goes to one maximal input either way); then whole
ResNet18-3D steps (bf16, channels_last_3d, fused AdamW) with the fastest fold and each pool variant, eager and
compiled, and the fastest compiled one with CUDA graphs.

    python benchmarks/stem_variants.py --size 128 --batch 16
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_time, print_table, write_result  # noqa: E402
from model_step import model_flops, training_step  # noqa: E402

from alz_monai.networks import get_network, space_to_depth_stems, to_device  # noqa: E402

FOLDS = ((1, 1, 1), (2, 1, 1), (4, 1, 1), (4, 2, 1), (4, 4, 1))


def one_axis_pools(x: torch.Tensor) -> torch.Tensor:
    """``max_pool3d(x, 3, 2, 1)`` as three one-axis pools (each window's maximum is the maximum of maxima)."""
    x = F.max_pool3d(x, (1, 1, 3), (1, 1, 2), (0, 0, 1))
    x = F.max_pool3d(x, (1, 3, 1), (1, 2, 1), (0, 1, 0))
    return F.max_pool3d(x, (3, 1, 1), (2, 1, 1), (1, 0, 0))


def whole_pool(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool3d(x, 3, 2, 1)


class Pool(nn.Module):
    """The stem's max-pool as one of the variants; ``eager`` keeps it out of torch.compile (a graph break)."""

    def __init__(self, pool: Callable[[torch.Tensor], torch.Tensor], eager: bool) -> None:
        super().__init__()
        self.pool = torch.compiler.disable(pool) if eager else pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x)


def stem_conv_ms(fold: tuple[int, int, int], size: int, batch: int, steps: int, device: torch.device) -> dict:
    stem = nn.Conv3d(1, 64, 7, 2, 3, bias=False).to(device).to(memory_format=torch.channels_last_3d)
    space_to_depth_stems(stem)
    stem.fold = fold
    images = torch.randn(batch, 1, size, size, size, device=device)

    def forward() -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return stem(images)

    def forward_backward() -> None:
        forward().float().square().mean().backward()

    with torch.no_grad():
        forward_ms = 1e3 * device_time(forward, steps, 3, device)
    return {"what": f"stem conv, fold {fold}", "fwd_ms": round(forward_ms, 3),
            "fwd_wgrad_ms": round(1e3 * device_time(forward_backward, steps, 3, device), 3)}


def pool_ms(name: str, compiled: bool, size: int, batch: int, steps: int, device: torch.device) -> dict:
    pool = {"one pool": whole_pool, "three one-axis pools": one_axis_pools}[name]
    pool = torch.compile(pool) if compiled else pool
    x = torch.randn(batch, 64, size // 2, size // 2, size // 2, device=device, dtype=torch.bfloat16)
    x = x.contiguous(memory_format=torch.channels_last_3d).requires_grad_()
    upstream = torch.randn_like(pool(x))

    def forward_backward() -> None:
        pool(x).backward(upstream)

    with torch.no_grad():
        forward_ms = 1e3 * device_time(lambda: pool(x), steps, 3, device)
    return {"what": f"max-pool, {name}, {'compiled' if compiled else 'eager'}", "fwd_ms": round(forward_ms, 3),
            "fwd_bwd_ms": round(1e3 * device_time(forward_backward, steps, 3, device), 3)}


def step_row(fold: tuple[int, int, int], pool: str, compile_mode: str | None, size: int, batch: int, steps: int,
             device: torch.device, peak_tflops: float) -> dict:
    model = to_device(get_network("resnet18", num_classes=2), device, channels_last=True, space_to_depth=True)
    model.conv1.fold = fold
    if pool != "inductor":
        model.maxpool = Pool(one_axis_pools if pool.startswith("one-axis") else whole_pool, "eager" in pool)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    step_model = torch.compile(model, mode=compile_mode) if compile_mode else model
    images = torch.randn(batch, 1, size, size, size, device=device).contiguous(memory_format=torch.channels_last_3d)
    labels = torch.randint(0, 2, (batch,), device=device)
    seconds = device_time(lambda: training_step(step_model, optimizer, images, labels, True), steps,
                          6 if compile_mode else 3, device)
    flops = model_flops("resnet18", size, batch, device)
    return {"what": f"resnet18 step, fold {fold}, pool {pool}, compile {compile_mode}", "step_ms":
            round(1e3 * seconds, 2), "samples_per_s": round(batch / seconds, 1),
            "mfu": round(flops / seconds / 1e12 / peak_tflops, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--peak-tflops", type=float, default=753.3, help="bf16 matrix rate (model_step.py)")
    args = parser.parse_args()
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    rows: list[dict] = []

    def save() -> Path:
        return write_result("stem_variants", {"rows": rows, "args": vars(args)})

    for fold in FOLDS:
        rows.append(stem_conv_ms(fold, args.size, args.batch, args.steps, device))
        print_table(rows[-1:], list(rows[-1]))
    best = min(rows, key=lambda row: row["fwd_wgrad_ms"])
    fold = FOLDS[rows.index(best)]
    for name in ("one pool", "three one-axis pools"):
        for compiled in (False, True):
            rows.append(pool_ms(name, compiled, args.size, args.batch, args.steps, device))
            print_table(rows[-1:], list(rows[-1]))
    save()
    for chosen_fold in ((1, 1, 1), fold):
        rows.append(step_row(chosen_fold, "inductor", None, args.size, args.batch, args.steps, device,
                             args.peak_tflops))
        print_table(rows[-1:], list(rows[-1]))
    compiled = {}
    for pool in ("inductor", "one pool, eager", "one-axis pools, compiled"):
        compiled[pool] = step_row(fold, pool, "default", args.size, args.batch, args.steps, device, args.peak_tflops)
        rows.append(compiled[pool])
        print_table(rows[-1:], list(rows[-1]))
        save()
    pool = min(compiled, key=lambda name: compiled[name]["step_ms"])
    rows.append(step_row(fold, pool, "reduce-overhead", args.size, args.batch, args.steps, device, args.peak_tflops))
    print_table(rows, ["what", "fwd_ms", "fwd_wgrad_ms", "fwd_bwd_ms", "step_ms", "samples_per_s", "mfu"])
    print(save())


if __name__ == "__main__":
    main()
