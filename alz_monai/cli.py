"""The ``alz-monai`` command: data tools around the MONAI bundles (synthetic data, splits, validation, demo)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import alz_monai
from alz_monai.compare import add_compare_parser
from alz_monai.crossval import add_cv_parser
from alz_monai.data.synth import add_site_arguments
from alz_monai.ensemble import add_ensemble_parser
from alz_monai.errors import AlzMonaiError
from alz_monai.export import add_export_parser
from alz_monai.html_report import add_report_parser
from alz_monai.preprocess.cli import add_preprocess_parser
from alz_monai.tune import add_tune_parser

__all__ = ["main", "build_parser"]

logger = logging.getLogger("alz_monai")


def _classes(text: str) -> tuple[str, ...]:
    classes = tuple(name.strip() for name in text.split(",") if name.strip())
    if len(classes) < 2:
        raise argparse.ArgumentTypeError(f"need at least two comma-separated class names, got {text!r}")
    return classes


def _ratios(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"ratios must be three numbers like 0.7,0.15,0.15, got {text!r}") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"ratios must be three numbers (train,val,test), got {text!r}")
    return values  # type: ignore[return-value]


def _cmd_synth(args: argparse.Namespace) -> int:
    from alz_monai.data.synth import generate_synthetic_dataset, plot_examples, site_from_arguments
    from alz_monai.data.synth_raw import generate_raw_dataset

    common = {"subjects": args.subjects, "sessions": args.sessions, "classes": args.classes, "effect": args.effect,
              "spacing": args.spacing, "seed": args.seed, "shuffle_labels": args.shuffle_labels,
              "workers": args.workers, "overwrite": args.overwrite}
    site = site_from_arguments(args)
    if args.raw:
        if site.name != "default":
            raise ValueError("--raw heads have their own scanner model; drop --site and the site options")
        params = generate_raw_dataset(args.output, **common)
    else:
        params = generate_synthetic_dataset(args.output, **common, site=site)
    print(f"wrote {params['scans']} scans of {args.subjects} subjects to {args.output}")
    print(f"theoretical best accuracy for effect {params['effect']:.3f}: {params['theoretical_best_accuracy']:.3f}")
    if args.figure:
        plot_examples(args.output, args.figure)
        print(f"example slices: {args.figure}")
    return 0


def _cmd_split(args: argparse.Namespace) -> int:
    from alz_monai.data.records import load_records, summarize_records
    from alz_monai.data.splits import assign_splits, check_no_leakage, write_split_table

    output = Path(args.output)
    if output.exists() and not args.force:
        raise FileExistsError(f"{output} exists; pass --force to replace it or choose another --output")
    records = load_records(args.dataset, classes=args.classes)
    if args.keep_given and all(r["split"] for r in records):
        logger.info("keeping the splits the dataset gives")
    else:
        records = assign_splits([{**r, "split": ""} for r in records], ratios=args.ratios, seed=args.seed)
    check_no_leakage(records, source=str(args.dataset))
    write_split_table(records, output)
    print(summarize_records(records, args.classes))
    print(f"split table written to {output}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from alz_monai.data.records import load_records, summarize_records
    from alz_monai.data.splits import check_no_leakage
    from alz_monai.data.validate import check_records, log_warnings

    records = load_records(args.dataset, classes=args.classes)
    report = check_records(records, args.classes, read_voxels=not args.headers_only,
                           foreground_fraction=args.foreground_fraction)
    log_warnings(report)
    problems = report.errors
    print(summarize_records(records, args.classes))
    if not problems:  # copies of one scan under two participants, or in two splits
        check_no_leakage(report.records, source=str(args.dataset))
    if problems:
        print(f"{len(problems)} problem(s) in {args.dataset}:")
        for problem in problems:
            print(f"  - {problem}")
        return 1
    print(f"all {len(records)} scans are readable 3D volumes with finite, non-constant voxels")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from alz_monai.demo import run_demo

    return run_demo(Path(args.output_dir), fast=args.fast)


def _cmd_explain(args: argparse.Namespace) -> int:
    import json

    from alz_monai.recipes import run_bundle

    overrides = {"input": str(Path(args.input).absolute()), "output_dir": str(Path(args.run_dir).absolute()),
                 "saliency_methods": json.dumps(args.methods)}
    if args.target:
        overrides["saliency_target"] = args.target
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set takes KEY=VALUE, got {item!r}")
        overrides[key] = value
    run_bundle(args.bundle or _bundle_of(Path(args.run_dir)), "explaining", ("explain",), overrides)
    print(f"saliency maps in {Path(args.run_dir) / 'saliency'}")
    return 0


def _bundle_of(run_dir: Path) -> str:
    """The bundle a run was trained with, from its recorded configuration (stage 1 when it has none)."""
    from alz_monai.recipes import STAGE1, STAGE2
    from alz_monai.run_config import load_run_config

    recorded = load_run_config(run_dir) or {}
    return STAGE2 if any(Path(f).parent.parent.name == STAGE2 for f in recorded.get("config_files", [])) else STAGE1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alz-monai", description=__doc__)
    parser.add_argument("--version", action="version", version=f"alz-monai {alz_monai.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    synth = sub.add_parser("synth", help="generate the synthetic T1 dataset (MNI152-based)")
    synth.add_argument("output", help="output folder (must be empty or new)")
    synth.add_argument("--subjects", type=int, default=40)
    synth.add_argument("--sessions", type=int, default=2)
    synth.add_argument("--classes", type=_classes, default=("CN", "AD"), help="e.g. CN,AD or CN,MCI,AD")
    synth.add_argument("--effect", type=float, default=None, help="class separation of the latent severity")
    synth.add_argument("--spacing", type=float, default=2.0, help="voxel size in mm")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--shuffle-labels", action="store_true", help="permute labels by participant (control)")
    synth.add_argument("--workers", type=int, default=1)
    synth.add_argument("--overwrite", action="store_true", help="replace a previous output in the folder")
    synth.add_argument("--figure", default=None, help="also save a PNG of example slices here")
    synth.add_argument("--raw", action="store_true",
                       help="whole heads as a scanner writes them (skull, neck, random pose and field of view)")
    add_site_arguments(synth)
    synth.set_defaults(func=_cmd_synth)

    split = sub.add_parser("split", help="write a subject-level split table for a dataset")
    split.add_argument("dataset", help="folder, CSV/TSV table or MONAI datalist JSON")
    split.add_argument("--output", default="splits.tsv")
    split.add_argument("--classes", type=_classes, default=("CN", "AD"))
    split.add_argument("--ratios", type=_ratios, default=(0.7, 0.15, 0.15), help="train,val,test")
    split.add_argument("--seed", type=int, default=0)
    split.add_argument("--keep-given", action="store_true", help="keep splits the dataset already carries")
    split.add_argument("--force", action="store_true", help="replace an existing split table")
    split.set_defaults(func=_cmd_split)

    validate = sub.add_parser("validate-data", help="check every scan and label; list all problems at once")
    validate.add_argument("dataset")
    validate.add_argument("--classes", type=_classes, default=("CN", "AD"))
    validate.add_argument("--headers-only", action="store_true", help="skip reading voxels (faster)")
    validate.add_argument("--foreground-fraction", type=float, default=0.1,
                          help="the bundles' foreground_fraction: a scan needs voxels above it (default 0.1)")
    validate.set_defaults(func=_cmd_validate)

    demo = sub.add_parser("demo", help="synthetic data, both training stages, evaluation, a table of test metrics")
    demo.add_argument("--output-dir", default="runs/demo")
    demo.add_argument("--fast", action="store_true", help="smallest settings (a smoke test, not a result)")
    demo.set_defaults(func=_cmd_demo)

    explain = sub.add_parser("explain", help="Grad-CAM and occlusion maps of scans, on each scan's own grid")
    explain.add_argument("input", help="a NIfTI scan, a folder of them or a text file listing them")
    explain.add_argument("--run-dir", required=True, help="training run whose checkpoints/model_best.pt is explained")
    explain.add_argument("--bundle", default=None, choices=("ad_resnet3d", "ad_mosa"),
                         help="bundle of the run (default: the one its run_config.yaml names)")
    explain.add_argument("--methods", nargs="+", default=["gradcam", "occlusion"], choices=("gradcam", "occlusion"))
    explain.add_argument("--target", default=None, help="class to explain, e.g. AD (default: the predicted class)")
    explain.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="bundle overrides, e.g. occlusion_mask_size=24 (the run's own knobs come from its "
                              "run_config.yaml)")
    explain.set_defaults(func=_cmd_explain)

    add_cv_parser(sub)
    add_compare_parser(sub)
    add_ensemble_parser(sub)
    add_tune_parser(sub)
    add_report_parser(sub)
    add_export_parser(sub)
    add_preprocess_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (AlzMonaiError, FileExistsError, FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"alz-monai {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
