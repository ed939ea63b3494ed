"""Train/val/test splits that never put one participant in two splits.

Scans of the same person are strongly correlated; if sessions of one participant land in training and in test,
test scores measure recognition of that person rather than of the disease. Splits are therefore made over
participants, stratified by the label of each participant's first session (sessions in natural order, so
``ses-M06`` comes before ``ses-M12``), and saved to a table so that resumed runs and evaluation reuse them. The
leakage guard also compares scan content where validation hashed it: a copy of a scan filed under another
participant (byte-identical, or re-encoded with another header but the same voxels) is refused like a participant
in two splits.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedKFold

from alz_monai.data.records import CONTENT_KEY, SPLIT_NAMES, canonical_split
from alz_monai.errors import DataError, LeakageError
from alz_monai.fileio import atomic_open
from alz_monai.layout import EXTERNAL_SPLIT

logger = logging.getLogger(__name__)

DEFAULT_RATIOS: tuple[float, float, float] = (0.7, 0.15, 0.15)
SPLIT_TABLE_NAME = "splits.tsv"
SPLIT_TABLE_COLUMNS: tuple[str, ...] = ("participant_id", "session_id", "image", "label_name", "split")
# When a class has too few participants for every split, the scarce ones go to train first, then test, then val.
_COVERAGE_PRIORITY = (0, 2, 1)

Record = dict[str, Any]

# EXTERNAL_SPLIT: every scan of a dataset from another site or cohort, evaluated with a model trained elsewhere;
# never in a split table and never trained on, so never one of a dataset's own splits (SPLIT_NAMES) either.
EVALUATION_SPLITS: tuple[str, ...] = (*SPLIT_NAMES, EXTERNAL_SPLIT)


def _check_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(value) for value in ratios)
    if len(values) != 3 or any(not math.isfinite(value) or value < 0 for value in values):
        raise ValueError(f"split ratios must be three non-negative numbers (train, val, test), got {tuple(ratios)}")
    if not math.isclose(sum(values), 1.0, abs_tol=1e-6):
        raise ValueError(f"split ratios must sum to 1, got {tuple(ratios)} (sum {sum(values):g})")
    return values[0], values[1], values[2]


def _natural_key(text: str) -> list[Any]:
    """Sort key that orders embedded numbers by value ("ses-M6" before "ses-M12")."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def _group_labels(records: Sequence[Record], group_of: Callable[[Record], str]) -> dict[str, int]:
    """Stratification label per group: the label of its first session."""
    first: dict[str, Record] = {}
    for record in records:
        group = group_of(record)
        key = (_natural_key(record["session_id"]), record["image"])
        if group not in first or key < (_natural_key(first[group]["session_id"]), first[group]["image"]):
            first[group] = record
    return {group: record["label"] for group, record in first.items()}


def _split_sizes(count: int, ratios: tuple[float, float, float]) -> list[int]:
    """Split ``count`` items by ``ratios`` (largest remainder), giving every positive-ratio split one if possible."""
    exact = [count * ratio for ratio in ratios]
    sizes = [math.floor(value) for value in exact]
    by_remainder = sorted(range(3), key=lambda index: sizes[index] - exact[index])
    for index in by_remainder[: count - sum(sizes)]:
        sizes[index] += 1
    for index in _COVERAGE_PRIORITY:
        donor = max(range(3), key=lambda other: sizes[other])
        if ratios[index] > 0 and sizes[index] == 0 and sizes[donor] >= 2:
            sizes[donor] -= 1
            sizes[index] += 1
    return sizes


def assign_splits(
    records: Sequence[Record],
    ratios: Sequence[float] = DEFAULT_RATIOS,
    seed: int = 0,
    *,
    group_by_participant: bool = True,
) -> list[Record]:
    """Copies of ``records`` with a computed train/val/test split, stratified by label and seeded.

    Each class's participants are shuffled and cut by ``ratios``; this is done per class instead of with
    scikit-learn's splitters because those round over all classes at once and can leave a small class out of a
    small split. ``group_by_participant=False`` splits scans instead of participants, which leaks sessions of one
    person across splits on purpose (only for benchmarks demonstrating leakage). Existing splits are replaced.
    """
    split_ratios = _check_ratios(ratios)
    group_of: Callable[[Record], str] = (
        (lambda record: record["participant_id"]) if group_by_participant else (lambda record: record["image"])
    )
    labels = _group_labels(records, group_of)
    rng = np.random.default_rng(seed)
    split_of_group: dict[str, str] = {}
    for label in sorted(set(labels.values())):
        groups = sorted((group for group, group_label in labels.items() if group_label == label), key=_natural_key)
        shuffled = [groups[index] for index in rng.permutation(len(groups))]
        start = 0
        for split, size in zip(SPLIT_NAMES, _split_sizes(len(groups), split_ratios)):
            split_of_group.update((group, split) for group in shuffled[start : start + size])
            start += size
    if any(record["split"] for record in records):
        logger.warning("assign_splits replaces the splits the records already carry")
    assigned = [{**record, "split": split_of_group[group_of(record)]} for record in records]
    logger.info(
        "Assigned splits to %d %s (ratios %s, seed %d)",
        len(labels),
        "participants" if group_by_participant else "scans (NOT grouped by participant: leaky)",
        split_ratios,
        seed,
    )
    return assigned


