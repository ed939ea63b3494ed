"""Shared fixtures: a tiny synthetic dataset and finished runs of both bundles, each made once per session.

The bundles run as a user runs them, ``python -m monai.bundle ...`` from the bundle folder, in a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from alz_monai.recipes import STAGE1, STAGE2, config_argument, config_files

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLES_DIR = REPO_ROOT / "bundles"

BUNDLE_TIMEOUT_S = 600

# 8 participants x 2 sessions at 6 mm; with the ratios below 4/2/2 participants, so every split holds both classes
TINY_DATASET = {"subjects": 8, "sessions": 2, "spacing": 6.0, "seed": 0}
# A constant learning rate makes a 2-epoch run resumed to 4 epochs comparable value by value with a 4-epoch run.
TINY_TRAINING = {
    "spatial_size": [32, 32, 32],
    "pixdim": [6, 6, 6],
    "split_ratios": [0.5, 0.25, 0.25],
    "bootstrap_resamples": 50,
    "log_every_n_steps": 1,
    "scheduler_name": "constant",
    "warmup_epochs": 0,
}
TINY_MOSA = {"embed_dim": 32, "num_heads": 4}
STAGE1_EPOCHS = 4
STAGE2_EPOCHS = 2


def cli_overrides(knobs: Mapping[str, Any]) -> list[str]:
    """``--key value`` pairs as ``python -m monai.bundle`` parses them (lists and numbers as Python literals)."""
    args: list[str] = []
    for key, value in knobs.items():
        args += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    return args


@dataclass(frozen=True)
class BundleRun:
    """A finished training run and the knobs every later command on it must repeat."""

    bundle: str
    dataset_dir: Path
    output_dir: Path
    knobs: dict[str, Any] = field(default_factory=dict)
    num_epochs: int = STAGE1_EPOCHS

    @property
    def bundle_dir(self) -> Path:
        return BUNDLES_DIR / self.bundle

    @property
    def knob_args(self) -> list[str]:
        """The knobs alone: what commands that only build the network need."""
        return cli_overrides(self.knobs)

    @property
    def cli_args(self) -> list[str]:
        """Data, run folder and knobs: what training and evaluation need."""
        return ["--dataset_dir", str(self.dataset_dir), "--output_dir", str(self.output_dir), *self.knob_args]


class BundleCLI:
    """``python -m monai.bundle <args>`` in a bundle's folder, as a user runs it (config macros need that)."""

    @staticmethod
    def _env() -> dict[str, str]:
        # One thread per run: the test machine is shared, and oversubscribed threads make 3D convolutions crawl.
        # No GPU: CPU runs are deterministic, so resumed and uninterrupted runs can be compared value by value.
        return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}

    def __call__(self, bundle: str, *args: str, expect_success: bool = True) -> subprocess.CompletedProcess[str]:
        """The finished process, stdout and stderr together in ``.stdout``; a failure it did not expect fails
        the test with the end of the log."""
        completed = subprocess.run(
            [sys.executable, "-m", "monai.bundle", *args],
            cwd=BUNDLES_DIR / bundle,
            env=self._env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=BUNDLE_TIMEOUT_S,
            check=False,
        )
        if expect_success and completed.returncode != 0:
            pytest.fail(f"{bundle}: `python -m monai.bundle {' '.join(args)}` exited with {completed.returncode}:\n"
                        f"{completed.stdout[-4000:]}")
        return completed

    @staticmethod
    def configs(bundle: str, *overlays: str, extra: tuple[str | Path, ...] = ()) -> str:
        """``--config_file`` of a bundle workflow (overlays such as "evaluate"), plus test-only config files."""
        return config_argument([*config_files(bundle, *overlays), *map(str, extra)])

    def train(self, run: BundleRun, *extra_args: str, extra_configs: tuple[str | Path, ...] = (),
              expect_success: bool = True) -> subprocess.CompletedProcess[str]:
        """The ``training`` workflow on ``run``'s folder; ``extra_args`` come last and win."""
        return self(run.bundle, "run", "training", "--config_file", self.configs(run.bundle, extra=extra_configs),
                    *run.cli_args, "--num_epochs", str(run.num_epochs), *extra_args, expect_success=expect_success)


@pytest.fixture(scope="session")
def bundle_cli() -> BundleCLI:
    return BundleCLI()


# Folders of session fixtures: they outlive the test module that first asked for them.
SESSION_FOLDERS: set[Path] = set()


def session_folder(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    folder = tmp_path_factory.mktemp(name)
    SESSION_FOLDERS.add(folder)
    return folder


@pytest.fixture(scope="module", autouse=True)
def discard_module_folders(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Each run folder holds ~1 GB of checkpoints and CI disks are small: what a test module's fixtures made
    goes when the module ends (tmp_path_retention_policy removes each passing test's own tmp_path)."""
    base = tmp_path_factory.getbasetemp()
    before = set(base.iterdir())
    yield
    for folder in set(base.iterdir()) - before - SESSION_FOLDERS:
        shutil.rmtree(folder, ignore_errors=True)


def make_synthetic_dataset(tmp_path_factory: pytest.TempPathFactory, folder: str, session: bool = False,
                           **params: Any) -> Path:
    """A synthetic dataset in a fresh temporary folder (shared by the dataset fixtures of every test file)."""
    from alz_monai.data.synth import generate_synthetic_dataset

    parent = session_folder(tmp_path_factory, folder) if session else tmp_path_factory.mktemp(folder)
    dataset_dir = parent / "synthetic"
    generate_synthetic_dataset(dataset_dir, progress=False, **params)
    return dataset_dir


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_dataset(tmp_path_factory, "data", session=True, **TINY_DATASET)


@pytest.fixture(scope="session")
def stage1_run(tmp_path_factory: pytest.TempPathFactory, tiny_dataset: Path, bundle_cli: BundleCLI) -> BundleRun:
    """An uninterrupted ad_resnet3d run of STAGE1_EPOCHS epochs."""
    run = BundleRun(STAGE1, tiny_dataset, session_folder(tmp_path_factory, "stage1") / "run", dict(TINY_TRAINING))
    bundle_cli.train(run)
    return run


@pytest.fixture(scope="session")
def stage2_run(tmp_path_factory: pytest.TempPathFactory, stage1_run: BundleRun, bundle_cli: BundleCLI) -> BundleRun:
    """An ad_mosa run of STAGE2_EPOCHS epochs initialised from the stage-1 run's best model."""
    knobs = {**TINY_TRAINING, **TINY_MOSA,
             "stage1_model": str(stage1_run.output_dir / "checkpoints" / "model_best.pt")}
    run = BundleRun(STAGE2, stage1_run.dataset_dir, session_folder(tmp_path_factory, "stage2") / "run", knobs,
                    num_epochs=STAGE2_EPOCHS)
    bundle_cli.train(run)
    return run


SideBySide = Callable[[Mapping[str, Callable[[], Any]]], dict[str, Any]]


def _run_side_by_side(tasks: Mapping[str, Callable[[], Any]]) -> dict[str, Any]:
    with ThreadPoolExecutor(max_workers=max(1, min(len(tasks), os.cpu_count() or 1))) as pool:
        futures = {key: pool.submit(task) for key, task in tasks.items()}
        return {key: future.result() for key, future in futures.items()}


@pytest.fixture(scope="session")
def run_side_by_side() -> SideBySide:
    """Runs independent tasks (typically bundle runs, one thread each) as many at a time as there are CPU cores,
    since each run computes on one thread; returns their results by key. A task's failure fails the caller."""
    return _run_side_by_side
