"""From records to cached MONAI datasets, samplers and class weights."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.data.utils import json_hashing
from torch.utils.data import WeightedRandomSampler

from alz_monai.data.records import bids_entity, is_nifti, load_records, summarize_records
from alz_monai.data.splits import kfold_splits, records_for_split, resolve_splits
from alz_monai.data.validate import ensure_valid, validate_records
from alz_monai.distributed import barrier, is_main_process
from alz_monai.errors import DataError

__all__ = ["CACHE_MODES", "DATASET_KEYS", "PATH_KEY", "prepare_records", "split_records", "scan_records",
           "build_dataset", "class_balanced_sampler", "class_weights"]

logger = logging.getLogger(__name__)

CACHE_MODES = ("memory", "disk", "none")
# what a dataset item carries: table extras (age, sex, ...) stay in the records, out of the batches
DATASET_KEYS = ("image", "label", "participant_id", "session_id")
PATH_KEY = "path"  # the scan's path, kept as a string once LoadImaged has replaced "image" by the volume


def prepare_records(
    source: str | Path,
    classes: Sequence[str],
    output_dir: str | Path,
    split_ratios: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    validate: bool = True,
    fold: int | None = None,
    num_folds: int = 5,
) -> list[dict[str, Any]]:
    """Load, validate and split a dataset: the one entry point of every bundle.

    Validation reads every scan before any training so that all data problems are reported at once;
    the split table written to ``output_dir`` is reused on resume and evaluation. With ``fold`` set, the
    train and val participants are regrouped into ``num_folds`` folds and fold ``fold`` validates; the
    test split is never touched.
    """
    records = load_records(source, classes=classes)
    # under multi-GPU training rank 0 validates and writes the split table; the other ranks then reuse it
    if is_main_process():
        if validate:
            ensure_valid(records, classes)
        records = resolve_splits(records, output_dir, ratios=split_ratios, seed=seed)
    barrier()
    if not is_main_process():
        records = resolve_splits(records, output_dir, ratios=split_ratios, seed=seed)
    if fold is not None:
        records = kfold_splits(records, num_folds=num_folds, fold=fold, seed=seed)
        logger.info("cross-validation fold %d of %d", fold, num_folds)
    logger.info("dataset %s\n%s", source, summarize_records(records, classes))
    return records


def split_records(records: Sequence[dict[str, Any]], split: str) -> list[dict[str, Any]]:
    """The records of one split; an empty split is an error (nothing to train or evaluate on)."""
    selected = records_for_split(records, split)
    if not selected:
        raise DataError([f"the {split!r} split is empty"], source="the split assignment",
                        hint="Check the dataset's split column or the split ratios, then run again.")
    return selected


def build_dataset(
    records: Sequence[dict[str, Any]],
    transform: Callable,
    cache: str = "memory",
    cache_rate: float = 1.0,
    cache_dir: str | Path | None = None,
    num_workers: int | None = None,
    progress: bool = True,
) -> Dataset:
    """``memory``: CacheDataset (deterministic transforms run once); ``disk``: PersistentDataset under
    ``cache_dir`` (survives restarts); ``none``: every transform on every access."""
    if cache not in CACHE_MODES:
        raise ValueError(f"unknown cache mode {cache!r}; valid modes: {', '.join(CACHE_MODES)}")
    data = [{**{key: record[key] for key in DATASET_KEYS if key in record}, PATH_KEY: record["image"]}
            for record in records]
    if cache == "memory":
        return CacheDataset(data, transform=transform, cache_rate=cache_rate, num_workers=num_workers,
                            progress=progress, copy_cache=False)
    if cache == "disk":
        if cache_dir is None:
            raise ValueError("cache 'disk' needs cache_dir (a folder for the persistent cache)")
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        # the transforms' parameters are part of the key: changing e.g. spatial_size never reuses a stale cache
        return PersistentDataset(data, transform=transform, cache_dir=cache_dir, hash_transform=json_hashing)
    return Dataset(data, transform=transform)


def class_weights(records: Sequence[dict[str, Any]], num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights normalised to mean 1; a class without samples is an error."""
    counts = np.bincount([int(r["label"]) for r in records], minlength=num_classes).astype(np.float64)
    if (counts == 0).any():
        missing = [i for i in range(num_classes) if counts[i] == 0]
        raise ValueError(f"class indices {missing} have no training samples; class weights are undefined")
    weights = counts.sum() / (num_classes * counts)
    return torch.as_tensor(weights, dtype=torch.float32)


def class_balanced_sampler(records: Sequence[dict[str, Any]], num_classes: int, seed: int = 0,
                           num_samples: int | None = None) -> WeightedRandomSampler:
    """Draws every class equally often in expectation (the original tool's WeightedRandomSampler)."""
    per_class = class_weights(records, num_classes)
    weights = per_class[[int(r["label"]) for r in records]].double()
    generator = torch.Generator().manual_seed(seed)
    return WeightedRandomSampler(weights, num_samples=num_samples or len(records), replacement=True,
                                 generator=generator)


def scan_records(source: str | Path | Sequence[str | Path]) -> list[dict[str, Any]]:
    """Unlabelled records for inference: a NIfTI file, a folder searched recursively, a text file with one
    path per line, or a list of paths. Every scan is checked (readable, 3D, finite, not constant) first."""
    paths: list[Path] = []
    sources = [source] if isinstance(source, (str, Path)) else list(source)
    for item in sources:
        item = Path(item).expanduser()
        if item.is_dir():
            paths.extend(sorted(p for p in item.rglob("*") if is_nifti(p) and p.is_file()))
        elif is_nifti(item):
            paths.append(item)
        elif item.is_file():
            lines = [line.strip() for line in item.read_text(encoding="utf-8").splitlines()]
            paths.extend((item.parent / line) for line in lines if line and not line.startswith("#"))
        else:
            raise DataError([f"{item} does not exist"], source=str(item),
                            hint="Give a NIfTI file, a folder of NIfTI files or a text file listing them.")
    if not paths:
        raise DataError([f"no .nii or .nii.gz files found in {source}"], source=str(source),
                        hint="Give a NIfTI file, a folder of NIfTI files or a text file listing them.")
    records = [{"image": str(p.absolute()), "participant_id": bids_entity(p, "sub"),
                "session_id": bids_entity(p, "ses")} for p in paths]
    problems = validate_records(records, labelled=False, progress=len(records) > 10)
    if problems:
        raise DataError(problems, source=str(source), hint="Fix or remove the listed scans, then run again.")
    return records
