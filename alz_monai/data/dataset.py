"""From records to cached MONAI datasets, samplers and class weights.

The persistent cache (``cache: disk``) keys each preprocessed volume by a SHA-256 of the scan file's bytes and by
the parameters of the deterministic transforms, nothing else: a scan re-exported at the same path is recomputed,
and runs or bundles with the same preprocessing share entries whatever the scan's path, label or participant. The
hash comes from validation, which reads the file anyway (:class:`~alz_monai.data.validate.ScanContent`), as long
as the file's size and mtime_ns are still those validation saw; otherwise the file is hashed here.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import monai
import numpy as np
import torch
from monai.data import CacheDataset, Dataset, PersistentDataset
from torch.utils.data import WeightedRandomSampler

from alz_monai.data.records import CONTENT_KEY, bids_entity, is_nifti, load_records, summarize_records
from alz_monai.data.splits import (
    SPLIT_TABLE_NAME,
    as_external,
    kfold_splits,
    read_split_table,
    records_for_split,
    resolve_splits,
)
from alz_monai.data.validate import DEFAULT_FOREGROUND_FRACTION, check_records, ensure_valid, log_warnings
from alz_monai.distributed import is_main_process
from alz_monai.errors import DataError, LeakageError
from alz_monai.fileio import atomic_write_text

__all__ = ["CACHE_MODES", "DATASET_KEYS", "PATH_KEY", "prepare_records", "split_records", "scan_records",
           "build_dataset", "transform_fingerprint", "class_balanced_sampler", "class_weights"]

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
    foreground_fraction: float = DEFAULT_FOREGROUND_FRACTION,
    validation_workers: int = 2,
    validation_store: str | Path | None = None,
    external: bool = False,
) -> list[dict[str, Any]]:
    """Load, validate and split a dataset: the one entry point of every bundle.

    Validation reads every scan before any training so that all data problems are reported at once (with the
    bundle's ``foreground_fraction``, as its preprocessing crops); its hashes let the leakage guard find copies of
    a scan under other participants and key the persistent cache. The split table written to ``output_dir`` is
    reused on resume and evaluation. With ``fold`` set, the train and val participants are regrouped into
    ``num_folds`` folds and fold ``fold`` validates; the test split is never touched. ``validation_store``: a
    folder keeping the results of scans that passed, so that later runs over the same files (the other bundle,
    evaluation) do not decode them again (see :class:`~alz_monai.data.validate.ValidationStore`).

    ``external``: ``source`` is another site's or cohort's data for the run in ``output_dir``: every scan is in
    the external split and the run's split table is not applied, but a scan whose file is one of the run's train
    or val scans is refused (the model was fitted or selected on it).
    """
    records = load_records(source, classes=classes)
    # under multi-GPU training rank 0 validates and writes the split table; the other ranks then reuse it
    if is_main_process():
        if validate:
            records = ensure_valid(records, classes, foreground_fraction=foreground_fraction,
                                   workers=validation_workers, store_dir=validation_store)
        if external:
            _refuse_training_scans(records, output_dir, source, workers=validation_workers)
        else:
            records = resolve_splits(records, output_dir, ratios=split_ratios, seed=seed)
    idist.barrier()
    if external:
        records = as_external(records)
        logger.info("external dataset: every scan evaluated, the split table of %s not applied", output_dir)
    else:
        if not is_main_process():
            records = resolve_splits(records, output_dir, ratios=split_ratios, seed=seed)
        if fold is not None:
            records = kfold_splits(records, num_folds=num_folds, fold=fold, seed=seed)
            logger.info("cross-validation fold %d of %d", fold, num_folds)
    logger.info("dataset %s\n%s", source, summarize_records(records, classes))
    return records


def _refuse_training_scans(records: Sequence[dict[str, Any]], output_dir: str | Path, source: str | Path,
                           workers: int) -> None:
    """Refuse external scans that are byte-identical to a train or val scan of the run's split table; warn about
    participant ids the two share (cohorts often number participants alike, so that alone proves nothing).

    Only files of equal size can be equal, so only those are hashed: the guard costs little however large the
    training set.
    """
    table_path = Path(output_dir) / SPLIT_TABLE_NAME
    if not table_path.is_file():
        logger.warning("%s does not exist, so the external scans cannot be compared with the run's training scans",
                       table_path)
        return
    trained = [row for row in read_split_table(table_path) if row["split"] in ("train", "val")]
    trained_sizes = {row["image"]: _file_size(row["image"]) for row in trained}
    unreadable = sum(1 for size in trained_sizes.values() if size is None)
    if unreadable:
        logger.warning("%d of %d train/val scans of %s cannot be read, so external copies of them cannot be found",
                       unreadable, len(trained), table_path)
    external_sizes = [_file_size(record["image"]) for record in records]
    common = {size for size in trained_sizes.values() if size is not None} & set(external_sizes)
    candidates = [{"image": image} for image, size in trained_sizes.items() if size in common]
    suspects = [record for record, size in zip(records, external_sizes) if size in common]
    trained_by_hash = dict(zip(_content_keys(candidates, workers, source=f"the train/val scans of {table_path}"),
                               (row["image"] for row in candidates)))
    split_of = {row["image"]: (row["split"], row["participant_id"]) for row in trained}
    problems = []
    for record, key in zip(suspects, _content_keys(suspects, workers, source=f"the external data {source}")):
        if key in trained_by_hash:
            image = trained_by_hash[key]
            split, participant = split_of[image]
            problems.append(f"{record['image']}: the same file as {image} ({split} scan of participant {participant})")
    if problems:
        raise LeakageError(problems, source=f"the external data {source} (against {table_path})",
                           hint="Remove the run's own train/val scans from the external data: a model scored on "
                           "scans it was fitted or selected on says nothing about another site; then run again.")
    shared = sorted({record["participant_id"] for record in records} & {row["participant_id"] for row in trained})
    if shared:
        logger.warning("%d participant id(s) of the external data are also train/val participants of %s (%s%s): "
                       "if they are the same people, this evaluation is not cross-site", len(shared), table_path,
                       ", ".join(shared[:5]), ", ..." if len(shared) > 5 else "")
    logger.info("none of the %d external scans is a train/val scan of %s", len(records), table_path)


def split_records(records: Sequence[dict[str, Any]], split: str) -> list[dict[str, Any]]:
    """The records of one split; an empty split is an error (nothing to train or evaluate on)."""
    selected = records_for_split(records, split)
    if not selected:
        raise DataError([f"the {split!r} split is empty"], source="the split assignment",
                        hint="Check the dataset's split column or the split ratios, then run again.")
    return selected


def _describe(value: Any) -> Any:
    """JSON-able description of a transform's parameters, recursively (for :func:`transform_fingerprint`)."""
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (set, frozenset)):
        return sorted(repr(item) for item in value)
    if isinstance(value, type) or inspect.isroutine(value):
        return f"{value.__module__}.{value.__qualname__}"
    if isinstance(value, functools.partial):
        return {"__type__": "functools.partial", "func": value.func, "args": value.args, "keywords": value.keywords}
    kind = f"{type(value).__module__}.{type(value).__qualname__}"
    return {"__type__": kind, **vars(value)} if hasattr(value, "__dict__") else f"{kind}:{value}"


