"""BIDS roots as a data source: ``participants.tsv`` with a diagnosis, ``sub-*/[ses-*/]anat/*_T1w.nii[.gz]``.

Longitudinal archives (ADNI, OASIS) change a participant's diagnosis over time, so a ``diagnosis`` (or
``label``) column in ``sub-*/sub-*_sessions.tsv`` takes precedence over the one in ``participants.tsv`` for the
sessions it lists. Other columns of both tables travel with each record (the session's value wins, e.g. ``age``).
Problems are collected, not raised, so that :func:`~alz_monai.data.records.load_records` reports them all at once.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from alz_monai.data import records  # records dispatches to this module: names are looked up at call time

__all__ = ["PARTICIPANTS_TABLE", "is_bids_root", "entries_from_bids"]

logger = logging.getLogger(__name__)

PARTICIPANTS_TABLE = "participants.tsv"
T1W_SUFFIX = "_T1w"


def is_bids_root(folder: Path) -> bool:
    """A folder with ``participants.tsv`` and at least one ``sub-*`` folder."""
    return (folder / PARTICIPANTS_TABLE).is_file() and any(
        child.is_dir() and child.name.startswith("sub-") for child in folder.iterdir())


def entries_from_bids(root: Path, problems: list[str]) -> list[records._Entry]:
    """One entry per T1w scan of every ``sub-*`` folder, labelled from the sessions or participants table."""
    participants = _read_table(root / PARTICIPANTS_TABLE, "participant_id", problems)
    if participants is None:
        return []
    participant_label = _label_column(participants, root / PARTICIPANTS_TABLE)
    entries: list[records._Entry] = []
    for subject_dir in sorted(path for path in root.glob("sub-*") if path.is_dir()):
        subject = subject_dir.name
        scans = _t1w_scans(subject_dir)
        if subject not in participants.index:
            if scans:
                problems.append(f"{subject_dir}: {subject} is not listed in {root / PARTICIPANTS_TABLE}; add a row "
                                f"with its diagnosis")
            continue
        if not scans:
            logger.warning("%s holds no *%s.nii[.gz] scan; %s is skipped", subject_dir, T1W_SUFFIX, subject)
            continue
        subject_values = participants.loc[subject].to_dict()
        sessions = _sessions(subject_dir, problems)
        for scan in scans:
            session = _session_of(scan, subject_dir)
            session_values = sessions.get(session, {}) if sessions is not None else {}
            if sessions is not None and session and session not in sessions:
                problems.append(f"{scan}: session {session} is not listed in "
                                f"{subject_dir / f'{subject}_sessions.tsv'}; add a row for it")
                continue
            values = {**subject_values, **{name: value for name, value in session_values.items() if value != ""}}
            label_column = _label_column_of(session_values) or participant_label
            if label_column is None:
                scan_id = " ".join(filter(None, (subject, session)))
                problems.append(f"{scan}: no diagnosis for {scan_id}; add a 'diagnosis' column to "
                                f"{root / PARTICIPANTS_TABLE} or to {subject}_sessions.tsv")
                continue
            reserved = {*records.RECORD_KEYS, *records._LABEL_COLUMNS}
            entries.append(records._Entry(
                location=str(scan), image=str(scan), base_dir=root, label=values[label_column],
                participant_id=subject, session_id=session,
                extras={name: value for name, value in values.items() if name not in reserved},
            ))
    return entries


def _read_table(path: Path, index: str, problems: list[str]) -> pd.DataFrame | None:
    """A BIDS TSV (all values as text, "n/a" as empty) indexed by ``index``; None with a problem if unusable."""
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        problems.append(f"{path}: not a readable tab-separated table ({error}); fix it")
        return None
    table.columns = [name.strip() for name in table.columns]
    if index not in table.columns:
        problems.append(f"{path}: no '{index}' column (found: {', '.join(table.columns)}); add one")
        return None
    table = table.apply(lambda column: column.str.strip()).replace("n/a", "")
    repeated = sorted(set(table[index][table[index].duplicated()]))
    if repeated:
        problems.append(f"{path}: {', '.join(repeated)} listed more than once in '{index}'; keep one row each")
        return None
    return table.set_index(index, drop=False)


def _label_column(table: pd.DataFrame, path: Path) -> str | None:
    column = next((name for name in records._LABEL_COLUMNS if name in table.columns), None)
    if column is None:
        logger.info("%s has no diagnosis column; every session table must give one", path)
    return column


def _label_column_of(values: dict[str, Any]) -> str | None:
    """The session's diagnosis column when it gives a value; the participant's diagnosis applies otherwise."""
    return next((name for name in records._LABEL_COLUMNS if values.get(name, "") != ""), None)


def _sessions(subject_dir: Path, problems: list[str]) -> dict[str, dict[str, Any]] | None:
    """Rows of ``sub-*_sessions.tsv`` by session_id, or None when the participant has no sessions table."""
    path = subject_dir / f"{subject_dir.name}_sessions.tsv"
    if not path.is_file():
        return None
    table = _read_table(path, "session_id", problems)
    if table is None:
        return {}
    return {session: row.to_dict() for session, row in table.iterrows()}


def _t1w_scans(subject_dir: Path) -> list[Path]:
    """T1w images in ``anat`` folders, with or without a session level."""
    candidates = [*subject_dir.glob("anat/*"), *subject_dir.glob("ses-*/anat/*")]
    names = tuple(f"{T1W_SUFFIX}{suffix}" for suffix in records.NIFTI_SUFFIXES)
    return sorted(path for path in candidates if path.is_file() and path.name.endswith(names))


def _session_of(scan: Path, subject_dir: Path) -> str:
    relative = scan.relative_to(subject_dir).parts
    return relative[0] if relative[0].startswith("ses-") else ""
