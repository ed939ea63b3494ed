"""Preprocessing time per scan (``alz-monai preprocess``: N4, registration, brain mask, crop, QC) and scans/s.

Makes raw heads with ``alz-monai synth --raw`` unless RAW already holds a dataset, then preprocesses them once per
worker count into a fresh folder under OUT. Per scan, ``seconds`` is the wall time of one scan as the runner
records it (each worker gets cpu_count / workers ITK threads); scans/s is the whole run's throughput.

    python benchmarks/preprocess_speed.py data/raw_speed runs/preprocess_speed --subjects 4 --sessions 1 --workers 2
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_result  # noqa: E402

from alz_monai.data.synth_raw import generate_raw_dataset  # noqa: E402
from alz_monai.preprocess import PreprocessSettings, preprocess_dataset  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("raw", type=Path, help="raw BIDS dataset; made here when the folder is missing or empty")
    parser.add_argument("out", type=Path, help="one new preprocessing folder per worker count goes here")
    parser.add_argument("--subjects", type=int, default=8)
    parser.add_argument("--sessions", type=int, default=1)
    parser.add_argument("--spacing", type=float, default=1.0, help="raw voxel size in mm")
    parser.add_argument("--resolution", type=float, default=1.0, help="output voxel size in mm")
    parser.add_argument("--workers", default=str(os.cpu_count() or 1), help="comma-separated worker counts")
    parser.add_argument("--label", default="", help="suffix of the result file name")
    args = parser.parse_args()

    if not (args.raw / "participants.tsv").is_file():
        began = time.perf_counter()
        generate_raw_dataset(args.raw, subjects=args.subjects, sessions=args.sessions, spacing=args.spacing,
                             workers=os.cpu_count() or 1, progress=False)
        print(f"made {args.subjects * args.sessions} raw scans in {time.perf_counter() - began:.1f} s", flush=True)
    rows = []
    for workers in (int(value) for value in args.workers.split(",")):
        out = args.out / f"workers{workers}"
        began = time.perf_counter()
        summary = preprocess_dataset(args.raw, out, settings=PreprocessSettings(resolution=args.resolution),
                                     workers=workers, progress=False)
        wall = time.perf_counter() - began
        qc = pd.read_csv(summary.qc_table, sep="\t")
        done = qc[qc["status"] == "done"]
        rows.append({
            "workers": workers, "threads_per_worker": max(1, (os.cpu_count() or 1) // workers),
            "scans": len(qc), "failed": len(qc) - len(done), "wall_s": round(wall, 1),
            "scans_per_s": round(len(done) / wall, 3), "median_s_per_scan": round(float(done["seconds"].median()), 2),
            "max_s_per_scan": float(done["seconds"].max()), "median_qc_score": float(done["qc_score"].median()),
        })
        print_table(rows[-1:], list(rows[-1]))
    name = f"preprocess_speed_{args.label}" if args.label else "preprocess_speed"
    path = write_result(name, {"raw_spacing_mm": args.spacing, "resolution_mm": args.resolution,
                               "cpu_count": os.cpu_count(), "runs": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
