"""The run folder's recorded configuration, and the checks every bundle workflow makes before any data work.

A training run writes ``<output_dir>/run_config.yaml`` when it starts: every knob after command-line overrides,
the recipe's model definition (network, preprocessing, augmentation), the data source and split table with its
hash, package versions and the git commit. Every later command on that folder reads it:

- ``run evaluating`` / ``inferring`` / ``explaining`` take every recorded knob they are not given (geometry,
  classes, preprocessing, network, ...). A given value that differs from the recorded one is refused, naming
  both, unless ``--allow_config_change true``. Knobs listed in the recipe's ``free_knobs`` (machine and output
  settings) and ``evaluation_free_knobs`` (batch size, precision, ...) are the command's own.
- ``run training --resume true`` takes the recorded knobs likewise and refuses another batch size, network,
  geometry, loss, ...; fewer epochs than already trained are refused; more epochs extend the run (see
  :func:`alz_monai.optim.build_scheduler`: the cosine schedule gets a warm restart at the resume epoch, recorded
  in the ``lr_restarts`` knob, so no epoch ever trains at learning rate 0).

Before anything else is built, :func:`prepare_workflow` also refuses command-line keys the recipe does not
define (MONAI would add them silently), parses every boolean knob once (``--amp false`` arrives as a string)
and checks ``key_metric`` and ``val_interval``. Bundles call it as their ``initialize`` step, which then runs
the recipe's ``setup`` list.

MONAI gives a ``$`` expression no handle on the parser that evaluates it, so :func:`workflow_context` finds it
(and the command line's overrides) on the call stack of ``python -m monai.bundle run`` (MONAI 1.6).
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import hashlib
import inspect
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import yaml
from monai.bundle import ConfigParser
from monai.bundle.utils import DEFAULT_EXP_MGMT_SETTINGS

from alz_monai import layout
from alz_monai.errors import ConfigError, install_concise_errors
from alz_monai.fileio import atomic_write_text
from alz_monai.metrics import PER_CLASS_SCALAR_KEYS, SCALAR_KEYS

__all__ = [
    "CONFIG_CHANGE_FLAG", "MODES", "WorkflowContext", "checkpoint_epoch", "describe_model", "load_run_config",
    "parse_flag", "check_model_selection", "lookup_key", "prepare_workflow", "record_data", "workflow_context",
]

logger = logging.getLogger(__name__)

MODES = ("train", "use")
CONFIG_CHANGE_FLAG = "allow_config_change"
# create_workflow's own arguments: everything else it receives is a command-line override of the config
_WORKFLOW_ARGUMENTS = frozenset({
    "meta_file", "logging_file", "init_id", "run_id", "final_id", "tracking", "workflow_type", "properties_path",
    "args_file", "workflow_name", "config_file"})
# the keys of the recipe that steer this module, not knobs of a run
_STEERING_KEYS = ("free_knobs", "evaluation_free_knobs", "recorded_defaults", "recorded_components")
_REFERENCE_PREFIXES = ("$", "@", "%")
# knobs named like this hold paths: recorded absolute, so later commands from another folder find the same files
_PATH_KNOB_SUFFIXES = ("_dir", "_path", "_model", "datalist")
_PACKAGES = ("torch", "monai", "pytorch-ignite", "numpy", "nibabel", "scikit-learn")


@dataclasses.dataclass
class WorkflowContext:
    """The parser of the running bundle workflow, its config files and the command line's overrides
    (None where the workflow was not started by ``monai.bundle run`` / ``create_workflow``)."""

    parser: ConfigParser
    config_files: tuple[str, ...] | None
    overrides: dict[str, Any] | None
    tracking: Any = None


def workflow_context() -> WorkflowContext:
    """Find the running workflow on the call stack (see the module docstring)."""
    parser: ConfigParser | None = None
    config_files: tuple[str, ...] | None = None
    overrides: dict[str, Any] | None = None
    tracking: Any = None
    frame = inspect.currentframe()
    while frame is not None:
        local = frame.f_locals
        if parser is None and isinstance(local.get("self"), ConfigParser):
            parser = local["self"]
        if frame.f_code.co_name == "create_workflow" and isinstance(local.get("_args"), dict):
            files = local.get("config_file")
            if files is not None:
                config_files = tuple(str(f) for f in ([files] if isinstance(files, (str, os.PathLike)) else files))
            overrides = {key: value for key, value in local["_args"].items() if key not in _WORKFLOW_ARGUMENTS}
            tracking = local["_args"].get("tracking")
        frame = frame.f_back
    if parser is None:
        raise RuntimeError("prepare_workflow runs as a bundle's initialize step (python -m monai.bundle run ...)")
    return WorkflowContext(parser, config_files, overrides, tracking)


def _tracking_keys(tracking: Any) -> set[str]:
    """The top-level keys that ``--tracking`` (MONAI's ``patch_bundle_tracking``) adds to the config, such as
    ``tracking_uri`` and ``experiment_name``: the command's own settings, never knobs of the run."""
    if tracking is None:
        return set()
    if isinstance(tracking, str) and tracking in DEFAULT_EXP_MGMT_SETTINGS:
        tracking = DEFAULT_EXP_MGMT_SETTINGS[tracking]
    settings = dict(tracking) if isinstance(tracking, Mapping) else ConfigParser.load_config_files(tracking)
    return set(settings.get("configs", {})) - set(settings.get("handlers_id", {}))


def _is_plain(value: Any) -> bool:
    """Data a knob can hold: no component (``_target_``) and no reference or expression anywhere inside."""
    if isinstance(value, str):
        return not value.startswith(_REFERENCE_PREFIXES)
    if isinstance(value, Mapping):
        return "_target_" not in value and all(_is_plain(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return all(_is_plain(item) for item in value)
    return value is None or isinstance(value, (bool, int, float))


def lookup_key(config: Any, key: str) -> tuple[bool, Any, list[str]]:
    """(found, value, the valid names at the level where the path stopped) for a ``a#b#0`` key."""
    node = config
    for part in key.replace("::", "#").split("#"):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            names = [str(k) for k in node] if isinstance(node, Mapping) else []
            return False, None, names
    return True, node, []


def _check_override_keys(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> None:
    problems = []
    for key in overrides:
        if key.lstrip("+") != key:
            continue  # a "+key" merge is MONAI's own syntax for adding to a list or dict
        found, _, names = lookup_key(base, key)
        if found:
            continue
        leaf = key.replace("::", "#").split("#")[-1]
        close = difflib.get_close_matches(leaf, names, n=3, cutoff=0.6)
        prefix = key[: len(key) - len(leaf)]
        hint = f"did you mean {', '.join('--' + prefix + name for name in close)}?" if close else (
            "see the knobs at the top of configs/train.yaml")
        problems.append(f"--{key} is not a knob of this bundle ({hint})")
    if problems:
        raise ConfigError("; ".join(problems) + "; MONAI would add such a key silently and ignore it")


def parse_flag(name: str, value: Any) -> bool:
    """A boolean knob's value: ``python -m monai.bundle`` passes ``--amp false`` as the string ``'false'``."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ConfigError(f"{name} must be true or false, got {value!r}; pass --{name} true or --{name} false")


def _changed_booleans(base: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, bool]:
    """The boolean knobs (a bool in the recipe) whose value must be rewritten as a bool."""
    return {key: parse_flag(key, config[key]) for key, default in base.items()
            if isinstance(default, bool) and key in config and not isinstance(config[key], bool)}


def _absolute_paths(knobs: dict[str, Any]) -> dict[str, Any]:
    result = dict(knobs)
    for key, value in knobs.items():
        if key.endswith(_PATH_KNOB_SUFFIXES) and isinstance(value, str) and value and not os.path.isabs(value):
            result[key] = os.path.abspath(value)
    return result


def _knobs(config: Mapping[str, Any], exclude: set[str]) -> dict[str, Any]:
    return {key: value for key, value in config.items() if not key.startswith("_") and key not in _STEERING_KEYS
            and key != "imports" and key not in exclude and _is_plain(value)}


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}{' (with uncommitted changes)' if dirty else ''}" or None


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "alz-monai": _version("alz-monai")}
    versions.update({name: _version(name) for name in _PACKAGES})
    return versions


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def load_run_config(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The recorded configuration of a run folder, or None when it has none (made by an older version)."""
    path = Path(run_dir) / layout.RUN_CONFIG_NAME
    if not path.is_file():
        return None
    try:
        recorded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML ({error}); restore it from a backup, or train anew") from None
    if not isinstance(recorded, dict) or not isinstance(recorded.get("knobs"), dict):
        raise ConfigError(f"{path} is not a run configuration written by alz-monai; restore it, or train anew")
    return recorded


def checkpoint_epoch(path: str | os.PathLike) -> tuple[int | None, str | None]:
    """(training epoch, None) of a full checkpoint, or (None, why it cannot be used)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError:
        return None, "does not exist"
    except Exception as error:  # a truncated zip, a text file, a pickle of another kind...
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return None, f"cannot be read ({reason})"
    trainer = state.get("trainer") if isinstance(state, Mapping) else None
    if not isinstance(trainer, Mapping) or "iteration" not in trainer or not trainer.get("epoch_length"):
        return None, "is not a full training checkpoint (no trainer state)"
    return int(trainer["iteration"]) // int(trainer["epoch_length"]), None


def describe_model(path: str | os.PathLike) -> dict[str, Any]:
    """What a report names as its model: the checkpoint file, the training epoch it holds (a full checkpoint's
    trainer state, or ``best_metric.json`` beside a ``model_best.pt``) and its sha256 (to tell a stale report)."""
    path = Path(path).absolute()
    epoch, _ = checkpoint_epoch(path)
    best_record = path.parent / layout.BEST_METRIC_NAME
    if epoch is None and path.name == layout.BEST_MODEL_NAME and best_record.is_file():
        try:
            epoch = int(json.loads(best_record.read_text(encoding="utf-8"))["epoch"])
        except (ValueError, KeyError, TypeError):
            epoch = None
    return {"checkpoint": str(path), "training_epoch": epoch, "sha256": _file_sha256(path) if path.is_file() else None}


def _good_checkpoints(checkpoint_dir: Path, exclude: Path) -> list[tuple[str, int]]:
    candidates = [checkpoint_dir / layout.FINAL_CHECKPOINT_NAME, checkpoint_dir / layout.LATEST_CHECKPOINT_NAME,
                  *sorted(p for p in checkpoint_dir.glob("*.pt") if layout.is_epoch_checkpoint(p))]
    good = []
    for path in candidates:
        if path != exclude and path.is_file():
            epoch, _ = checkpoint_epoch(path)
            if epoch is not None:
                good.append((path.name, epoch))
    return sorted(good, key=lambda item: -item[1])


def _resume_point(output_dir: Path, resume_from: str) -> int | None:
    """The epoch the resumed run starts from; None when the folder holds no checkpoint at all (the earlier run
    stopped before its first one: it is restarted)."""
    checkpoint_dir = output_dir / layout.CHECKPOINTS_DIRNAME
    path = checkpoint_dir / resume_from
    epoch, problem = checkpoint_epoch(path)
    if epoch is not None:
        return epoch
    good = _good_checkpoints(checkpoint_dir, exclude=path)
    if problem == "does not exist" and not good and not any(checkpoint_dir.glob("*.pt")):
        return None
    if good:
        listed = ", ".join(f"{name} (epoch {epoch})" for name, epoch in good)
        action = f"resume from one with --resume_from {good[0][0]}"
    else:
        listed, action = "none", "start a new run in a new --output_dir"
    raise ConfigError(f"cannot resume: {path} {problem}; readable checkpoints in {checkpoint_dir}: {listed}; "
                      f"{action}")


def _differences(recorded: Mapping[str, Any], current: Mapping[str, Any], keys: Sequence[str]) -> list[str]:
    """One ``key recorded X, given Y`` per differing value, nested ones by their ``a#b`` path (the override's)."""
    found: list[str] = []
    for key in keys:
        if key in recorded:
            _collect_differences(key, recorded[key], current.get(key), found)
    return found


def _collect_differences(path: str, recorded: Any, given: Any, found: list[str]) -> None:
    if recorded == given:
        return
    if isinstance(recorded, Mapping) and isinstance(given, Mapping):
        for key in [*recorded, *(k for k in given if k not in recorded)]:
            _collect_differences(f"{path}#{key}", recorded.get(key), given.get(key), found)
    elif isinstance(recorded, list) and isinstance(given, list) and len(recorded) == len(given) and all(
            isinstance(item, (Mapping, list)) for item in recorded):
        for index, (old, new) in enumerate(zip(recorded, given)):
            _collect_differences(f"{path}#{index}", old, new, found)
    else:
        found.append(f"{path} recorded {_show(recorded)}, given {_show(given)}")


def _show(value: Any) -> str:
    text = yaml.dump(value, Dumper=_PlainDumper, default_flow_style=True, width=10_000, sort_keys=False).strip()
    return text[:-4].strip() if text.endswith("\n...") or text.endswith(" ...") else text


def _key_metric_names(classes: Sequence[str]) -> list[str]:
    return [*SCALAR_KEYS, *(f"{key}/{name}" for name in classes for key in PER_CLASS_SCALAR_KEYS)]


@dataclasses.dataclass
class _Plan:
    """What :func:`prepare_workflow` changes in the parser, and the record it writes."""

    updates: dict[str, Any]
    record: dict[str, Any] | None


def _overridden(overrides: Mapping[str, Any] | None, key: str) -> bool:
    return overrides is not None and any(k == key or k.replace("::", "#").startswith(key + "#") for k in overrides)


def _plan(context: WorkflowContext, mode: str) -> _Plan:
    parser, overrides = context.parser, context.overrides
    config = parser.get()
    base = ConfigParser.load_config_files(list(context.config_files)) if context.config_files else config
    tracking_keys = _tracking_keys(context.tracking) - set(base)
    if overrides is not None:
        _check_override_keys({**dict.fromkeys(tracking_keys), **base}, overrides)
    updates: dict[str, Any] = dict(_changed_booleans(base, config))
    current = {**config, **updates}

    output_dir = Path(parser.get_parsed_content("output_dir")).expanduser().absolute()
    recorded = load_run_config(output_dir)
    allow_change = bool(current.get(CONFIG_CHANGE_FLAG, False))
    free = set(config.get("free_knobs", [])) | {CONFIG_CHANGE_FLAG}
    if mode == "use":
        free |= set(config.get("evaluation_free_knobs", []))
    components = list(config.get("recorded_components", []))
    recorded_defaults = set(config.get("recorded_defaults", []))
    resume = mode == "train" and bool(current.get("resume", False))

    if recorded is not None and (mode == "use" or resume):
        rec = {**recorded["knobs"], **recorded.get("components", {})}
        # a recorded knob the current recipe lacks is added too: e.g. a stage-2 run's network knobs
        adopt = {key: value for key, value in rec.items()
                 if key not in free and not _overridden(overrides, key) and (key not in config or config[key] != value)}
        updates.update(adopt)
        current.update(adopt)
        guarded = [key for key in rec if key in config and key not in free and key != "num_epochs"
                   and key not in recorded_defaults]
        differences = _differences(rec, _absolute_paths(current), guarded)
        if differences and not allow_change:
            ways = ("choose a new --output_dir for a new run, or pass --allow_config_change true to continue "
                    "anyway" if resume else "drop these overrides to use the recorded values, or pass "
                    "--allow_config_change true")
            raise ConfigError(f"{output_dir / layout.RUN_CONFIG_NAME} records other settings: "
                              f"{'; '.join(differences)}; {ways}")
        for difference in differences:
            logger.warning("--allow_config_change: %s", difference)
    elif recorded is None and (mode == "use" or resume):
        logger.warning("%s has no %s (a run of an older version, or not a run folder): this command's own "
                       "settings are used unchecked", output_dir, layout.RUN_CONFIG_NAME)

    if mode == "train":
        _check_training_knobs(current)
        if resume:
            updates.update(_resume_updates(output_dir, current, recorded))
            current.update(updates)
    if mode == "use":
        return _Plan(updates, None)
    record = {
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": _command_line(),
        "config_files": [os.path.abspath(f) for f in context.config_files or ()],
        "overrides": {key: value for key, value in (overrides or {}).items() if _is_plain(value)},
        "knobs": {**(recorded or {}).get("knobs", {}), **_absolute_paths(_knobs(current, tracking_keys))} if resume
        else _absolute_paths(_knobs(current, tracking_keys)),
        "components": {key: current[key] for key in components if key in current},
        "versions": _versions(),
        "git_commit": _git_commit(),
        "history": [*(recorded or {}).get("history", []),
                    {"started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                     "resume": resume, "num_epochs": current.get("num_epochs")}],
    }
    if recorded is not None and resume:
        record["created"] = recorded.get("created", record["created"])
        record["split_table"] = recorded.get("split_table")
    return _Plan(updates, record)


def _check_training_knobs(current: Mapping[str, Any]) -> None:
    classes = current["classes"]
    key_metric = current.get("key_metric")
    names = _key_metric_names(classes)
    if key_metric not in names:
        close = difflib.get_close_matches(str(key_metric), names, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"key_metric {key_metric!r} is not a metric the validation report computes{hint}; "
                          f"valid names: {', '.join(names)}")
    num_epochs, val_interval = current.get("num_epochs"), current.get("val_interval")
    if isinstance(num_epochs, int) and isinstance(val_interval, int) and not 1 <= val_interval <= num_epochs:
        raise ConfigError(f"val_interval ({val_interval}) must be between 1 and num_epochs ({num_epochs}), or no "
                          "epoch would be validated and no best model saved")


def _resume_updates(output_dir: Path, current: Mapping[str, Any], recorded: Mapping[str, Any] | None) -> dict[str, Any]:
    start = _resume_point(output_dir, str(current.get("resume_from", layout.LATEST_CHECKPOINT_NAME)))
    if start is None:  # the earlier run stopped before its first checkpoint: nothing to load, it starts anew
        logger.warning("%s holds no checkpoint yet: the run restarts from its first epoch", output_dir)
        return {"resume": False}
    num_epochs = int(current["num_epochs"])
    trained_for = int((recorded or {}).get("knobs", {}).get("num_epochs", num_epochs))
    if num_epochs < start:
        raise ConfigError(f"cannot resume: the checkpoint has trained {start} epochs but --num_epochs is "
                          f"{num_epochs}; pass --num_epochs {max(start, trained_for)} or more, or choose a new "
                          "--output_dir")
    if num_epochs < trained_for and not current.get(CONFIG_CHANGE_FLAG, False):
        raise ConfigError(f"cannot resume with fewer epochs: the run was set to {trained_for} epochs and "
                          f"--num_epochs is {num_epochs} (the schedule would change); choose a new --output_dir, "
                          "or pass --allow_config_change true")
    if num_epochs > trained_for and current.get("scheduler_name") == "cosine":
        restarts = sorted({*current.get("lr_restarts", []), start})
        logger.info("extending the run from %d to %d epochs: the cosine schedule restarts at epoch %d",
                    trained_for, num_epochs, start)
        return {"lr_restarts": restarts}
    return {}


def _command_line() -> str:
    """The command as the user typed it (``python -m monai.bundle ...`` rather than the module's file path)."""
    argv = list(sys.argv)
    if argv and Path(argv[0]).name == "__main__.py":
        package = Path(argv[0]).parent
        argv[0:1] = ["python", "-m", package.relative_to(package.parents[1]).as_posix().replace("/", ".")]
    return shlex.join(argv)


class _PlainDumper(yaml.SafeDumper):
    """YAML for people: equal lists written out again, not as ``&id001`` anchors and aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _set(parser: ConfigParser, updates: Mapping[str, Any]) -> None:
    for key, value in updates.items():
        parser[key] = value


def _write_record(output_dir: Path, record: Mapping[str, Any]) -> None:
    header = ("# The recorded configuration of this run, written by alz-monai when it started. Every later command\n"
              "# on this folder (resume, evaluating, inferring, explaining) takes its knobs from here.\n")
    text = yaml.dump(dict(record), Dumper=_PlainDumper, sort_keys=False, default_flow_style=None, width=110)
    atomic_write_text(output_dir / layout.RUN_CONFIG_NAME, header + text)


def prepare_workflow(setup: str = "setup", mode: str = "train") -> Any:
    """A bundle's ``initialize`` step: check and settle the knobs, then run the recipe's ``setup`` list.

    ``mode`` is ``"train"`` (a new or resumed training run: the configuration is recorded once ``setup`` holds
    the folder's lock) or ``"use"`` (evaluation, inference, saliency: the recorded configuration is applied).
    Nothing else may be built before this runs: it changes knob values in the parser.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    install_concise_errors()
    context = workflow_context()
    plan = _plan(context, mode)
    _set(context.parser, plan.updates)
    result = context.parser.get_parsed_content(setup)
    if plan.record is not None and context.parser.get_parsed_content("is_main"):
        output_dir = Path(context.parser.get_parsed_content("output_dir")).expanduser().absolute()
        _write_record(output_dir, plan.record)
    return result


def check_model_selection(records: Sequence[Mapping[str, Any]], classes: Sequence[str], key_metric: str,
                          split: str = "val") -> None:
    """Refuse a validation split that lacks a class: every metric but accuracy is then undefined, so no epoch
    would ever be chosen as the best model and the run would fail after training, for want of ``model_best.pt``."""
    present = {int(record["label"]) for record in records if record["split"] == split}
    missing = [name for index, name in enumerate(classes) if index not in present]
    if missing and key_metric != "accuracy":
        raise ConfigError(
            f"the {split} split holds no {' or '.join(missing)} scan, so {key_metric} is undefined there and no best "
            f"model could be selected; give the {split} split scans of every class (other --split_ratios or --seed, "
            "or the dataset's split column), or select on --key_metric accuracy")


def record_data(output_dir: str | os.PathLike, records: Sequence[Mapping[str, Any]], classes: Sequence[str],
                update: bool = True) -> None:
    """Add the data summary (scans and participants per split and class) and the split table's hash to the record
    once the run has resolved its splits. ``update=False`` (evaluation) only checks the table: a hash that no
    longer matches is refused, since the table was edited after training."""
    output_dir = Path(output_dir).expanduser().absolute()
    recorded = load_run_config(output_dir)
    table = output_dir / layout.SPLIT_TABLE_NAME
    if recorded is None or not table.is_file():
        return
    digest = _file_sha256(table)
    previous = recorded.get("split_table") or {}
    if previous.get("sha256") and previous["sha256"] != digest:
        raise ConfigError(f"{table} changed since the run recorded it (sha256 {previous['sha256'][:12]}..., now "
                          f"{digest[:12]}...); restore it, or train anew in a new --output_dir")
    if not update:
        return
    summary: dict[str, Any] = {}
    for split in sorted({str(record["split"]) for record in records}):
        chosen = [record for record in records if record["split"] == split]
        summary[split] = {
            "scans": len(chosen),
            "participants": len({record["participant_id"] for record in chosen}),
            "scans_per_class": {name: sum(1 for r in chosen if int(r["label"]) == index)
                                for index, name in enumerate(classes)},
        }
    recorded["split_table"] = {"path": str(table), "sha256": digest}
    recorded["data"] = summary
    _write_record(output_dir, recorded)


def record_calibration(output_dir: str | os.PathLike, calibration: Mapping[str, Any]) -> None:
    """Record the temperature fitted after training (alz_monai.calibration.calibrate_run) under ``calibration``:
    evaluation and inference apply it to the model it names, and to no other."""
    output_dir = Path(output_dir).expanduser().absolute()
    recorded = load_run_config(output_dir)
    if recorded is None:
        raise ConfigError(f"{output_dir} has no {layout.RUN_CONFIG_NAME}, so its temperature cannot be recorded; "
                          "train the run with this version of alz-monai")
    recorded["calibration"] = dict(calibration)
    _write_record(output_dir, recorded)
