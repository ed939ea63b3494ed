"""The ``alz-monai`` command: data tools around the MONAI bundles (synthetic data, splits, validation, demo)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

import alz_monai
from alz_monai import compare, crossval, ensemble, export, html_report, tune
from alz_monai.data.synth import SITE_PARAMETERS, SITES, SiteEffects, site_effects
from alz_monai.errors import AlzMonaiError, ConfigError
from alz_monai.networks import NETWORK_NAMES
from alz_monai.preprocess.qc import QC_THRESHOLD
from alz_monai.preprocess.registration import TRANSFORM_KINDS

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
    return values


def _numbers(count: int) -> Callable[[str], tuple[float, ...]]:
    def parse(text: str) -> tuple[float, ...]:
        try:
            values = tuple(float(value) for value in text.split(","))
        except ValueError:
            values = ()
        if len(values) != count:
            raise argparse.ArgumentTypeError(f"expected {count} comma-separated numbers, got {text!r}")
        return values
    return parse


def _fold_list(text: str) -> list[int]:
    try:
        return [int(value) for value in text.split(",") if value.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"folds must be comma-separated integers like 0,2, got {text!r}") from None


def _spatial_size(text: str) -> tuple[int, int, int]:
    try:
        sizes = tuple(int(value) for value in text.strip("[]()").split(","))
    except ValueError:
        message = f"spatial size must be three integers like 128,128,128, got {text!r}"
        raise argparse.ArgumentTypeError(message) from None
    if len(sizes) != 3 or min(sizes) <= 0:
        raise argparse.ArgumentTypeError(f"spatial size must be three positive integers, got {text!r}")
    return sizes


def _option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--option takes KEY=VALUE (e.g. embed_dim=64), got {text!r}")
    return key, yaml.safe_load(value)


def _add_site_arguments(parser: argparse.ArgumentParser) -> None:
    """``--site NAME`` and one option per :data:`~alz_monai.data.synth.SITE_PARAMETERS` field, which replaces the
    site's value."""
    group = parser.add_argument_group("scanner/site effects (a preset, then single values replaced)")
    group.add_argument("--site", default="default", choices=sorted(SITES),
                       help="; ".join(f"{name}: {site.description}" for name, site in SITES.items()))
    options: dict[str, tuple[Callable[[str], Any], str]] = {
        "voxel_scale": (_numbers(3), "voxel size along x,y,z as multiples of --spacing, e.g. 1,1,1.5"),
        "slice_axis": (int, "axis of the slices: 0 (sagittal), 1 (coronal), 2 (axial)"),
        "slice_thickness": (float, "slice profile width as a multiple of the slice spacing (>= 1)"),
        "field_of_view_mm": (_numbers(3), "scanned extent along x,y,z in mm"),
        "field_of_view_shift_mm": (_numbers(3), "shift of the field of view's centre along x,y,z in mm"),
        "contrast": (float, "tissue contrast against fluid (1: unchanged)"),
        "gamma_log_mean": (float, "mean log intensity gamma"),
        "gamma_log_sd": (float, "scan-to-scan SD of the log gamma"),
        "bias_log_sd_range": (_numbers(2), "bias field strength range LOW,HIGH (SD of its log)"),
        "noise_fraction_range": (_numbers(2), "Rician noise range LOW,HIGH relative to the signal"),
        "signal_scale_range": (_numbers(2), "scanner units range LOW,HIGH of the brightest tissue"),
        "orientations": (lambda text: tuple(text.split(",")), "storage orientations, e.g. RAS,LPS"),
        "float32_fraction": (float, "fraction of scans stored as float32 (the others int16)"),
        "singleton_4d_fraction": (float, "fraction of scans stored as 4D with one volume"),
    }
    for name, (kind, text) in options.items():
        group.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None, help=text)


def _site_from_arguments(args: argparse.Namespace) -> SiteEffects:
    """The site that the options of :func:`_add_site_arguments` describe."""
    return site_effects(args.site, **{name: getattr(args, name) for name in SITE_PARAMETERS
                                      if getattr(args, name) is not None})


