"""Names of everything a run folder holds, and the keys a batch carries: one place for both.

A run folder (``--output_dir``)::

    run_config.yaml           the recorded configuration: every later command on the folder reads it
    splits.tsv                the split table (reused on resume and evaluation)
    checkpoints/              checkpoint_latest.pt, checkpoint_epoch=<N>.pt, checkpoint_final.pt,
                              model_best.pt, best_metric.json
    reports/                  best-validation and test reports of the training run
    evaluation/<split>/       reports of ``run evaluating``
    evaluation/external_<name>/   reports of ``run evaluating --external_data <name>`` (another site's scans)
    inference/                predictions of ``run inferring``
    saliency/                 maps of ``run explaining`` / ``alz-monai explain``
    tensorboard/{train,val,test}
    summary_all.json          best validation and test metrics, written when training ends
"""

from __future__ import annotations

import os
from pathlib import Path

from alz_monai.errors import ConfigError

__all__ = [
    "BEST_METRIC_NAME", "BEST_MODEL_NAME", "CHECKPOINTS_DIRNAME", "DATASET_KEYS", "EVALUATION_DIRNAME",
    "FINAL_CHECKPOINT_NAME", "INFERENCE_DIRNAME", "LATEST_CHECKPOINT_NAME", "LOCK_NAME", "PATH_KEY",
    "REPORTS_DIRNAME", "RUN_CONFIG_NAME", "SALIENCY_DIRNAME", "SPLIT_TABLE_NAME", "STALE_MARKER_NAME",
    "SUMMARY_NAME", "TENSORBOARD_DIRNAME", "epoch_checkpoint_name", "evaluation_dir", "is_epoch_checkpoint",
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
EXTERNAL_SPLIT = "external"  # the split of every scan of --external_data (alz_monai.data.splits)
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


def evaluation_dir(output_dir: str | os.PathLike, eval_split: str, external_data: str | os.PathLike | None) -> Path:
    """Where ``run evaluating`` writes: ``evaluation/<split>``, or ``evaluation/external_<name>`` for another
    site's data, named after its folder or file (so that reports on several external datasets stay apart).

    Every scan of ``external_data`` is in the external split, so any other ``eval_split`` is refused.
    """
    if not external_data:
        if eval_split == EXTERNAL_SPLIT:
            raise ConfigError(f"--eval_split {EXTERNAL_SPLIT} evaluates another site's data: pass --external_data "
                              "PATH (a folder, table, datalist or BIDS root) instead")
        return Path(output_dir) / EVALUATION_DIRNAME / eval_split
    if eval_split != EXTERNAL_SPLIT:
        raise ConfigError(f"--external_data evaluates every scan of {external_data} as the {EXTERNAL_SPLIT!r} split; "
                          f"drop --eval_split {eval_split}")
    source = Path(os.path.abspath(os.path.expanduser(external_data)))
    name = source.name if source.is_dir() else source.stem
    return Path(output_dir) / EVALUATION_DIRNAME / f"{EXTERNAL_SPLIT}_{name}"
