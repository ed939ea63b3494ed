"""The run-folder guard: new runs never land on old ones, resumes need a checkpoint, one process per folder."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from alz_monai.run_dir import RunDirError, latest_checkpoint, prepare_run_dir


def _write_latest(run_dir: Path) -> Path:
    path = run_dir / "checkpoints" / "checkpoint_latest.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"checkpoint")
    return path


def test_new_folder_is_created_and_locked(tmp_path: Path) -> None:
    run_dir = tmp_path / "a" / "run"
    with prepare_run_dir(run_dir, resume=False) as lock:
        assert lock.locked
        assert run_dir.is_dir()
        assert (run_dir / ".lock").read_text().strip() == str(os.getpid())
    assert not lock.locked
    lock.release()  # a second release is harmless


@pytest.mark.parametrize("marker", ["checkpoints/checkpoint_latest.pt", "checkpoints/checkpoint_final.pt",
                                    "summary_all.json"])
def test_folder_holding_a_run_is_refused_without_resume(tmp_path: Path, marker: str) -> None:
    target = tmp_path / marker
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("x")
    with pytest.raises(RunDirError) as raised:
        prepare_run_dir(tmp_path, resume=False)
    message = str(raised.value)
    assert str(tmp_path) in message
    assert "--resume true" in message and "new --output_dir" in message
    # the refusal released the lock: a resume may take the folder at once
    if marker.endswith("latest.pt"):
        prepare_run_dir(tmp_path, resume=True).release()


def test_empty_checkpoints_folder_and_other_files_are_no_run(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "notes.txt").write_text("mine")
    prepare_run_dir(tmp_path, resume=False).release()
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("resume", [False, True])
def test_run_stopped_before_its_first_checkpoint_is_restarted_not_stuck(tmp_path: Path, resume: bool) -> None:
    (tmp_path / "tensorboard" / "train").mkdir(parents=True)
    (tmp_path / "tensorboard" / "train" / "events").write_text("epoch 1, cut short")
    with prepare_run_dir(tmp_path, resume=resume) as lock:
        assert lock.locked
    assert not (tmp_path / "tensorboard").exists()
    kept = list(tmp_path.glob("tensorboard.stopped-*"))
    assert len(kept) == 1 and (kept[0] / "train" / "events").read_text() == "epoch 1, cut short"


def test_resume_requires_the_named_checkpoint_when_others_exist(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "checkpoint_final.pt").write_text("x")
    with pytest.raises(RunDirError, match="cannot resume: .*checkpoint_latest.pt does not exist.*--resume_from"):
        prepare_run_dir(tmp_path, resume=True)
    with prepare_run_dir(tmp_path, resume=True, resume_from="checkpoint_final.pt") as lock:
        assert lock.locked
    _write_latest(tmp_path)
    with prepare_run_dir(tmp_path, resume=True) as lock:
        assert lock.locked


def test_latest_checkpoint(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None
    assert latest_checkpoint(tmp_path / "missing") is None
    path = _write_latest(tmp_path)
    assert latest_checkpoint(tmp_path) == path
    assert latest_checkpoint(str(tmp_path)) == path


def test_uncreatable_folder_names_it_and_suggests_output_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(RunDirError, match=rf"cannot create the output folder {blocker / 'run'}.*--output_dir"):
        prepare_run_dir(blocker / "run", resume=False)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_folder_names_it_and_suggests_output_dir(tmp_path: Path) -> None:
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(RunDirError, match=rf"cannot write to the output folder {tmp_path}.*--output_dir"):
            prepare_run_dir(tmp_path, resume=False)
    finally:
        tmp_path.chmod(0o700)


def test_second_lock_in_same_process_is_refused(tmp_path: Path) -> None:
    with prepare_run_dir(tmp_path, resume=False):
        with pytest.raises(RunDirError, match=rf"another run is using {tmp_path} \(pid {os.getpid()}\)"):
            prepare_run_dir(tmp_path, resume=False)
    prepare_run_dir(tmp_path, resume=False).release()


def test_two_processes_contend_for_the_lock(tmp_path: Path) -> None:
    holder_script = textwrap.dedent(
        f"""
        import os, sys
        from alz_monai.run_dir import prepare_run_dir
        lock = prepare_run_dir({str(tmp_path)!r}, resume=False)
        print("locked", flush=True)
        sys.stdin.readline()
        os._exit(0)
        """
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", holder_script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirError) as raised:
            prepare_run_dir(tmp_path, resume=False)
        assert str(raised.value) == (
            f"another run is using {tmp_path} (pid {holder.pid}); wait for it or choose another --output_dir"
        )
    finally:
        holder.communicate("\n", timeout=30)
    # the holder exited without release() or cleanup: the kernel dropped its lock
    with prepare_run_dir(tmp_path, resume=False) as lock:
        assert lock.locked
