"""``alz-monai preprocess SOURCE OUT``: the command-line face of :func:`~alz_monai.preprocess.preprocess_dataset`."""

from __future__ import annotations

import argparse
from typing import Any

from alz_monai.preprocess.qc import QC_THRESHOLD
from alz_monai.preprocess.registration import TRANSFORM_KINDS

__all__ = ["add_preprocess_parser"]


def _cmd_preprocess(args: argparse.Namespace) -> int:
    from alz_monai.preprocess.pipeline import PreprocessSettings
    from alz_monai.preprocess.runner import preprocess_dataset

    settings = PreprocessSettings(resolution=args.resolution, transform=args.transform,
                                  bias_correction=not args.no_bias_correction)
    summary = preprocess_dataset(args.source, args.output, settings=settings, classes=args.classes,
                                 workers=args.workers, qc_threshold=args.qc_threshold,
                                 exclude_flagged=args.exclude_flagged)
    print(f"{summary.processed} scans preprocessed, {summary.resumed} already done, {len(summary.failures)} failed; "
          f"{summary.flagged} below the QC threshold {args.qc_threshold:g}"
          + (f", {summary.excluded} of them left out of the table" if args.exclude_flagged else ""))
    for table in (summary.scans_table, summary.qc_table, summary.overview):
        if table is not None:
            print(f"  {table}")
    if summary.failures:
        print(f"{len(summary.failures)} scan(s) failed (run again to retry them):")
        for failure in summary.failures:
            print(f"  - {failure}")
        return 1
    return 0


def add_preprocess_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``alz-monai preprocess`` on the CLI's subparsers."""
    from alz_monai.cli import _classes

    parser = subparsers.add_parser(
        "preprocess", help="raw T1 scans to MNI-aligned, cropped, skull-stripped volumes with QC (t1-linear style)",
        description="N4 bias correction, registration to nilearn's MNI152 2009 template, crop to the t1-linear MNI "
                    "box, template brain mask, QC. OUT/scans.tsv is what the bundles read (--dataset_dir OUT). "
                    "Rerunning resumes: finished scans are kept, failed ones retried.")
    parser.add_argument("source", help="BIDS root, folder, CSV/TSV table or MONAI datalist JSON")
    parser.add_argument("output", help="output folder: new, empty, or an earlier output with the same settings")
    parser.add_argument("--classes", type=_classes, default=("CN", "AD"))
    parser.add_argument("--resolution", type=float, default=1.0, help="output voxel size in mm (1 = ClinicaDL)")
    parser.add_argument("--transform", choices=TRANSFORM_KINDS, default="affine",
                        help="affine (12 parameters, like t1-linear) or rigid (keeps head size)")
    parser.add_argument("--no-bias-correction", action="store_true", help="skip N4")
    parser.add_argument("--workers", type=int, default=1, help="scans processed at once")
    parser.add_argument("--qc-threshold", type=float, default=QC_THRESHOLD,
                        help=f"lowest registration score that passes QC (default {QC_THRESHOLD})")
    parser.add_argument("--exclude-flagged", action="store_true",
                        help="leave scans below the QC threshold out of OUT/scans.tsv (they stay in qc.tsv)")
    parser.set_defaults(func=_cmd_preprocess)
    return parser