def _cmd_synth(args: argparse.Namespace) -> int:
    from alz_monai.data.synth import generate_synthetic_dataset, plot_examples
    from alz_monai.data.synth_raw import generate_raw_dataset

    common = {"subjects": args.subjects, "sessions": args.sessions, "classes": args.classes, "effect": args.effect,
              "spacing": args.spacing, "seed": args.seed, "shuffle_labels": args.shuffle_labels,
              "workers": args.workers, "overwrite": args.overwrite}
    site = _site_from_arguments(args)
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
    if args.overwrite:
        overrides["overwrite"] = "true"
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


def _add_cv_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-folds", "--num_folds", dest="num_folds", type=int, default=None,
                        help="number of folds K (required)")
    parser.add_argument("--output-dir", "--output_dir", dest="output_dir", type=Path, default=None,
                        help="folder of the cross-validation: fold_<k>/ runs, cv_summary.json (required)")
    parser.add_argument("--folds", type=_fold_list, default=None, help="train only these folds, e.g. 0,2")
    parser.add_argument("--split-table", type=Path, default=None,
                        help="base splits.tsv to use (e.g. of an earlier run, to test on its test scans)")
    parser.add_argument("--bootstrap-resamples", type=int, default=1000, help="resamples of the ensemble's 95%% CIs")


def _bundle_overrides(parser: argparse.ArgumentParser, add_options: Callable[[argparse.ArgumentParser], None],
                      args: argparse.Namespace) -> list[str]:
    """The options of ``add_options`` picked out of ``args.bundle_arguments`` into ``args``; the rest, bundle
    overrides. argparse cannot parse options between a positional and "--" (and drops "--" in some places), so
    everything after BUNDLE_DIR arrives in ``bundle_arguments``."""
    options_parser = argparse.ArgumentParser(prog=parser.prog, add_help=False, allow_abbrev=False)
    add_options(options_parser)
    _, overrides = options_parser.parse_known_args(
        [token for token in args.bundle_arguments if token != "--"], namespace=args)
    return overrides


