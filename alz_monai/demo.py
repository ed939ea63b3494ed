"""``alz-monai demo``: synthetic data, stage 1 and stage 2 training, test evaluation, one table.

Everything goes through the real entry point (``python -m monai.bundle run``), exactly as a user would
type it; each demo run gets its own time-stamped folder, so nothing earlier is overwritten.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
import sys
import time
from pathlib import Path

import alz_monai
from alz_monai.reports import format_metrics_table, load_json

__all__ = ["BUNDLES_DIR", "run_demo", "run_bundle"]

logger = logging.getLogger(__name__)

BUNDLES_DIR = Path(alz_monai.__file__).resolve().parent.parent / "bundles"

# Small enough for a 2-core CPU in a few minutes. The demo data carry a stronger disease effect than the
# default (theoretical best accuracy 0.98 instead of 0.88) so that a few CPU epochs can learn it; the default
# effect needs about 30 epochs of 128^3 training on a GPU.
DEMO_DATA = {"subjects": 100, "sessions": 2, "spacing": 4.0, "effect": 4.0, "seed": 0, "workers": 2}
DEMO_COMMON = {"spatial_size": "[48,48,48]", "pixdim": "[4,4,4]", "batch_size": "8", "bootstrap_resamples": "500",
               "log_every_n_steps": "10", "key_metric": "balanced_accuracy"}
DEMO_STAGE1 = {"num_epochs": "15", "learning_rate": "0.001", "network_def#name": "resnet10"}
DEMO_STAGE2 = {"num_epochs": "6", "warmup_epochs": "1", "learning_rate": "0.0005", "backbone": "resnet10",
               "embed_dim": "64", "num_heads": "4", "depth": "1"}
FAST = {"subjects": 12, "num_epochs": "2"}


def run_bundle(bundle: str, run_id: str, config_files: list[str], overrides: dict[str, str]) -> None:
    """``python -m monai.bundle run RUN_ID`` in the bundle's folder; a failure stops the demo with its command."""
    config = config_files[0] if len(config_files) == 1 else str(config_files)
    command = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", config]
    for key, value in overrides.items():
        command += [f"--{key}", value]
    cwd = BUNDLES_DIR / bundle
    logger.info("(cd %s && %s)", cwd, shlex.join(command))
    result = subprocess.run(command, cwd=cwd, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"the {bundle} {run_id} run failed (exit {result.returncode}); its log is above. "
                           f"Command: (cd {cwd} && {shlex.join(command)})")


def run_demo(output_dir: Path, fast: bool = False) -> int:
    from alz_monai.data.synth import generate_synthetic_dataset

    if not BUNDLES_DIR.is_dir():
        raise FileNotFoundError(f"{BUNDLES_DIR} not found: the demo runs from a source checkout (pip install -e .)")
    started = time.monotonic()
    output_dir = output_dir.absolute()
    data_dir = output_dir / ("data-fast" if fast else "data")
    if not (data_dir / "scans.tsv").is_file():
        params = {**DEMO_DATA, "subjects": FAST["subjects"] if fast else DEMO_DATA["subjects"]}
        generate_synthetic_dataset(data_dir, **params)
    run_dir = output_dir / time.strftime("run-%Y%m%d-%H%M%S")
    epochs = {"num_epochs": FAST["num_epochs"]} if fast else {}
    common = {**DEMO_COMMON, "dataset_dir": str(data_dir)}
    stage1_dir, stage2_dir = run_dir / "ad_resnet3d", run_dir / "ad_mosa"

    run_bundle("ad_resnet3d", "training", ["configs/train.yaml"],
               {**common, **DEMO_STAGE1, **epochs, "output_dir": str(stage1_dir)})
    run_bundle("ad_mosa", "training", ["configs/train.yaml"],
               {**common, **DEMO_STAGE2, **epochs, "output_dir": str(stage2_dir),
                "stage1_model": str(stage1_dir / "checkpoints" / "model_best.pt"),
                **({"warmup_epochs": "0"} if fast else {})})
    evaluate = ["configs/train.yaml", "configs/evaluate.yaml"]
    run_bundle("ad_resnet3d", "evaluating", evaluate,
               {**common, "network_def#name": DEMO_STAGE1["network_def#name"], "output_dir": str(stage1_dir)})
    run_bundle("ad_mosa", "evaluating", evaluate,
               {**common, **{k: DEMO_STAGE2[k] for k in ("backbone", "embed_dim", "num_heads", "depth")},
                "output_dir": str(stage2_dir)})

    columns = {name: load_json(folder / "evaluation" / "test" / "test_metrics.json")
               for name, folder in (("ResNet10 (stage 1)", stage1_dir), ("MosaShared (stage 2)", stage2_dir))}
    intervals = {name: report.get("confidence_intervals", {}) for name, report in columns.items()}
    bound = load_json(data_dir / "synth_parameters.json")["theoretical_best_accuracy"]
    minutes = (time.monotonic() - started) / 60
    print(f"\nTest-split metrics (95% bootstrap CIs), demo finished in {minutes:.1f} min:")
    print(format_metrics_table(columns, intervals=intervals))
    print(f"\nTheoretical best accuracy on this synthetic data: {bound:.3f}"
          + (" (--fast: a smoke test, not a result)" if fast else ""))
    print(f"TensorBoard:   tensorboard --logdir {run_dir}")
    for name, folder in (("stage 1", stage1_dir), ("stage 2", stage2_dir)):
        print(f"JSON reports ({name}): {folder / 'evaluation' / 'test'} and {folder / 'summary_all.json'}")
    return 0
