"""The single-channel stem convolution, direct vs space-to-depth, side by side on one GPU.

The kernel profile of ``model_step.py`` showed one cuDNN fallback kernel (``implicit_convolveNd_sgemm``) taking
about 30% of a ResNet18-3D bf16 + channels_last_3d step. This times, in one run: the stem convolution alone
(forward + weight gradient) as cuDNN's direct strided convolution with its weight contiguous or channels-last,
and by space-to-depth (``alz_monai.networks.space_to_depth_stems``); then whole training steps with either stem;
and checks on the GPU that both compute the same (float64).

    python benchmarks/stem_layout.py --models resnet18,mosa_shared --size 128 --batch 16
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_time, print_table, write_result  # noqa: E402
from model_step import build_step  # noqa: E402

from alz_monai.networks import space_to_depth_stems  # noqa: E402
from alz_monai.networks.space_to_depth import space_to_depth_conv3d  # noqa: E402


STEMS = ("direct, weight contiguous", "direct, weight channels_last", "space-to-depth")


def stem_seconds(stem_kind: str, size: int, batch: int, steps: int, device: torch.device) -> float:
    stem = torch.nn.Conv3d(1, 64, kernel_size=7, stride=2, padding=3, bias=False).to(device)
    if "channels_last" in stem_kind:
        stem.to(memory_format=torch.channels_last_3d)
    if stem_kind == "space-to-depth":
        space_to_depth_stems(stem)
    images = torch.randn(batch, 1, size, size, size, device=device)

    def forward_backward() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = stem(images)
        out.float().square().mean().backward()

    return device_time(forward_backward, steps, 3, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet18,mosa_shared")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=15)
    args = parser.parse_args()
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    generator = torch.Generator(device).manual_seed(0)
    images = torch.randn(2, 1, 41, 44, 37, device=device, dtype=torch.float64, generator=generator)
    weight = torch.randn(64, 1, 7, 7, 7, device=device, dtype=torch.float64, generator=generator)
    difference = (space_to_depth_conv3d(images, weight, None, 2, 3)
                  - torch.nn.functional.conv3d(images, weight, None, 2, 3)).abs().max().item()
    print(f"space-to-depth vs direct stem on {device}, float64: max |difference| {difference:.3g}")
    rows = [{"what": f"stem conv fwd+wgrad, {kind}", "batch": args.batch,
             "ms": round(1e3 * stem_seconds(kind, args.size, args.batch, args.steps, device), 2)} for kind in STEMS]
    for name in args.models.split(","):
        for lever in ("bf16_channels_last", "bf16_channels_last_space_to_depth_stem"):
            seconds = device_time(build_step(name, lever, args.size, args.batch, device), args.steps, 3, device)
            rows.append({"what": f"{name} step, {lever}", "batch": args.batch, "ms": round(1e3 * seconds, 2),
                         "samples_per_s": round(args.batch / seconds, 1)})
        print_table(rows, ["what", "batch", "ms", "samples_per_s"])
    print(write_result("stem_layout", {"rows": rows, "float64_max_abs_difference": difference, "args": vars(args)}))


if __name__ == "__main__":
    main()