def _cmd_cv(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    overrides = _bundle_overrides(parser, _add_cv_options, args)
    if args.num_folds is None or args.output_dir is None:
        parser.error("--num-folds and --output-dir are required")
    try:
        summary = crossval.run_cross_validation(args.bundle_dir, args.output_dir, args.num_folds, folds=args.folds,
                                                overrides=overrides, split_table=args.split_table,
                                                bootstrap_resamples=args.bootstrap_resamples)
    except crossval.FoldFailedError as error:
        print(f"alz-monai cv: {error}", file=sys.stderr)
        return 1
    print(crossval.format_cv_table(summary))
    print(f"folds beside their ensemble: {html_report.write_cv_report(args.output_dir)}")
    return 0


def _add_bundle_runs_parser(subparsers: Any, name: str, description: str | None, usage: str,
                            add_options: Callable[[argparse.ArgumentParser], None],
                            command: Callable[[argparse.ArgumentParser, argparse.Namespace], int], *, summary: str,
                            overrides_help: str) -> None:
    """A command that trains a bundle many times (cv folds, tune trials): BUNDLE_DIR, its options, -- overrides."""
    parser = subparsers.add_parser(name, help=summary, description=description, usage=usage,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle_dir", type=Path, help="bundle folder, e.g. bundles/ad_resnet3d")
    add_options(parser)
    parser.add_argument("bundle_arguments", nargs=argparse.REMAINDER, metavar="-- BUNDLE_OVERRIDES",
                        help=overrides_help)
    parser.set_defaults(func=lambda args: command(parser, args))


def _add_cv_parser(subparsers: Any) -> None:
    _add_bundle_runs_parser(
        subparsers, "cv", crossval.__doc__,
        "%(prog)s BUNDLE_DIR --num-folds K --output-dir OUT [--folds 0,2] [--split-table TSV] "
        "[--bootstrap-resamples N] [-- BUNDLE_OVERRIDES ...]", _add_cv_options, _cmd_cv,
        summary="k-fold cross-validation of a bundle, with a fold ensemble on the test split",
        overrides_help="after --: overrides for every fold's training, e.g. -- --num_epochs 50 (relative paths are "
                       "relative to BUNDLE_DIR)")


def _add_tune_options(parser: argparse.ArgumentParser) -> None:
    _add_cv_options(parser)
    parser.add_argument("--trials", type=int, default=None, help="number of trials of the study (required)")
    parser.add_argument("--space", type=Path, default=None, help="YAML/JSON search space (default: DEFAULT_SPACE)")
    parser.add_argument("--metric", default=None, help="validation metric to optimise (default: key_metric)")
    parser.add_argument("--direction", choices=("maximize", "minimize"), default=None,
                        help="default: from key_metric_mode")
    parser.add_argument("--no-prune", dest="prune", action="store_false", help="train every fold of every trial")
    parser.add_argument("--seed", type=int, default=0, help="sampler seed (one per parallel process)")


def _cmd_tune(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    overrides = _bundle_overrides(parser, _add_tune_options, args)
    if args.num_folds is None or args.output_dir is None or args.trials is None:
        parser.error("--num-folds, --output-dir and --trials are required")
    summary = tune.run_tuning(args.bundle_dir, args.output_dir, args.num_folds, args.trials, space=args.space,
                              overrides=overrides, folds=args.folds, metric=args.metric, direction=args.direction,
                              split_table=args.split_table, prune=args.prune,
                              bootstrap_resamples=args.bootstrap_resamples, seed=args.seed)
    print(tune.format_tune_table(summary))
    return 0


def _add_tune_parser(subparsers: Any) -> None:
    _add_bundle_runs_parser(
        subparsers, "tune", tune.__doc__,
        "%(prog)s BUNDLE_DIR --num-folds K --output-dir OUT --trials N [--folds 0,2] [--space FILE] "
        "[--metric M] [--no-prune] [--seed S] [-- BUNDLE_OVERRIDES ...]", _add_tune_options, _cmd_tune,
        summary="Optuna search of a bundle's recipe over cross-validation folds of train+val",
        overrides_help="after --: overrides for every trial's training, e.g. -- --spatial_size [96,112,96]")


def _cmd_compare(args: argparse.Namespace) -> int:
    output = args.output if args.output is not None else compare.default_output(args.run_a, args.run_b, args.split)
    if output.exists() and not args.overwrite:
        raise FileExistsError(f"{output} exists; pass --overwrite to replace it, or --output another file")
    result = compare.compare_runs(args.run_a, args.run_b, split=args.split, output=output,
                                  bootstrap_resamples=args.bootstrap_resamples, seed=args.seed)
    print(compare.format_comparison_table(result))
    return 0


def _add_compare_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "compare", help="paired comparison of two runs on the same scans (CIs, DeLong, McNemar)",
        description=compare.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_a", type=Path, help="run folder (or a <split>_predictions.csv) of model A")
    parser.add_argument("run_b", type=Path, help="run folder (or a <split>_predictions.csv) of model B")
    parser.add_argument("--split", default="test", help="split whose predictions are compared (default: test)")
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON result (default: RUN_A/comparisons/<split>_vs_<RUN_B name>.json)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing result")
    parser.add_argument("--bootstrap-resamples", type=int, default=1000, help="resamples of each 95%% CI")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    parser.set_defaults(func=_cmd_compare)


def _cmd_ensemble(args: argparse.Namespace) -> int:
    summary = ensemble.ensemble_runs(args.runs, args.output_dir, split=args.split, calibrate=args.calibrate,
                                     compare_with=args.compare_with, bootstrap_resamples=args.bootstrap_resamples,
                                     seed=args.seed, overwrite=args.overwrite)
    print(ensemble.format_ensemble_table(summary))
    return 0


def _add_ensemble_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "ensemble", help="average the probabilities of several runs; per-scan and per-participant metrics",
        description=ensemble.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (or <split>_predictions.csv files), 2 or more")
    parser.add_argument("--output-dir", "--output_dir", dest="output_dir", type=Path, required=True,
                        help="folder of the ensemble's reports (must be new or empty unless --overwrite)")
    parser.add_argument("--split", default="test", help="split whose predictions are averaged (default: test)")
    parser.add_argument("--calibrate", action="store_true",
                        help="fit a temperature to the ensemble of the runs' best_val predictions and apply it")
    parser.add_argument("--compare-with", type=Path, default=None,
                        help="a single run (e.g. the best member) to compare the ensemble with (DeLong, McNemar)")
    parser.add_argument("--bootstrap-resamples", type=int, default=1000, help="resamples of each 95%% CI")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    parser.add_argument("--overwrite", action="store_true", help="write over the reports in --output-dir")
    parser.set_defaults(func=_cmd_ensemble)


def _cmd_report(args: argparse.Namespace) -> int:
    path = html_report.write_report(args.runs, args.output, split=args.split, band_resamples=args.band_resamples)
    print(f"report written to {path}")
    return 0


def _add_report_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "report", help="a self-contained HTML report of a run, or of several runs side by side",
        description="One run folder: <run>/report.html (a cross-validation folder: its folds beside the ensemble). "
                    "Several: one comparison page, written to --output.")
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run folder(s): a training --output_dir, an "
                        "`alz-monai cv` or `alz-monai ensemble` output folder")
    parser.add_argument("--output", type=Path, default=None,
                        help="HTML file to write (default for one run: <run>/report.html)")
    parser.add_argument("--split", default="test", help="split compared across runs (default: test)")
    parser.add_argument("--band-resamples", type=int, default=1000,
                        help="bootstrap resamples of the ROC bands of figures drawn from predictions")
    parser.set_defaults(func=_cmd_report)


def _cmd_export(args: argparse.Namespace) -> int:
    output = args.output if args.output is not None else args.checkpoint.with_suffix(".onnx")
    if output.exists() and not args.force:
        raise FileExistsError(f"{output} exists; pass --force to replace it or choose another --output")
    classes = tuple(name.strip() for name in args.classes.split(",") if name.strip())
    if len(classes) < 2:
        raise ConfigError(f"--classes needs the run's class names in label order, e.g. CN,AD; got {args.classes!r}")
    check = export.export_checkpoint_onnx(args.network, args.checkpoint, output, spatial_size=args.spatial_size,
                                          in_channels=args.in_channels, classes=classes, options=dict(args.option))
    print(check.describe())
    print(f"ONNX model written to {output}")
    return 0


def _add_export_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "export-onnx", help="export a trained checkpoint to ONNX, checked against PyTorch with onnxruntime",
        description=export.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="e.g. RUN/checkpoints/model_best.pt")
    parser.add_argument("--network", required=True, choices=NETWORK_NAMES, help="network the run trained")
    parser.add_argument("--spatial-size", type=_spatial_size, required=True, help="input size D,H,W of the run")
    parser.add_argument("--option", type=_option, action="append", default=[], metavar="KEY=VALUE",
                        help="network option the run used (ad_mosa: backbone, embed_dim, depth, num_heads, ...)")
    parser.add_argument("--classes", default="CN,AD", help="class names in label order (recorded in the model)")
    parser.add_argument("--in-channels", type=int, default=1)
    parser.add_argument("--output", type=Path, default=None, help="ONNX file (default: the checkpoint's, .onnx)")
    parser.add_argument("--force", action="store_true", help="replace an existing ONNX file")
    parser.set_defaults(func=_cmd_export)


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


def _add_preprocess_parser(subparsers: Any) -> None:
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
    _add_site_arguments(synth)
    synth.set_defaults(func=_cmd_synth)

    split = sub.add_parser("split", help="write a subject-level split table for a dataset")
    split.add_argument("dataset", help="folder, CSV/TSV table or MONAI datalist JSON")
    split.add_argument("--output", required=True,
                       help="the table to write (TSV); train on it with --dataset_dir PATH: its splits are kept")
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
    explain.add_argument("--overwrite", action="store_true", help="replace maps an earlier run wrote")
    explain.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="bundle overrides, e.g. occlusion_mask_size=24 (the run's own knobs come from its "
                              "run_config.yaml)")
    explain.set_defaults(func=_cmd_explain)

    _add_cv_parser(sub)
    _add_compare_parser(sub)
    _add_ensemble_parser(sub)
    _add_tune_parser(sub)
    _add_report_parser(sub)
    _add_export_parser(sub)
    _add_preprocess_parser(sub)
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
