"""Which config files make each bundle workflow, and running one as a user types it.

Stage 2 (``ad_mosa``) is an overlay of stage 1's recipe, so its workflows list stage 1's ``train.yaml`` first;
the evaluation, inference, saliency and multi-GPU overlays are stage 1's for both bundles.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import alz_monai

__all__ = ["BUNDLES", "BUNDLES_DIR", "OVERLAYS", "STAGE1", "STAGE2", "bundle_command", "config_argument",
           "config_files", "run_bundle"]

logger = logging.getLogger(__name__)

_PACKAGE = Path(alz_monai.__file__).resolve().parent
# installed from a wheel: alz_monai/bundles; a source checkout or editable install: <repo>/bundles
BUNDLES_DIR = _PACKAGE / "bundles" if (_PACKAGE / "bundles").is_dir() else _PACKAGE.parent / "bundles"
STAGE1, STAGE2 = "ad_resnet3d", "ad_mosa"
BUNDLES = (STAGE1, STAGE2)
OVERLAYS = ("evaluate", "inference", "explain", "multi_gpu_train")
_STAGE1_CONFIGS = f"../{STAGE1}/configs"
# MONAI's ckpt_export/onnx_export refuse two config files of one name: the stage-2 overlay is mosa.yaml
_RECIPES = {STAGE1: ("configs/train.yaml",), STAGE2: (f"{_STAGE1_CONFIGS}/train.yaml", "configs/mosa.yaml")}


def config_files(bundle: str, *overlays: str) -> list[str]:
    """The ``--config_file`` list of ``bundle`` with ``overlays`` (e.g. ``"evaluate"``), relative to its folder."""
    if bundle not in _RECIPES:
        raise ValueError(f"unknown bundle {bundle!r}; valid bundles: {', '.join(BUNDLES)}")
    unknown = [name for name in overlays if name not in OVERLAYS]
    if unknown:
        raise ValueError(f"unknown overlays {unknown}; valid overlays: {', '.join(OVERLAYS)}")
    folder = "configs" if bundle == STAGE1 else _STAGE1_CONFIGS
    return [*_RECIPES[bundle], *(f"{folder}/{name}.yaml" for name in overlays)]


def config_argument(files: Sequence[str]) -> str:
    """``--config_file``'s value as MONAI parses it: one file, or a Python list of several."""
    return files[0] if len(files) == 1 else "[" + ",".join(f"'{name}'" for name in files) + "]"


def bundle_command(bundle: str, run_id: str, overlays: Sequence[str] = (),
                   overrides: Mapping[str, str] | Sequence[str] = ()) -> list[str]:
    """``python -m monai.bundle run RUN_ID --config_file ...`` plus overrides (a mapping, or ready ``--key value``
    tokens), to run in the bundle's folder."""
    command = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file",
               config_argument(config_files(bundle, *overlays))]
    if isinstance(overrides, Mapping):
        for key, value in overrides.items():
            command += [f"--{key}", value]
    else:
        command += list(overrides)
    return command


def run_bundle(bundle: str, run_id: str, overlays: Sequence[str] = (), overrides: Mapping[str, str] = {},
               log_path: Path | None = None) -> None:
    """Run a bundle workflow in its folder, as a user would; a failure raises with the command to repeat it.

    With ``log_path`` the run's output goes to that file instead of the terminal (the end of it is shown on failure).
    """
    command = bundle_command(bundle, run_id, overlays, overrides)
    cwd = BUNDLES_DIR / bundle
    if not cwd.is_dir():
        raise FileNotFoundError(f"{cwd} not found: the bundles run from a source checkout (pip install -e .)")
    logger.info("(cd %s && %s)", cwd, shlex.join(command))
    if log_path is None:
        result = subprocess.run(command, cwd=cwd, check=False)
    else:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "w", encoding="utf-8") as log:
            result = subprocess.run(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        shown = "its log is above" if log_path is None else (
            f"its log is {log_path}, ending:\n" + "\n".join(log_path.read_text(encoding="utf-8").splitlines()[-15:]))
        raise RuntimeError(f"the {bundle} {run_id} run failed (exit {result.returncode}); {shown}\n"
                           f"Command: (cd {cwd} && {shlex.join(command)})")