def transform_fingerprint(transforms: Sequence[Callable]) -> bytes:
    """Hash of the transforms' classes and parameters, and of MONAI's version.

    MONAI's ``json_hashing`` cannot serialise transforms and falls back to their class names alone, so a changed
    ``spatial_size`` or ``pixdim`` would reuse stale volumes.
    """
    description = json.dumps({"monai": monai.__version__, "transforms": list(transforms)}, default=_describe,
                             sort_keys=True)
    return hashlib.sha256(description.encode()).hexdigest().encode()


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, as validation computes it (ScanContent.file_sha256)."""
    with open(path, "rb") as handle:
        digest = hashlib.sha256()  # hashlib.file_digest needs Python 3.11
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _content_key(record: dict[str, Any]) -> str:
    """The hash validation saved when it still describes the file (same size and mtime_ns), else a fresh one."""
    content = record.get(CONTENT_KEY)
    status = os.stat(record["image"])
    if content is not None and (content.size, content.mtime_ns) == (status.st_size, status.st_mtime_ns):
        return content.file_sha256
    return file_sha256(record["image"])


def _file_size(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def _content_keys(records: Sequence[dict[str, Any]], workers: int, source: str = "the scans to cache") -> list[str]:
    fresh = sum(1 for record in records if record.get(CONTENT_KEY) is None)
    if fresh:
        logger.info("hashing %d of %s, not hashed by validation", fresh, source)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(_content_key, record) for record in records]
    problems, keys = [], []
    for record, future in zip(records, futures):
        error = future.exception()
        if error is None:
            keys.append(future.result())
        elif isinstance(error, OSError):
            problems.append(f"{record['image']}: cannot be read ({error.strerror or error})")
        else:
            raise error
    if problems:
        raise DataError(problems, source=source,
                        hint="Restore the listed scans or turn validate_data on to find every problem, then run again.")
    return keys


_CACHE_KEY = "content_sha256"


def _cache_key(item: dict[str, Any]) -> bytes:
    return item[_CACHE_KEY].encode()


class _ContentCachedDataset(Dataset):
    """The records' fields around volumes from a PersistentDataset keyed by content alone, so one cache entry
    serves every record (any label, path or participant) of the same scan and preprocessing."""

    def __init__(self, data: Sequence[dict[str, Any]], volumes: PersistentDataset) -> None:
        super().__init__(data)
        self.volumes = volumes

    def _transform(self, index: int) -> dict[str, Any]:
        volume = dict(self.volumes[index])
        volume.pop(_CACHE_KEY)
        return {**volume, **self.data[index]}


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
    ``cache_dir``, keyed by scan content and preprocessing (survives restarts, shared by runs with the same
    preprocessing: see the module docstring); ``none``: every transform on every access."""
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
        keys = _content_keys(records, num_workers or 1)
        volumes = PersistentDataset([{"image": record["image"], _CACHE_KEY: key} for record, key in zip(records, keys)],
                                    transform=transform, cache_dir=cache_dir, hash_func=_cache_key,
                                    hash_transform=transform_fingerprint)
        return _ContentCachedDataset([{key: value for key, value in item.items() if key != "image"} for item in data],
                                     volumes)
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
    return WeightedRandomSampler(weights.tolist(), num_samples=num_samples or len(records), replacement=True,
                                 generator=generator)


