"""Names of everything a run folder holds, and the keys a batch carries: one place for both.

A run folder (``--output_dir``)::

    run_config.yaml           the recorded configuration: every later command on the folder reads it
    splits.tsv                the split table (reused on resume and evaluation)
    checkpoints/              checkpoint_latest.pt, checkpoint_epoch=<N>.pt, checkpoint_final.pt,
                              model_best.pt, best_metric.json
    reports/                  best-validation and test reports of the training run
    evaluation/<split>/       reports of ``run evaluating``
    inference/                predictions of ``run inferring``
    saliency/                 maps of ``run explaining`` / ``alz-monai explain``
    tensorboard/{train,val,test}
    summary_all.json          best validation and test metrics, written when training ends
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "BEST_METRIC_NAME", "BEST_MODEL_NAME", "CHECKPOINTS_DIRNAME", "DATASET_KEYS", "EVALUATION_DIRNAME",
    "FINAL_CHECKPOINT_NAME", "INFERENCE_DIRNAME", "LATEST_CHECKPOINT_NAME", "LOCK_NAME", "PATH_KEY",
    "REPORTS_DIRNAME", "RUN_CONFIG_NAME", "SALIENCY_DIRNAME", "SPLIT_TABLE_NAME", "STALE_MARKER_NAME",
    "SUMMARY_NAME", "TENSORBOARD_DIRNAME", "epoch_checkpoint_name", "is_epoch_checkpoint",
]

RUN_CONFIG_NAME = "run_config.yaml"
SPLIT_TABLE_NAME = "splits.tsv"
SUMMARY_NAME = "summary_all.json"
LOCK_NAME = ".lock"

CHECKPOINTS_DIRNAME = "checkpoints"
LATEST_CHECKPOINT_NAME = "checkpoint_latest.pt"
FINAL_CHECKPOINT_NAME = "checkpoint_final.pt"
BEST_MODEL_NAME = "model_best.pt"
BEST_METRIC_NAME = "best_metric.json"

REPORTS_DIRNAME = "reports"
EVALUATION_DIRNAME = "evaluation"
INFERENCE_DIRNAME = "inference"
SALIENCY_DIRNAME = "saliency"
TENSORBOARD_DIRNAME = "tensorboard"
# written beside a report whose model is no longer the run's best (the run was resumed and improved since)
STALE_MARKER_NAME = "STALE.txt"

# What a dataset item carries (table extras such as age stay in the records, out of the batches), and the key
# of the scan's path, kept as a string once LoadImaged has replaced "image" by the volume.
DATASET_KEYS = ("image", "label", "participant_id", "session_id")
PATH_KEY = "path"

_EPOCH_PREFIX, _EPOCH_SUFFIX = "checkpoint_epoch=", ".pt"


def epoch_checkpoint_name(epoch: int) -> str:
    return f"{_EPOCH_PREFIX}{epoch}{_EPOCH_SUFFIX}"


def is_epoch_checkpoint(path: str | Path) -> bool:
    name = Path(path).name
    return name.startswith(_EPOCH_PREFIX) and name.endswith(_EPOCH_SUFFIX)
