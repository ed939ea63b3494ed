"""Single-scan inference latency (NIfTI file to class probabilities) and test-set evaluation throughput.

Network and preprocessing come from the bundle's train.yaml, weights from a checkpoint when given.

    python benchmarks/inference_latency.py DATASET_DIR --checkpoint RUN/checkpoints/model_best.pt --scans 200
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from monai.bundle import ConfigParser
from monai.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_result  # noqa: E402

from alz_monai.data import load_records  # noqa: E402

BUNDLES = Path(__file__).resolve().parent.parent / "bundles"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset")
    parser.add_argument("--bundle", default="ad_resnet3d")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--network", default="resnet18")
    parser.add_argument("--scans", type=int, default=200, help="scans of the evaluation-throughput pass")
    parser.add_argument("--latency-scans", type=int, default=10)
    parser.add_argument("--spatial-size", type=int, default=128)
    parser.add_argument("--pixdim", type=float, default=1.5)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = ConfigParser()
    config.read_config(str(BUNDLES / args.bundle / "configs" / "train.yaml"))
    config.update({"bundle_root": str(BUNDLES / args.bundle), "spatial_size": [args.spatial_size] * 3,
                   "pixdim": [args.pixdim] * 3, "device": device, "network_def#name": args.network,
                   "amp": device.type == "cuda", "channels_last": device.type == "cuda"})
    network = config.get_parsed_content("network")
    if args.checkpoint:
        network.load_state_dict(torch.load(args.checkpoint, map_location=device, weights_only=True))
    network.eval()
    transform = config.get_parsed_content("validate#transforms")
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    memory_format = torch.channels_last_3d if device.type == "cuda" else torch.contiguous_format
    records = load_records(args.dataset)

    def predict(path: str) -> torch.Tensor:
        image = transform({"image": path})["image"].as_tensor()[None].to(device, memory_format=memory_format)
        with torch.inference_mode(), amp:
            probs = torch.softmax(network(image).float(), dim=1)
        return probs.cpu()  # the probabilities on the host: the latency a user waits for

    latencies = []
    for record in records[: args.latency_scans + 1]:
        began = time.perf_counter()
        predict(record["image"])
        latencies.append(time.perf_counter() - began)
    cold, warm = latencies[0], sorted(latencies[1:])
    subset = [{"image": r["image"]} for r in records[: args.scans]]
    loader = DataLoader(Dataset(subset, transform), batch_size=args.batch, num_workers=args.workers)
    began = time.perf_counter()
    with torch.inference_mode(), amp:
        for batch in loader:
            torch.softmax(network(batch["image"].as_tensor().to(device, memory_format=memory_format)).float(), 1).cpu()
    evaluation = time.perf_counter() - began
    row = {"device": str(device), "network": args.network, "size": args.spatial_size,
           "first_scan_s": round(cold, 3), "latency_median_s": round(warm[len(warm) // 2], 3),
           "latency_max_s": round(warm[-1], 3), "eval_scans": len(subset), "eval_s": round(evaluation, 2),
           "eval_s_per_scan": round(evaluation / len(subset), 4), "workers": args.workers}
    print_table([row], list(row))
    print(write_result(f"inference_latency_{device.type}", {"row": row, "args": vars(args)}))


if __name__ == "__main__":
    main()