def _participant_problems(records: Sequence[Record]) -> list[str]:
    images: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        if record["split"]:
            images[record["participant_id"]][record["split"]].append(record["image"])
    problems = []
    for participant in sorted(images, key=_natural_key):
        by_split = images[participant]
        if len(by_split) > 1:
            where = "; ".join(f"{split}: {', '.join(by_split[split])}" for split in SPLIT_NAMES if split in by_split)
            problems.append(f"participant {participant} is in {len(by_split)} splits ({where})")
    return problems


def _content_problems(records: Sequence[Record]) -> list[str]:
    """Scans with identical voxel data (hashed by validation) under different participants: a copy of one scan
    filed as another person, which leaks whenever the two land in different splits."""
    def where(record: Record) -> str:
        return f"{record['participant_id']} ({record['split'] or 'no split'}: {record['image']})"

    first_with: dict[str, Record] = {}
    problems = []
    for record in records:
        content = record.get(CONTENT_KEY)
        if content is None:
            continue
        first = first_with.setdefault(content.voxel_sha256, record)
        if first["participant_id"] != record["participant_id"]:
            problems.append(f"the same voxel data under participants {where(first)} and {where(record)}")
    unchecked = sum(1 for record in records if record.get(CONTENT_KEY) is None)
    if unchecked:
        logger.info("%d of %d scans were not validated, so copies of them under other participants are not "
                    "looked for", unchecked, len(records))
    return problems


def check_no_leakage(records: Sequence[Record], source: str = "the split assignment") -> None:
    """Raise :class:`LeakageError` naming every participant whose scans are in more than one split, and every
    pair of scans with identical voxel data under different participants (where validation hashed the voxels)."""
    participant_problems = _participant_problems(records)
    content_problems = _content_problems(records)
    hints = []
    if participant_problems:
        hints.append("Keep every scan of a participant in one split: fix the split column, split folders or datalist "
                     "lists (or delete the split table to recompute it)")
    if content_problems:
        hints.append("Remove each copied scan, or list it under the participant it belongs to")
    if hints:
        raise LeakageError(participant_problems + content_problems, source=source,
                           hint="; ".join(hints) + ", then run again.")


def write_split_table(records: Sequence[Record], path: str | os.PathLike[str]) -> None:
    """Write the split of every record as TSV, atomically so that an interrupted run never leaves half a table."""
    unsplit = [record["image"] for record in records if not record["split"]]
    if unsplit:
        raise ValueError(f"{len(unsplit)} record(s) have no split (e.g. {unsplit[0]}); assign splits first")
    with atomic_open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(SPLIT_TABLE_COLUMNS)
        writer.writerows([record[column] for column in SPLIT_TABLE_COLUMNS] for record in records)


