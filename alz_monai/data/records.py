"""Discover scans and their labels from a folder layout, a CSV/TSV table, a MONAI datalist JSON or a BIDS root.

Every source becomes the same list of records (plain dicts, MONAI datalist style) so the rest of the toolkit
never needs to know where the data came from. Each record holds ``image`` (absolute path), ``label`` (index into
the configured classes), ``label_name``, ``participant_id``, ``session_id`` ("" when unknown), ``split``
("train", "val", "test" or "" when the source gives none) and any extra columns as given, except that
columns named ``*_map`` or ``*_path`` hold paths and are made absolute like ``image``; no other value is
taken as a path, whatever files sit beside the source. Validation adds ``content``
(:class:`alz_monai.data.validate.ScanContent`: the hashes the persistent cache and the leakage guard reuse).

All problems of a source are collected and raised together as one :class:`~alz_monai.errors.DataError`.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from alz_monai.data import bids
from alz_monai.errors import DataError

logger = logging.getLogger(__name__)

DEFAULT_CLASSES: tuple[str, ...] = ("CN", "AD")
"""Class names; a record's label is the position of its class in this tuple."""

SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
RECORD_KEYS: tuple[str, ...] = ("image", "label", "label_name", "participant_id", "session_id", "split")
CONTENT_KEY = "content"
NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")
TABLE_DELIMITERS = {".csv": ",", ".tsv": "\t"}
SCANS_TABLE_NAME = "scans.tsv"
DATALIST_SPLITS = {"training": "train", "validation": "val", "testing": "test"}
_PATH_COLUMN_SUFFIXES = ("_map", "_path")
_LABEL_COLUMNS = ("label", "diagnosis", "label_name")  # label_name: the split tables alz-monai writes

ACCEPTED_LAYOUTS = (
    "Accepted dataset sources:\n"
    "  1. a folder <root>/{train,val,test}/{<class>}/*.nii[.gz] (val may also be named validation or valid);\n"
    "  2. a .csv or .tsv table with columns image and label (or diagnosis), optional participant_id, session_id, "
    "split; or a folder holding such a table named scans.tsv;\n"
    "  3. a MONAI datalist .json with training/validation/testing lists of {\"image\": ..., \"label\": ...};\n"
    "  4. a BIDS root: participants.tsv with participant_id and diagnosis, sub-*/[ses-*/]anat/*_T1w.nii[.gz], "
    "optional sub-*/sub-*_sessions.tsv with a diagnosis per session."
)


def canonical_split(name: str) -> str | None:
    """Canonical split name ("train", "val", "test"), "" for an empty value, None for an unknown name."""
    cleaned = name.strip().lower()
    return "" if not cleaned else _SPLIT_ALIASES.get(cleaned)


def check_classes(classes: Sequence[str]) -> tuple[str, ...]:
    """Validate the configured class names: at least two, unique regardless of case."""
    names = tuple(classes)
    if len(names) < 2:
        raise ValueError(f"classes must name at least two classes, got {names!r}; e.g. ('CN', 'AD')")
    lowered = [name.lower() for name in names]
    if len(set(lowered)) != len(lowered):
        raise ValueError(f"classes must be unique (case-insensitive), got {names!r}")
    return names


def parse_label(value: object, classes: Sequence[str]) -> int:
    """Label index of a class name (case-insensitive) or an integer index; ValueError naming the valid classes."""
    valid = f"one of the classes {', '.join(classes)} (or an index 0..{len(classes) - 1})"
    if isinstance(value, str):
        text = value.strip()
        for index, name in enumerate(classes):
            if text.lower() == name.lower():
                return index
        if re.fullmatch(r"[+-]?\d+", text):
            value = int(text)
        elif not text:
            raise ValueError(f"label is empty; expected {valid}")
        else:
            raise ValueError(f"label {text!r} is not {valid}")
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value < len(classes):
            return value
        raise ValueError(f"label index {value} is out of range; expected {valid}")
    raise ValueError(f"label {value!r} is not {valid}")


