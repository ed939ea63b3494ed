"""``alz-monai preprocess``: every scan of a dataset through the pipeline, in parallel, resumable, into a
CAPS-like tree with a ``scans.tsv`` the bundles read (``--dataset_dir OUT``) and a QC table and overview.

Layout of ``OUT``::

    preprocess_parameters.json        settings; a folder holds one setting only
    scans.tsv                         what the bundles read: image, label, participant_id, session_id, qc_*
    qc.tsv, qc_overview.html/.png     every scan: status, registration score, pass/flag, error
    subjects/<sub>/<ses>/t1_linear/<stem>_space-MNI152NLin2009aSym_desc-CropBrain_res-1x1x1_T1w.nii.gz
                                   .../<stem>_space-MNI152NLin2009aSym_res-1x1x1_affine.tfm, <stem>_qc.png,
                                   .../<stem>_qc.json (written last: the scan is finished)

A rerun skips finished scans and retries failed ones; nothing a previous run wrote is replaced, except the
tables, which are rebuilt from the per-scan records.
"""

from __future__ import annotations

import concurrent.futures
import gzip
import json
import logging
import multiprocessing
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from alz_monai.data.records import DEFAULT_CLASSES, load_records, nifti_stem
from alz_monai.errors import ConfigError, DataError
from alz_monai.fileio import atomic_open, atomic_write_json, atomic_write_text
from alz_monai.preprocess.images import load_scan, sitk, to_nifti
from alz_monai.preprocess.pipeline import PreprocessSettings, preprocess_volume
from alz_monai.preprocess.qc import QC_THRESHOLD, passes, save_mosaic, write_overview
from alz_monai.preprocess.template import TEMPLATE_SPACE

__all__ = ["PARAMETERS_FILE", "PreprocessSummary", "preprocess_dataset"]

logger = logging.getLogger(__name__)

PARAMETERS_FILE = "preprocess_parameters.json"
QC_TABLE = "qc.tsv"
SCANS_TABLE = "scans.tsv"
GZIP_LEVEL = 1
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MOVED_COLUMN_SUFFIXES = ("_map", "_path")
"""Columns with images on the raw scan's grid; they do not describe the preprocessed scan."""


@dataclass
class PreprocessSummary:
    """What a run did: counts, the scans that failed and why, and where the tables are."""

    processed: int = 0
    resumed: int = 0
    flagged: int = 0
    excluded: int = 0
    failures: list[str] = field(default_factory=list)
    scans_table: Path | None = None
    qc_table: Path | None = None
    overview: Path | None = None


@dataclass(frozen=True)
class _Job:
    record: dict[str, Any]
    out: Path
    folder: Path
    stem: str
    settings: PreprocessSettings
    threads: int


def preprocess_dataset(source: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
                       settings: PreprocessSettings | None = None,
                       classes: Sequence[str] = DEFAULT_CLASSES, workers: int = 1,
                       qc_threshold: float = QC_THRESHOLD, exclude_flagged: bool = False,
                       progress: bool = True) -> PreprocessSummary:
    """Preprocess every scan of ``source`` (any data source of :func:`load_records`) into ``out_dir``."""
    settings = settings or PreprocessSettings()
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    records = load_records(source, classes=classes)
    out = Path(out_dir).absolute()
    _claim_output(out, settings, source)
    jobs = _jobs(records, out, settings, workers)
    summary = PreprocessSummary()
    rows: list[dict[str, Any]] = []
    pending = []
    for job in jobs:
        finished = _finished(job)
        if finished is None:
            pending.append(job)
        else:
            rows.append(finished)
            summary.resumed += finished["status"] == "done"
    if summary.resumed:
        logger.info("%d of %d scans already preprocessed in %s; doing the other %d", summary.resumed, len(jobs), out,
                    len(pending))
    with tqdm(total=len(pending), disable=not progress, desc="preprocess", unit="scan") as bar:
        if workers == 1:
            for row in map(_run_job, pending):
                rows.append(row)
                bar.update()
        else:
            # Spawned, not forked: a fork of a process whose ITK or torch threads hold a lock can hang forever.
            spawn = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=spawn) as pool:
                for row in pool.map(_run_job, pending):
                    rows.append(row)
                    bar.update()
    summary.processed = sum(row["status"] == "done" for row in rows) - summary.resumed
    summary.failures = [f"{row['source']}: {row['error']}" for row in rows if row["status"] != "done"]
    _write_tables(out, rows, qc_threshold, exclude_flagged, summary)
    return summary