def read_split_table(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """Rows of a split table written by :func:`write_split_table`, checked; relative images resolve to its folder."""
    table_path = Path(path)
    problems: list[str] = []
    rows: list[dict[str, str]] = []
    first_line: dict[str, int] = {}
    with open(table_path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        missing = [column for column in SPLIT_TABLE_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise DataError(
                [f"missing column(s) {', '.join(missing)}; expected {', '.join(SPLIT_TABLE_COLUMNS)}"],
                source=str(table_path),
                hint="Delete the split table to compute new splits, or restore its header.",
            )
        for row_number, row in enumerate(reader, start=1):
            location = f"row {row_number} (line {reader.line_num})"
            values = {column: (row[column] or "").strip() for column in SPLIT_TABLE_COLUMNS}
            split = canonical_split(values["split"])
            if not split:
                problems.append(f"{location}: split {values['split']!r} is not one of {', '.join(SPLIT_NAMES)}")
                continue
            if not values["image"]:
                problems.append(f"{location}: the image cell is empty")
                continue
            image = os.path.normpath(os.path.join(table_path.parent.absolute(), values["image"]))
            if image in first_line:
                problems.append(f"{location}: {image} is already listed on line {first_line[image]}")
                continue
            first_line[image] = reader.line_num
            rows.append({**values, "image": image, "split": split})
    if problems:
        raise DataError(problems, source=str(table_path), hint="Fix the listed rows or delete the split table.")
    return rows


def apply_split_table(
    records: Sequence[Record], table: Sequence[dict[str, str]], source: str = "the split table"
) -> list[Record]:
    """Copies of ``records`` with the splits of ``table``; every record and every table row must match up."""
    split_of_image = {row["image"]: row["split"] for row in table}
    dataset_images = {record["image"] for record in records}
    problems = [
        f"{record['image']}: not in the split table" for record in records if record["image"] not in split_of_image
    ]
    problems += [
        f"{row['image']} (participant {row['participant_id']}, {row['split']}): in the split table but no longer in "
        "the dataset"
        for row in table
        if row["image"] not in dataset_images
    ]
    if problems:
        raise DataError(
            problems,
            source=source,
            hint="The dataset changed since the split table was written: restore the dataset, or delete the table "
            "to compute new splits (scores are then not comparable with earlier runs).",
        )
    return [{**record, "split": split_of_image[record["image"]]} for record in records]


def resolve_splits(
    records: Sequence[Record],
    output_dir: str | os.PathLike[str],
    ratios: Sequence[float] = DEFAULT_RATIOS,
    seed: int = 0,
    split_file_name: str = SPLIT_TABLE_NAME,
) -> list[Record]:
    """The splits for a run: reuse ``output_dir/split_file_name``, else the dataset's own splits, else computed ones.

    New splits are checked for leakage before the table is written, so a leaky assignment is never saved.
    """
    table_path = Path(output_dir) / split_file_name
    if table_path.is_file():
        resolved = apply_split_table(records, read_split_table(table_path), source=str(table_path))
        overridden = sum(1 for old, new in zip(records, resolved) if old["split"] and old["split"] != new["split"])
        if overridden:
            logger.warning("%s overrides the split the dataset gives for %d scan(s)", table_path, overridden)
        check_no_leakage(resolved, source=str(table_path))
        logger.info("Reusing the splits of %s", table_path)
        return resolved
    given = [bool(record["split"]) for record in records]
    if records and all(given):
        resolved = [dict(record) for record in records]
        origin = "given by the dataset"
    elif not any(given):
        resolved = assign_splits(records, ratios, seed)
        origin = f"computed with ratios {tuple(ratios)} and seed {seed}"
    else:
        raise DataError(
            [f"{record['image']}: no split" for record, has_split in zip(records, given) if not has_split],
            source=f"the dataset's splits ({given.count(True)} of {len(records)} scans have one)",
            hint="Give every scan a split (train, val or test) or none (splits are then computed), then run again.",
        )
    check_no_leakage(resolved, source=f"the splits {origin}")
    write_split_table(resolved, table_path)
    logger.info("Using splits %s; saved to %s", origin, table_path)
    return resolved


def kfold_splits(records: Sequence[Record], num_folds: int, fold: int, seed: int = 0) -> list[Record]:
    """Copies of ``records`` where fold ``fold`` of the train+val participants is val and the rest train.

    Folds are over participants, stratified by first-session label; test records are left untouched.
    """
    if num_folds < 2 or not 0 <= fold < num_folds:
        raise ValueError(f"need num_folds >= 2 and 0 <= fold < num_folds, got num_folds={num_folds}, fold={fold}")
    unsplit = [record["image"] for record in records if not record["split"]]
    if unsplit:
        raise ValueError(f"{len(unsplit)} record(s) have no split (e.g. {unsplit[0]}); call resolve_splits first")
    check_no_leakage(records)
    pool = [record for record in records if record["split"] in ("train", "val")]
    labels = _group_labels(pool, lambda record: record["participant_id"])
    participants = sorted(labels, key=_natural_key)
    if len(participants) < num_folds:
        raise ValueError(f"{num_folds} folds need at least {num_folds} train+val participants, got {len(participants)}")
    folds = StratifiedKFold(n_splits=num_folds, shuffle=True, random_state=seed)
    _, val_indices = list(folds.split(np.zeros(len(participants)), [labels[p] for p in participants]))[fold]
    val_participants = {participants[index] for index in val_indices}
    return [
        {**record, "split": "val" if record["participant_id"] in val_participants else "train"}
        if record["split"] in ("train", "val")
        else dict(record)
        for record in records
    ]


def as_external(records: Sequence[Record]) -> list[Record]:
    """Copies of ``records`` all in the external split, whatever split their source gave them: every scan of an
    external dataset is evaluated, and none is trained on."""
    given = sum(1 for record in records if record["split"])
    if given:
        logger.info("the external data give a split for %d of %d scans: all are evaluated as %r", given,
                    len(records), EXTERNAL_SPLIT)
    return [{**record, "split": EXTERNAL_SPLIT} for record in records]


def records_for_split(records: Sequence[Record], split: str) -> list[Record]:
    """The records of one split ("train", "val", "test" or "external"; "validation"/"valid" also mean "val")."""
    name = EXTERNAL_SPLIT if split == EXTERNAL_SPLIT else canonical_split(split)
    if not name:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(EVALUATION_SPLITS)}")
    return [record for record in records if record["split"] == name]
