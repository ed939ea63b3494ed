"""The one-channel stem convolution, direct vs space-to-depth, side by side on one device (CUDA or CPU).

``alz_monai.networks.to_device`` computes the stem by space-to-depth on CUDA and directly on the CPU; this is
the measurement behind that choice. In one run: the stem convolution alone (forward, and forward + weight
gradient) as the direct strided convolution with its weight contiguous or channels-last, and by space-to-depth;
then whole networks (a training step, and an inference forward pass) with either stem; on CUDA also a float64
check that both compute the same. Every pair is timed ``--rounds`` times, alternating, so that a busy host shows
as spread rather than as a difference. CUDA: bf16 autocast and channels_last_3d; CPU: float32.

    python benchmarks/stem_layout.py --models resnet18,mosa_shared --size 128 --batch 16
    python benchmarks/stem_layout.py --models resnet18 --size 64 --batch 2 --steps 3   # on the CPU
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_time, print_table, write_result  # noqa: E402
from model_step import build_step  # noqa: E402

from alz_monai.networks import get_network, space_to_depth_stems, to_device  # noqa: E402
from alz_monai.networks.space_to_depth import space_to_depth_conv3d  # noqa: E402

STEMS = ("direct, weight contiguous", "direct, weight channels_last", "space-to-depth")


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def stem_seconds(stem_kind: str, backward: bool, size: int, batch: int, steps: int, device: torch.device) -> float:
    stem = torch.nn.Conv3d(1, 64, kernel_size=7, stride=2, padding=3, bias=False).to(device)
    if "channels_last" in stem_kind:
        stem.to(memory_format=torch.channels_last_3d)
    if stem_kind == "space-to-depth":
        space_to_depth_stems(stem)
    images = torch.randn(batch, 1, size, size, size, device=device)

    def run() -> None:
        with autocast(device), torch.set_grad_enabled(backward):
            out = stem(images)
        if backward:
            out.float().square().mean().backward()

    return device_time(run, steps, 3, device)


def forward_seconds(name: str, space_to_depth: bool, size: int, batch: int, steps: int, device: torch.device) -> float:
    """An inference forward pass of the whole network (evaluation, inference, saliency)."""
    network = get_network(name, num_classes=2, spatial_size=(size,) * 3).eval()
    network = to_device(network, device, channels_last=device.type == "cuda", space_to_depth=space_to_depth)
    images = torch.randn(batch, 1, size, size, size, device=device)

    def run() -> None:
        with autocast(device), torch.no_grad():
            network(images)

    return device_time(run, steps, 2, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet18,mosa_shared")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=1, help="times each direct/space-to-depth pair is timed")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    difference = None
    if device.type == "cuda":
        generator = torch.Generator(device).manual_seed(0)
        images = torch.randn(2, 1, 41, 44, 37, device=device, dtype=torch.float64, generator=generator)
        weight = torch.randn(64, 1, 7, 7, 7, device=device, dtype=torch.float64, generator=generator)
        difference = (space_to_depth_conv3d(images, weight, None, 2, 3)
                      - torch.nn.functional.conv3d(images, weight, None, 2, 3)).abs().max().item()
        print(f"space-to-depth vs direct stem on {device}, float64: max |difference| {difference:.3g}")
    base = "bf16_channels_last" if device.type == "cuda" else "fp32"
    rows: list[dict] = []
    for round_ in range(args.rounds):
        for backward in (False, True):
            for kind in STEMS:
                seconds = stem_seconds(kind, backward, args.size, args.batch, args.steps, device)
                rows.append({"what": f"stem conv {'fwd+wgrad' if backward else 'fwd'}, {kind}", "round": round_,
                             "ms": round(1e3 * seconds, 2)})
        for name in args.models.split(","):
            for space_to_depth in (False, True):
                stem = "space-to-depth" if space_to_depth else "direct"
                seconds = forward_seconds(name, space_to_depth, args.size, args.batch, args.steps, device)
                rows.append({"what": f"{name} inference forward, {stem} stem", "round": round_,
                             "ms": round(1e3 * seconds, 2), "samples_per_s": round(args.batch / seconds, 1)})
                lever = f"{base}_stem" if space_to_depth else base
                seconds = device_time(build_step(name, lever, args.size, args.batch, device), args.steps, 3, device)
                rows.append({"what": f"{name} training step, {lever}", "round": round_,
                             "ms": round(1e3 * seconds, 2), "samples_per_s": round(args.batch / seconds, 1)})
                print_table(rows[-2:], ["what", "round", "ms", "samples_per_s"])
    print_table(rows, ["what", "round", "ms", "samples_per_s"])
    label = "stem_layout" if device.type == "cuda" else "stem_layout_cpu"
    print(write_result(label, {"rows": rows, "device": str(device), "torch_threads": torch.get_num_threads(),
                               "float64_max_abs_difference": difference, "args": vars(args)}))


if __name__ == "__main__":
    main()