def _write_problems(path: str | Path, report_records: Sequence[dict[str, Any]], errors: Sequence[list[str]]) -> None:
    rows = [f"{record['image']}\t{problem}" for record, problems in zip(report_records, errors) for problem in problems]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n".join(["image\tproblem", *rows]) + "\n")


def scan_records(source: str | Path | Sequence[str | Path], *,
                 foreground_fraction: float = DEFAULT_FOREGROUND_FRACTION,
                 problems_path: str | Path | None = None) -> list[dict[str, Any]]:
    """Unlabelled records for inference: a NIfTI file, a folder searched recursively, a text file with one
    path per line, or a list of paths. Every scan is validated first (see :mod:`alz_monai.data.validate`).

    Without ``problems_path`` any bad scan stops the run (one error listing them all). With it, bad scans are
    skipped: a TSV (columns image, problem) listing them is written there (header only when none failed), and
    the run proceeds with the others; only when no scan is left does it stop.
    """
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
    report = check_records(records, labelled=False, progress=len(records) > 10,
                           foreground_fraction=foreground_fraction)
    log_warnings(report)
    if problems_path is not None:
        _write_problems(problems_path, report.records, report.record_errors)
    usable = [record for record, errors in zip(report.records, report.record_errors) if not errors]
    if report.errors and (problems_path is None or not usable):
        raise DataError(report.errors, source=str(source), hint="Fix or remove the listed scans, then run again.")
    if report.errors:
        logger.warning("skipping %d of %d scans that cannot be preprocessed (listed in %s):\n%s",
                       len(records) - len(usable), len(records), problems_path,
                       "\n".join(f"  - {problem}" for problem in report.errors))
    return usable
