"""Throughput of the original tool's data pipeline, re-implemented step by step, against ours.

The original loaded every scan on every epoch in DataLoader worker processes: nibabel load, crop to the
bounding box of voxels above 10% of the maximum, ``scipy.ndimage.zoom`` (order 1) to 128^3, z-score, then
numpy augmentation (random flips, rot90 in the axial plane, Gaussian noise, intensity scale and shift).
This script times one epoch of that loader over a folder of scans, for each worker count given.

    python benchmarks/original_pipeline.py DATASET_DIR --workers 4,15 --limit 64
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_result  # noqa: E402

from alz_monai.data.records import load_records  # noqa: E402


class OriginalToolDataset(Dataset):
    """The original tool's per-epoch loading and augmentation, faithfully re-implemented (not copied)."""

    def __init__(self, paths: list[str], labels: list[int], size: int = 128, augment: bool = True) -> None:
        self.paths, self.labels, self.size, self.augment = paths, labels, size, augment

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        volume = np.asarray(nib.load(self.paths[index]).get_fdata(), dtype=np.float32)
        volume = np.squeeze(volume)
        inside = np.argwhere(volume > 0.1 * volume.max())
        low, high = inside.min(axis=0), inside.max(axis=0) + 1
        volume = volume[low[0]:high[0], low[1]:high[1], low[2]:high[2]]
        volume = ndimage.zoom(volume, [self.size / s for s in volume.shape], order=1)
        volume = (volume - volume.mean()) / (volume.std() + 1e-8)
        if self.augment:
            rng = np.random.default_rng()
            for axis in range(3):
                if rng.random() < 0.5:
                    volume = np.flip(volume, axis=axis)
            volume = np.rot90(volume, k=int(rng.integers(4)), axes=(0, 1))
            volume = volume + rng.normal(0, 0.05, volume.shape).astype(np.float32)
            volume = volume * rng.uniform(0.9, 1.1) + rng.uniform(-0.1, 0.1)
        return torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None], self.labels[index]


def epoch_throughput(dataset: Dataset, workers: int, batch: int) -> float:
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, drop_last=False,
                        persistent_workers=False)
    began = time.perf_counter()
    seen = sum(images.shape[0] for images, _ in loader)
    return seen / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="a dataset folder/table alz-monai reads (e.g. alz-monai synth output)")
    parser.add_argument("--workers", default="4,15")
    parser.add_argument("--limit", type=int, default=64, help="scans in the timed epoch")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--label", default="", help="suffix of the result file, e.g. the data's voxel size")
    args = parser.parse_args()
    records = load_records(args.dataset)[: args.limit]
    dataset = OriginalToolDataset([r["image"] for r in records], [r["label"] for r in records], args.size)
    rows = [{"workers": w, "scans": len(dataset), "volumes_per_s": round(epoch_throughput(dataset, w, args.batch), 2)}
            for w in (int(v) for v in args.workers.split(","))]
    print_table(rows, ["workers", "scans", "volumes_per_s"])
    name = f"original_pipeline_{args.label}" if args.label else "original_pipeline"
    print(write_result(name, {"rows": rows, "args": vars(args)}))


if __name__ == "__main__":
    main()
