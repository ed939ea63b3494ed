"""Cache fill (NIfTI to cached tensor) in volumes/s per worker count, bytes per cached volume, and the
persistent disk cache: a second pass must do no preprocessing.

The preprocessing chain is read from the bundle's own train.yaml, so this measures exactly what training caches.

    python benchmarks/cache_fill.py DATASET_DIR --workers 4,15 --limit 64 --cache-dir /tmp/pcache
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from unittest import mock

import torch
from monai.bundle import ConfigParser
from monai.data import CacheDataset
from monai.transforms import Compose, LoadImaged

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_result  # noqa: E402

from alz_monai.data import build_dataset, load_records  # noqa: E402

BUNDLE = Path(__file__).resolve().parent.parent / "bundles" / "ad_resnet3d"


def preprocessing(overrides: dict) -> Compose:
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.yaml"))
    parser.update({"bundle_root": str(BUNDLE), **overrides})
    return Compose(parser.get_parsed_content("preprocessing"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset")
    parser.add_argument("--workers", default="4,15")
    parser.add_argument("--limit", type=int, default=64)
    parser.add_argument("--spatial-size", type=int, default=128)
    parser.add_argument("--pixdim", type=float, default=1.5)
    parser.add_argument("--cache-dir", default=None, help="persistent-cache folder (skips that part when absent)")
    args = parser.parse_args()
    records = load_records(args.dataset)[: args.limit]
    base = {"spatial_size": [args.spatial_size] * 3, "pixdim": [args.pixdim] * 3}
    rows = []
    for dtype in ("float32", "float16"):
        transform = preprocessing({**base, "cache_dtype": dtype})
        for workers in (int(w) for w in args.workers.split(",")):
            if dtype == "float16" and workers != int(args.workers.split(",")[-1]):
                continue
            began = time.perf_counter()
            dataset = CacheDataset(records, transform=transform, num_workers=workers, progress=False)
            seconds = time.perf_counter() - began
            image = dataset[0]["image"]
            rows.append({"cache": "memory", "dtype": dtype, "workers": workers, "volumes": len(dataset),
                         "volumes_per_s": round(len(dataset) / seconds, 2),
                         "bytes_per_volume": image.element_size() * image.numel()})
            print_table(rows[-1:], list(rows[-1]))
    if args.cache_dir:
        transform = preprocessing(base)
        for attempt in ("first", "second"):
            calls = mock.patch.object(LoadImaged, "__call__", autospec=True, side_effect=LoadImaged.__call__)
            with calls as load_calls:
                began = time.perf_counter()
                dataset = build_dataset(records, transform, cache="disk", cache_dir=args.cache_dir)
                for index in range(len(dataset)):
                    dataset[index]
                seconds = time.perf_counter() - began
            rows.append({"cache": f"disk ({attempt} pass)", "dtype": "float32", "workers": 0,
                         "volumes": len(dataset), "volumes_per_s": round(len(dataset) / seconds, 2),
                         "nifti_loads": load_calls.call_count})
            print_table(rows[-1:], list(rows[-1]))
    print_table(rows, ["cache", "dtype", "workers", "volumes", "volumes_per_s", "bytes_per_volume", "nifti_loads"])
    print(write_result("cache_fill", {"rows": rows, "args": vars(args), "torch_threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