def is_nifti(path: str | Path) -> bool:
    """True for file names ending in .nii or .nii.gz (case-insensitive)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def nifti_stem(path: str | os.PathLike[str]) -> str:
    """File name without its .nii/.nii.gz suffix."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def bids_entity(path: str | Path, entity: str) -> str:
    """The ``<entity>-<label>`` part (e.g. "sub-01") of a BIDS path: from the file name first, then its folders."""
    pattern = re.compile(rf"(?:^|_)({entity}-[A-Za-z0-9]+)(?=_|\.|$)")
    parts = Path(path).parts
    for part in reversed(parts):
        match = pattern.search(part)
        if match:
            return match.group(1)
    return ""


@dataclass
class _Entry:
    """One scan as a source describes it, before labels and identifiers are checked."""

    location: str
    image: object
    base_dir: Path
    label: Any
    split: str = ""
    participant_id: str = ""
    session_id: str = ""
    extras: dict[str, Any] = field(default_factory=dict)
    defects: list[str] = field(default_factory=list)


def _resolve_path(base_dir: Path, value: str) -> str:
    """Absolute, normalised path of ``value`` taken relative to ``base_dir`` (symlinks are kept, not followed)."""
    return os.path.normpath(os.path.join(os.path.abspath(base_dir), os.path.expanduser(value)))


def _resolve_path_columns(base_dir: Path, columns: dict[str, Any]) -> dict[str, Any]:
    """Resolve values of columns named ``*_map`` / ``*_path`` relative to the source's folder."""
    return {
        name: _resolve_path(base_dir, value)
        if name.endswith(_PATH_COLUMN_SUFFIXES) and isinstance(value, str) and value
        else value
        for name, value in columns.items()
    }


