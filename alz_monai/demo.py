"""``alz-monai demo``: synthetic data, stage 1 and stage 2 training, test evaluation, one table.

Everything goes through the real entry point (``python -m monai.bundle run``), exactly as a user would
type it; each demo run gets its own time-stamped folder, so nothing earlier is overwritten.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from alz_monai.layout import BEST_MODEL_NAME, CHECKPOINTS_DIRNAME, EVALUATION_DIRNAME, SUMMARY_NAME
from alz_monai.recipes import BUNDLES_DIR, STAGE1, STAGE2, run_bundle
from alz_monai.reports import format_metrics_table, load_json

__all__ = ["run_demo"]

logger = logging.getLogger(__name__)

# Small enough for a 2-core CPU in minutes. The demo data carry a stronger disease effect than the default
# (theoretical best accuracy 0.94 instead of 0.88) so that a few CPU epochs can learn it, yet not so strong that
# every model scores 1.0 (the default effect needs about 30 epochs of 128^3 training on a GPU).
DEMO_DATA: dict[str, Any] = {"subjects": 100, "sessions": 2, "spacing": 4.0, "effect": 3.0, "seed": 0, "workers": 2}
DEMO_COMMON = {"spatial_size": "[48,48,48]", "pixdim": "[4,4,4]", "batch_size": "8", "bootstrap_resamples": "500",
               "log_every_n_steps": "10", "key_metric": "balanced_accuracy"}
DEMO_STAGE1 = {"num_epochs": "15", "learning_rate": "0.001", "network_def#name": "resnet10"}
DEMO_STAGE2 = {"num_epochs": "6", "warmup_epochs": "1", "learning_rate": "0.0005", "backbone": "resnet10",
               "embed_dim": "64", "num_heads": "4", "depth": "1"}
FAST: dict[str, Any] = {"subjects": 12, "num_epochs": "2"}


def run_demo(output_dir: Path, fast: bool = False) -> int:
    from alz_monai.data.synth import generate_synthetic_dataset

    if not BUNDLES_DIR.is_dir():
        raise FileNotFoundError(f"{BUNDLES_DIR} not found: the demo runs from a source checkout (pip install -e .)")
    started = time.monotonic()
    output_dir = output_dir.absolute()
    params = {**DEMO_DATA, "subjects": FAST["subjects"] if fast else DEMO_DATA["subjects"]}
    # named by what it holds, so that a demo with other data settings never reuses an older dataset
    data_dir = output_dir / "data-{subjects}x{sessions}-{spacing:g}mm-effect{effect:g}-seed{seed}".format(**params)
    if not (data_dir / "scans.tsv").is_file():
        generate_synthetic_dataset(data_dir, **params)
    run_dir = output_dir / time.strftime("run-%Y%m%d-%H%M%S")
    epochs = {"num_epochs": FAST["num_epochs"]} if fast else {}
    common = {**DEMO_COMMON, "dataset_dir": str(data_dir)}
    stage1_dir, stage2_dir = run_dir / STAGE1, run_dir / STAGE2

    steps = [(STAGE1, "training", (), {**common, **DEMO_STAGE1, **epochs, "output_dir": str(stage1_dir)}),
             (STAGE2, "training", (), {**common, **DEMO_STAGE2, **epochs, "output_dir": str(stage2_dir),
                                       "stage1_model": str(stage1_dir / CHECKPOINTS_DIRNAME / BEST_MODEL_NAME),
                                       **({"warmup_epochs": "0"} if fast else {})}),
             # every knob of the runs (geometry, network, data) comes from their run_config.yaml
             (STAGE1, "evaluating", ("evaluate",), {"output_dir": str(stage1_dir)}),
             (STAGE2, "evaluating", ("evaluate",), {"output_dir": str(stage2_dir)})]
    for number, (bundle, workflow, overlays, overrides) in enumerate(steps, start=1):
        log_path = run_dir / f"{bundle}_{workflow}.log"
        print(f"[{number}/{len(steps)}] {bundle} {workflow}, log in {log_path}", flush=True)
        step_started = time.monotonic()
        run_bundle(bundle, workflow, overlays, overrides, log_path=log_path)
        print(f"[{number}/{len(steps)}] done in {time.monotonic() - step_started:.0f} s", flush=True)

    columns = {name: load_json(folder / EVALUATION_DIRNAME / "test" / "test_metrics.json")
               for name, folder in (("ResNet10 (stage 1)", stage1_dir), ("MosaShared (stage 2)", stage2_dir))}
    intervals = {name: report.get("confidence_intervals", {}) for name, report in columns.items()}
    bound = load_json(data_dir / "synth_parameters.json")["theoretical_best_accuracy"]
    minutes = (time.monotonic() - started) / 60
    print(f"\nTest-split metrics (95% bootstrap CIs), demo finished in {minutes:.1f} min:")
    print(format_metrics_table(columns, intervals=intervals))
    print(f"\nTheoretical best accuracy on this synthetic data: {bound:.3f}"
          + (" (--fast: a smoke test, not a result)" if fast else ""))
    print(f"TensorBoard:   tensorboard --logdir {run_dir}")
    print(f"Reports:       {stage1_dir / 'report.html'}, {stage2_dir / 'report.html'}")
    for name, folder in (("stage 1", stage1_dir), ("stage 2", stage2_dir)):
        print(f"JSON reports ({name}): {folder / EVALUATION_DIRNAME / 'test'} and {folder / SUMMARY_NAME}")
    return 0