def _claim_output(out: Path, settings: PreprocessSettings, source: str | os.PathLike[str]) -> None:
    """Make ``out`` ours for these settings, or refuse a folder that holds anything else."""
    parameters = out / PARAMETERS_FILE
    described = settings.describe()
    if parameters.is_file():
        previous = json.loads(parameters.read_text(encoding="utf-8"))
        if previous.get("settings") != described:
            raise ConfigError(f"{out} holds results of other settings ({previous.get('settings')}); choose another "
                              f"output folder or repeat those settings to resume")
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not a preprocess output folder; choose a new or empty folder")
    atomic_write_json(parameters, {"settings": described, "source": str(Path(source).absolute()),
                                   "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    atomic_write_json(out / "dataset_description.json", {
        "Name": "alz-monai preprocess (t1-linear style)", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "alz-monai preprocess", "Description": "N4, registration to nilearn's "
                         f"{TEMPLATE_SPACE} template, crop to the t1-linear MNI box, template brain mask"}]})


def _jobs(records: list[dict[str, Any]], out: Path, settings: PreprocessSettings, workers: int) -> list[_Job]:
    """One job per record, with its output folder and file stem; two scans sharing outputs are refused."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    jobs: list[_Job] = []
    owners: dict[tuple[Path, str], str] = {}
    problems: list[str] = []
    for record in records:
        participant = _UNSAFE.sub("_", record["participant_id"])
        session = _UNSAFE.sub("_", record["session_id"])
        stem = re.sub(r"_T1w$", "", nifti_stem(record["image"]))
        if not stem.startswith(participant):
            stem = "_".join(filter(None, (participant, session, _UNSAFE.sub("_", stem))))
        folder = out / "subjects" / participant / session / "t1_linear"
        key = (folder, stem)
        if key in owners:
            problems.append(f"{record['image']} and {owners[key]} would both be written as {folder / stem}*; give "
                            f"them distinct file names, sessions or participants")
        owners[key] = record["image"]
        jobs.append(_Job(record=record, out=out, folder=folder, stem=stem, settings=settings, threads=threads))
    if problems:
        raise DataError(problems, source=str(out))
    return jobs


def _paths(job: _Job) -> dict[str, Path]:
    prefix = job.folder / f"{job.stem}_space-{TEMPLATE_SPACE}"
    resolution = job.settings.resolution_label
    return {"image": Path(f"{prefix}_desc-CropBrain_res-{resolution}_T1w.nii.gz"),
            "transform": Path(f"{prefix}_res-{resolution}_{job.settings.transform}.tfm"),
            "qc_mosaic": job.folder / f"{job.stem}_qc.png", "record": job.folder / f"{job.stem}_qc.json"}


def _finished(job: _Job) -> dict[str, Any] | None:
    """The stored result row of a scan finished by an earlier run, None if it still has to be done."""
    paths = _paths(job)
    if not paths["record"].is_file():
        return None
    row = json.loads(paths["record"].read_text(encoding="utf-8"))
    if row.get("source") != job.record["image"]:
        return {**_base_row(job), "status": "failed", "error": f"{paths['record']} belongs to {row.get('source')}; "
                "two scans map to one output, rename one"}
    if not all(paths[name].is_file() for name in ("image", "transform", "qc_mosaic")):
        return None
    return {**row, "record": job.record}


def _base_row(job: _Job) -> dict[str, Any]:
    return {"participant_id": job.record["participant_id"], "session_id": job.record["session_id"],
            "source": job.record["image"], "record": job.record}


def _run_job(job: _Job) -> dict[str, Any]:
    """Preprocess one scan and write its outputs; any error becomes the scan's failure, not the run's."""
    sitk().ProcessObject.SetGlobalDefaultNumberOfThreads(job.threads)
    started = time.perf_counter()
    row = _base_row(job)
    paths = _paths(job)
    try:
        scan = load_scan(job.record["image"])
        result = preprocess_volume(scan.get_fdata(dtype="float32"), scan.affine, job.settings,
                                   source=job.record["image"])
        with atomic_open(paths["image"], "wb") as handle:
            handle.write(gzip.compress(to_nifti(result.brain).to_bytes(), compresslevel=GZIP_LEVEL, mtime=0))
        _write_transform(result.template_to_scan, paths["transform"])
        title = f"{' '.join(filter(None, (row['participant_id'], row['session_id'])))}  score {result.qc_score:.3f}"
        save_mosaic(result.head, job.settings.resolution, paths["qc_mosaic"], title)
    except Exception as error:  # noqa: BLE001 - reported per scan, the other scans go on
        message = str(error) if isinstance(error, DataError) else f"{type(error).__name__}: {error}"
        logger.error("%s failed: %s", job.record["image"], message)
        return {**row, "status": "failed", "error": " ".join(message.split())}
    stored = {key: value for key, value in row.items() if key != "record"}
    stored.update(status="done", error="", qc_score=round(result.qc_score, 4),
                  seconds=round(time.perf_counter() - started, 1),
                  **{name: paths[name].relative_to(job.out).as_posix()
                     for name in ("image", "transform", "qc_mosaic")})
    atomic_write_json(paths["record"], stored)
    return {**stored, "record": job.record}


def _write_transform(transform: Any, path: Path) -> None:
    """SimpleITK writes by file name only: write beside the target, then move it into place."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tfm")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        sitk().WriteTransform(transform, str(temporary))
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _write_tables(out: Path, rows: list[dict[str, Any]], threshold: float, exclude_flagged: bool,
                  summary: PreprocessSummary) -> None:
    qc = pd.DataFrame([{key: value for key, value in row.items() if key != "record"} for row in rows])
    for column in ("qc_score", "seconds", "image", "transform", "qc_mosaic", "error"):
        if column not in qc:
            qc[column] = None
    done = qc["status"] == "done"
    qc["qc_pass"] = done & pd.Series(passes(qc["qc_score"].fillna(-1.0), threshold), index=qc.index)
    summary.flagged = int((done & ~qc["qc_pass"]).sum())
    columns = ["participant_id", "session_id", "source", "status", "qc_score", "qc_pass", "seconds", "image",
               "transform", "qc_mosaic", "error"]
    summary.qc_table = out / QC_TABLE
    atomic_write_text(summary.qc_table, qc[columns].to_csv(sep="\t", index=False))
    if done.any():
        html_path, _ = write_overview(qc[columns], out, threshold)
        summary.overview = html_path

    table = []
    for row, passed in zip(rows, qc["qc_pass"]):
        if row["status"] != "done" or (exclude_flagged and not passed):
            summary.excluded += row["status"] == "done"
            continue
        record = row["record"]
        entry = {"image": row["image"], "label": record["label_name"], "participant_id": record["participant_id"],
                 "session_id": record["session_id"], "split": record["split"]}
        entry.update({key: value for key, value in record.items()
                      if key not in {*entry, "label", "label_name"} and not key.endswith(_MOVED_COLUMN_SUFFIXES)})
        entry.update(qc_score=row["qc_score"], qc_pass=bool(passed), source_image=row["source"])
        table.append(entry)
    if not table:
        logger.error("no scan is preprocessed and kept; %s is not written", out / SCANS_TABLE)
        return
    scans = pd.DataFrame(table)
    if not scans["split"].astype(bool).any():
        scans = scans.drop(columns="split")
    summary.scans_table = out / SCANS_TABLE
    atomic_write_text(summary.scans_table, scans.to_csv(sep="\t", index=False))