def _entries_from_table(table_path: Path, problems: list[str]) -> list[_Entry]:
    delimiter = TABLE_DELIMITERS[table_path.suffix.lower()]
    base_dir = table_path.parent
    entries: list[_Entry] = []
    with open(table_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        if not reader.fieldnames:
            problems.append("the table is empty; expected a header row with columns image and label")
            return []
        columns = [name.strip() for name in reader.fieldnames]
        reader.fieldnames = columns
        repeated = sorted({name for name in columns if columns.count(name) > 1})
        if repeated:
            problems.append(f"columns {', '.join(repeated)} appear more than once in the header; keep one of each")
        if "image" not in columns:
            problems.append(f"no 'image' column (found: {', '.join(columns)}); add one with the scan paths")
        label_column = next((name for name in _LABEL_COLUMNS if name in columns), None)
        if label_column is None:
            problems.append(f"no 'label' or 'diagnosis' column (found: {', '.join(columns)}); add one")
        if problems:
            return []
        reserved = {*RECORD_KEYS, label_column}
        for row_number, row in enumerate(reader, start=1):
            location = f"row {row_number} (line {reader.line_num})"
            surplus = row.pop(None, [])
            values = {name: (value or "").strip() for name, value in row.items()}
            extras = {name: value for name, value in values.items() if name not in reserved}
            entries.append(
                _Entry(
                    location=location,
                    image=values["image"],
                    base_dir=base_dir,
                    label=values[label_column],
                    split=values.get("split", ""),
                    participant_id=values.get("participant_id", ""),
                    session_id=values.get("session_id", ""),
                    extras=_resolve_path_columns(base_dir, extras),
                    defects=[f"{len(surplus)} more values than header columns; check the delimiter"] if surplus else [],
                )
            )
    return entries


def _entries_from_datalist(datalist_path: Path, problems: list[str]) -> list[_Entry]:
    try:
        content = json.loads(datalist_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        problems.append(f"not valid JSON ({error}); fix the syntax")
        return []
    present = [key for key in DATALIST_SPLITS if isinstance(content, dict) and key in content]
    if not present:
        problems.append(f"no {', '.join(DATALIST_SPLITS)} list at the top level of the JSON object")
        return []
    base_dir = datalist_path.parent
    entries: list[_Entry] = []
    entry_form = 'each entry must be an object like {"image": ..., "label": ...}'
    for key in present:
        # read as written: MONAI's load_decathlon_datalist would turn every value naming an existing path (a label
        # "AD" beside an AD/ folder, a participant_id beside its BIDS folder) into that path
        items = content[key]
        if not isinstance(items, list):
            problems.append(f"'{key}' is a {type(items).__name__}, not a list; {entry_form}")
            continue
        for index, item in enumerate(items, start=1):
            if not isinstance(item, dict):
                problems.append(f"'{key}' entry {index} is a {type(item).__name__}, not an object; {entry_form}")
                continue
            extras = {name: value for name, value in item.items() if name not in RECORD_KEYS}
            entries.append(
                _Entry(
                    location=f"'{key}' entry {index}",
                    image=item.get("image"),
                    base_dir=base_dir,
                    label=item.get("label"),
                    split=DATALIST_SPLITS[key],
                    participant_id=str(item.get("participant_id", "")),
                    session_id=str(item.get("session_id", "")),
                    extras=_resolve_path_columns(base_dir, extras),
                    defects=[] if "label" in item else ["no 'label'; evaluation needs one, add the class name"],
                )
            )
    return entries


def _visible_children(folder: Path) -> list[Path]:
    return sorted(child for child in folder.iterdir() if not child.name.startswith("."))


def _has_split_folders(folder: Path) -> bool:
    return any(child.is_dir() and canonical_split(child.name) for child in _visible_children(folder))


def _entries_from_folders(root: Path, classes: Sequence[str], problems: list[str]) -> list[_Entry]:
    class_names = {name.lower() for name in classes}
    entries: list[_Entry] = []
    ignored = []
    for split_dir in _visible_children(root):
        split = canonical_split(split_dir.name) if split_dir.is_dir() else None
        if not split:
            if split_dir.is_dir():
                ignored.append(split_dir.name)
            continue
        class_dirs = []
        for child in _visible_children(split_dir):
            if child.is_dir():
                class_dirs.append(child)
            elif is_nifti(child):
                problems.append(f"{child}: scan outside a class folder; move it into {split_dir}/<class>/")
        if not class_dirs:
            problems.append(f"{split_dir}: split folder has no class folders; add {split_dir}/<class>/ or remove it")
        for class_dir in class_dirs:
            if class_dir.name.lower() not in class_names:
                problems.append(
                    f"{class_dir}: folder name '{class_dir.name}' is not one of the classes {', '.join(classes)}; "
                    "rename the folder or configure the classes"
                )
                continue
            scans = sorted(path for path in class_dir.rglob("*") if path.is_file() and is_nifti(path))
            if not scans:
                problems.append(f"{class_dir}: class folder holds no .nii or .nii.gz scans; add scans or remove it")
            entries.extend(
                _Entry(location=str(scan), image=str(scan), base_dir=root, label=class_dir.name, split=split)
                for scan in scans
            )
    if ignored:
        logger.warning("Ignoring folders of %s that are not split folders: %s", root, ", ".join(ignored))
    return entries


def _build_records(entries: Iterable[_Entry], classes: Sequence[str], problems: list[str]) -> list[dict[str, Any]]:
    """Check labels, splits and duplicates of every entry (adding to ``problems``) and turn entries into records."""
    records: list[dict[str, Any]] = []
    first_location: dict[str, str] = {}
    for entry in entries:
        entry_problems = [f"{entry.location}: {defect}" for defect in entry.defects]
        image_name = entry.image if isinstance(entry.image, str) else ""
        if not image_name:
            entry_problems.append(f"{entry.location}: no scan path in 'image' (got {entry.image!r})")
        if entry_problems:  # a malformed row: its other fields cannot be trusted
            problems.extend(entry_problems)
            continue
        image = _resolve_path(entry.base_dir, image_name)
        try:
            label = parse_label(entry.label, classes)
        except ValueError as error:
            entry_problems.append(f"{entry.location}: {error}")
        split = canonical_split(entry.split)
        if split is None:
            entry_problems.append(
                f"{entry.location}: split {entry.split!r} is not one of {', '.join(SPLIT_NAMES)} "
                "(validation/valid also mean val); fix it or leave every split empty to compute them"
            )
        real_path = os.path.realpath(image)
        if real_path in first_location:
            entry_problems.append(f"{entry.location} and {first_location[real_path]} both list {image}; remove one")
        else:
            first_location[real_path] = entry.location
        if entry_problems:
            problems.extend(entry_problems)
            continue
        record = {
            "image": image,
            "label": label,
            "label_name": classes[label],
            "participant_id": entry.participant_id or bids_entity(image, "sub"),
            "session_id": entry.session_id or bids_entity(image, "ses"),
            "split": split,
        }
        record.update(entry.extras)
        records.append(record)
    return records


def _fill_missing_participants(records: list[dict[str, Any]]) -> None:
    """Make each scan without a participant its own participant, and warn that leakage cannot be ruled out."""
    orphans = [record for record in records if not record["participant_id"]]
    if not orphans:
        return
    stems = [nifti_stem(record["image"]) for record in orphans]
    if len(set(stems)) < len(stems):  # same file name in several folders: the path relative to them is unique
        common = os.path.commonpath([record["image"] for record in orphans])
        stems = [os.path.relpath(record["image"], common) for record in orphans]
    for record, stem in zip(orphans, stems):
        record["participant_id"] = stem
    logger.warning(
        "%d scan(s) have no participant_id and no sub-<label> in their path (e.g. %s); each is treated as its own "
        "participant, so leakage across sessions of one subject cannot be prevented for them. Add a participant_id "
        "column or use BIDS file names.",
        len(orphans),
        orphans[0]["image"],
    )


def load_records(source: str | os.PathLike[str], classes: Sequence[str] = DEFAULT_CLASSES) -> list[dict[str, Any]]:
    """Load a dataset description as a record list, detecting its kind (see ``ACCEPTED_LAYOUTS``).

    A folder holding ``scans.tsv`` is read as that table, even if it also has split folders.
    """
    classes = check_classes(classes)
    path = Path(source).expanduser().absolute()
    suffix = path.suffix.lower()
    problems: list[str] = []
    if path.is_file() and suffix in TABLE_DELIMITERS:
        entries = _entries_from_table(path, problems)
    elif path.is_file() and suffix == ".json":
        entries = _entries_from_datalist(path, problems)
    elif path.is_dir() and (path / SCANS_TABLE_NAME).is_file():
        logger.info("Using %s from %s", SCANS_TABLE_NAME, path)
        path = path / SCANS_TABLE_NAME
        entries = _entries_from_table(path, problems)
    elif path.is_dir() and _has_split_folders(path):
        entries = _entries_from_folders(path, classes, problems)
    elif path.is_dir() and bids.is_bids_root(path):
        entries = bids.entries_from_bids(path, problems)
    else:
        reason = "does not exist" if not path.exists() else "is not a recognised dataset source"
        raise DataError([f"{path} {reason}"], source=str(path), hint=ACCEPTED_LAYOUTS)
    records = _build_records(entries, classes, problems)
    if not records and not problems:
        problems.append("no scans are listed; add at least one")
    if problems:
        raise DataError(
            problems,
            source=str(path),
            hint=f"Fix the listed entries (classes: {', '.join(classes)}; splits: {', '.join(SPLIT_NAMES)} or "
            "empty), then run again.",
        )
    _fill_missing_participants(records)
    logger.info(
        "Loaded %d scans of %d participants from %s",
        len(records),
        len({record["participant_id"] for record in records}),
        path,
    )
    return records


def summarize_records(records: Sequence[dict[str, Any]], classes: Sequence[str] = DEFAULT_CLASSES) -> str:
    """Scans per split and class, plus participants per split, as a printable table."""
    columns = ["split", "label_name", "participant_id"]
    frame = pd.DataFrame([{name: record[name] for name in columns} for record in records], columns=columns)
    frame["split"] = frame["split"].replace("", "(none)")
    present = set(frame["split"])
    order = [name for name in (*SPLIT_NAMES, "(none)") if name in present] + sorted(present - {*SPLIT_NAMES, "(none)"})
    counts = pd.crosstab(frame["split"], frame["label_name"]).reindex(index=order, columns=list(classes), fill_value=0)
    counts["scans"] = counts.sum(axis=1)
    counts["participants"] = frame.groupby("split")["participant_id"].nunique().reindex(order)
    counts.loc["all"] = [*counts.drop(columns="participants").sum(), frame["participant_id"].nunique()]
    counts.index.name = "split"
    return counts.reset_index().to_string(index=False)
