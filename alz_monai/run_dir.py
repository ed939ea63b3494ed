"""Run-folder guard: one run per output folder, and no silent overwrite of an earlier run.

A run folder holds ``checkpoints/``, ``tensorboard/`` and reports. Starting a new run in a folder that
already holds one would mix two runs' curves and replace their checkpoints, so it is refused unless the
caller asks to resume; two processes training into one folder at once are refused through a lock.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from pathlib import Path
from types import TracebackType

from alz_monai.errors import AlzMonaiError
from alz_monai.layout import (
    CHECKPOINTS_DIRNAME,
    LATEST_CHECKPOINT_NAME,
    LOCK_NAME,
    REPORTS_DIRNAME,
    STALE_MARKER_NAME,
    SUMMARY_NAME,
    TENSORBOARD_DIRNAME,
)

__all__ = [
    "RunDirError",
    "RunLock",
    "latest_checkpoint",
    "prepare_report_dir",
    "prepare_run_dir",
    "refuse_existing",
    "require_file",
]

logger = logging.getLogger(__name__)

# The temporary files of alz_monai.fileio.atomic_open: a save cut short by a kill leaves one behind.
PARTIAL_SAVE_GLOB = ".*.tmp"
# What a run that stopped before its first checkpoint leaves behind: set aside when the folder is reused.
STOPPED_RUN_ENTRIES = (TENSORBOARD_DIRNAME, REPORTS_DIRNAME)


class RunDirError(AlzMonaiError, RuntimeError):
    """The output folder cannot be used for this run; the message says why and what to do."""


class RunLock:
    """Exclusive ``flock`` on ``<output>/.lock``, held until :meth:`release`, the end of a ``with`` block,
    the object's garbage collection or process exit (the kernel drops the lock with the file descriptor).

    Keep a reference for as long as the run lasts: a dropped RunLock releases the folder.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.lock_path = run_dir / LOCK_NAME
        try:
            self._handle = open(self.lock_path, "a+", encoding="utf-8")  # noqa: SIM115 (held for the lock's life)
        except OSError as error:
            raise RunDirError(
                f"cannot write to the output folder {run_dir} ({error.strerror}); "
                "fix its permissions or choose another --output_dir"
            ) from error
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._handle.seek(0)
            holder = self._handle.read().strip() or "unknown"
            self._handle.close()
            raise RunDirError(
                f"another run is using {run_dir} (pid {holder}); wait for it or choose another --output_dir"
            ) from None
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.write(f"{os.getpid()}\n")
        self._handle.flush()

    @property
    def locked(self) -> bool:
        return not self._handle.closed

    def release(self) -> None:
        """Give the folder up; calling it again does nothing."""
        if self._handle.closed:
            return
        fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()

    def __enter__(self) -> RunLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The checkpoint a resumed run starts from, or None when the folder has none."""
    path = Path(output_dir) / CHECKPOINTS_DIRNAME / LATEST_CHECKPOINT_NAME
    return path if path.is_file() else None


def _has_checkpoint(run_dir: Path) -> bool:
    checkpoints = run_dir / CHECKPOINTS_DIRNAME
    return checkpoints.is_dir() and any(checkpoints.glob("*.pt"))


def _set_aside_stopped_run(run_dir: Path) -> None:
    """Keep what a run that stopped before its first checkpoint wrote (its curves), out of the new run's way."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in STOPPED_RUN_ENTRIES:
        entry = run_dir / name
        if entry.exists():
            entry.rename(run_dir / f"{name}.stopped-{stamp}")
            logger.warning("the earlier run in %s stopped before its first checkpoint: its %s/ is kept as "
                           "%s.stopped-%s", run_dir, name, name, stamp)


def prepare_run_dir(output_dir: str | os.PathLike, resume: bool, resume_from: str = LATEST_CHECKPOINT_NAME) -> RunLock:
    """Create ``output_dir`` if needed, check it suits a new or resumed run, and lock it. A resumed run's
    folder is also cleared of checkpoint saves that a kill cut short. A folder whose run stopped before its first
    checkpoint is never stuck: a new or resumed run restarts there (its earlier curves are set aside).

    Raises:
        RunDirError: the folder cannot be created or written, holds a run (a checkpoint or a summary) while
            ``resume`` is False, lacks ``checkpoints/<resume_from>`` while ``resume`` is True and other checkpoints
            exist, or another process holds it.

    Under multi-GPU training call it on rank 0 only: every other rank would find the folder locked.
    """
    run_dir = Path(output_dir).expanduser().absolute()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunDirError(
            f"cannot create the output folder {run_dir} ({error.strerror}); choose another --output_dir"
        ) from error
    lock = RunLock(run_dir)
    try:
        if resume and _has_checkpoint(run_dir) and not (run_dir / CHECKPOINTS_DIRNAME / resume_from).is_file():
            raise RunDirError(
                f"cannot resume: {run_dir / CHECKPOINTS_DIRNAME / resume_from} does not exist; pass --resume_from "
                "with one of the files in checkpoints/, or --resume false in a new --output_dir"
            )
        if not resume and (_has_checkpoint(run_dir) or (run_dir / SUMMARY_NAME).exists()):
            raise RunDirError(
                f"{run_dir} already holds a run; pass --resume true to continue it, or choose a new --output_dir"
            )
    except RunDirError:
        lock.release()
        raise
    if not _has_checkpoint(run_dir):
        _set_aside_stopped_run(run_dir)
    else:
        _remove_partial_saves(run_dir / CHECKPOINTS_DIRNAME)
    resuming = resume and _has_checkpoint(run_dir)
    logger.info("%s run in %s (locked by pid %d)", "resuming" if resuming else "starting", run_dir, os.getpid())
    return lock


def _remove_partial_saves(checkpoint_dir: Path) -> None:
    """Delete the temporary files of checkpoint saves that a kill cut short (possibly gigabytes); they never
    got a final name, so nothing reads them. Safe only under the run's lock: no save is in progress."""
    for partial in checkpoint_dir.glob(PARTIAL_SAVE_GLOB):
        partial.unlink(missing_ok=True)
        logger.info("removed %s, left by a save that the previous run did not finish", partial)


def require_file(path: str | os.PathLike, what: str) -> str:
    """``path`` if it is a file; otherwise a RunDirError saying what it should have been."""
    if not Path(path).is_file():
        raise RunDirError(f"{path} does not exist: {what}")
    return str(path)


def refuse_existing(path: str | os.PathLike, overwrite: bool) -> None:
    """Refuse to replace a file a user produced unless ``overwrite`` is set."""
    if Path(path).exists() and not overwrite:
        raise RunDirError(f"{path} already exists; pass --overwrite true to replace it, or choose another path")


def prepare_report_dir(report_dir: str | os.PathLike, overwrite: bool) -> RunLock:
    """Create and lock a folder for an evaluation's reports; a non-empty one is kept unless ``overwrite``."""
    report_dir = Path(report_dir).expanduser().absolute()
    if report_dir.is_dir() and any(p.name != LOCK_NAME for p in report_dir.iterdir()) and not overwrite:
        raise RunDirError(f"{report_dir} already holds reports; pass --overwrite true to replace them, or choose "
                          "another --eval_split or --output_dir")
    try:
        report_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunDirError(f"cannot create {report_dir} ({error.strerror}); choose another --output_dir") from error
    lock = RunLock(report_dir)
    (report_dir / STALE_MARKER_NAME).unlink(missing_ok=True)  # the reports about to be written are current
    return lock
