"""Recipe search: Optuna over the cross-validation folds of train+val, the test split never looked at.

``alz-monai tune BUNDLE_DIR --num-folds K --output-dir OUT --trials N [-- BUNDLE_OVERRIDES]`` samples knobs of the
bundle from a search space (:data:`DEFAULT_SPACE`, or a YAML/JSON file of the same form given with ``--space``),
trains each trial as an ``alz-monai cv`` run in ``OUT/trial_<n>`` and scores it by the mean over folds of the best
validation value of the recipe's ``key_metric`` (or ``--metric``). The folds' models also score the test split (that
is what ``cv`` does), but no test figure enters the search: compare the final model with the defaults on it once.

All trials share one base split (``OUT/splits.tsv``, from ``--split-table`` or the first trial), so their folds
validate on the same participants. A trial is pruned (Optuna's median rule) after a fold whose running mean is
worse than the median of earlier trials at that fold. ``--folds`` restricts every trial to some folds (cheaper,
noisier).

Resumable: the study lives in ``OUT/optuna.db`` (SQLite). Rerunning the same command continues it: an interrupted
trial is taken up again with the same knobs in its own folder, where finished folds are kept and an unfinished one
resumes from its checkpoint; ``--trials`` counts finished, pruned and failed trials (a fold that fails makes its
trial fail and the search goes on). For one trial per GPU, start one process per GPU on the same ``OUT``, each with
its own ``CUDA_VISIBLE_DEVICES`` and ``--seed``; a process that dies leaves its trial to be taken up once its
heartbeat is older than ten minutes.

The best trial's knobs are written to ``OUT/best_config.yaml``; train the final model with them by adding the file
to the bundle's configuration: ``python -m monai.bundle run training --config_file
"['configs/train.yaml','OUT/best_config.yaml']"`` (MONAI takes several files as a list). ``OUT/tune_summary.json``
lists every trial.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from alz_monai.crossval import (
    RESERVED_OVERRIDES,
    TRAIN_CONFIG,
    FoldFailedError,
    run_cross_validation,
)
from alz_monai.data.splits import SPLIT_TABLE_NAME, read_split_table, write_split_table
from alz_monai.errors import ConfigError
from alz_monai.fileio import atomic_write_json, atomic_write_text
from alz_monai.run_config import lookup_key

if TYPE_CHECKING:
    import optuna

__all__ = ["BEST_CONFIG_NAME", "DEFAULT_SPACE", "TUNE_SUMMARY_NAME", "format_tune_table",
           "load_space", "run_tuning"]

logger = logging.getLogger(__name__)

BEST_CONFIG_NAME = "best_config.yaml"
TUNE_SUMMARY_NAME = "tune_summary.json"
STUDY_DB_NAME = "optuna.db"
STUDY_NAME = "alz-monai-tune"

#: Knobs both bundles have, with ranges around their defaults that published 3D-CNN recipes use. A space file maps
#: a knob (nested ones as ``network_def#name``) to ``{type: float|int, low, high[, log][, step]}`` or
#: ``{type: categorical, choices: [...]}``.
DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "learning_rate": {"type": "float", "low": 1e-5, "high": 3e-3, "log": True},
    "weight_decay": {"type": "float", "low": 1e-6, "high": 1e-1, "log": True},
    "augmentation_prob": {"type": "float", "low": 0.0, "high": 0.6},
    "label_smoothing": {"type": "float", "low": 0.0, "high": 0.2},
    "num_epochs": {"type": "int", "low": 20, "high": 60, "step": 10},
}

# Heartbeat of a running trial; a trial without one for the grace period counts as dead and is taken up again.
_HEARTBEAT_S = 60
_GRACE_S = 600
# A fold's (or the bootstrap's) failure given the sampled knobs: recorded on the trial, which is not taken up again.
_TRAINING_FAILED = "training_failed"
# The trial whose folder a trial continues.
_RESUMES = "resumes"
_KEYS = {"float": {"type", "low", "high", "log", "step"}, "int": {"type", "low", "high", "log", "step"},
         "categorical": {"type", "choices"}}


def _import_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise ConfigError("alz-monai tune needs Optuna: pip install 'alz-monai[tune]'") from None
    return optuna


def load_space(space: str | Path | Mapping[str, Mapping[str, Any]] | None, bundle_dir: str | Path) -> dict[str, Any]:
    """The search space (a file, a mapping or the default), checked against the knobs of the bundle's recipe."""
    source = "the default search space"
    given: Mapping[str, Mapping[str, Any]] | None
    if isinstance(space, (str, Path)):
        source = str(space)
        if not Path(space).is_file():
            raise FileNotFoundError(f"search space {space} does not exist.")
        text = Path(space).read_text(encoding="utf-8")
        given = json.loads(text) if Path(space).suffix == ".json" else yaml.safe_load(text)
    else:
        given = space
    checked = dict(DEFAULT_SPACE if given is None else given)
    recipe = yaml.safe_load((Path(bundle_dir) / TRAIN_CONFIG).read_text(encoding="utf-8"))
    problems = []
    if not checked:
        problems.append("it is empty")
    for knob, spec in checked.items():
        if f"--{knob}" in RESERVED_OVERRIDES:
            problems.append(f"{knob} is set by the cross-validation itself")
        elif not lookup_key(recipe, knob)[0]:
            problems.append(f"{knob} is not a knob of {Path(bundle_dir) / TRAIN_CONFIG}")
        kind = spec.get("type") if isinstance(spec, Mapping) else None
        if kind not in _KEYS:
            problems.append(f"{knob}: type must be one of {sorted(_KEYS)}, got {kind!r}")
            continue
        if set(spec) - _KEYS[kind]:
            problems.append(f"{knob}: unknown entries {sorted(set(spec) - _KEYS[kind])} for type {kind}")
        if kind == "categorical":
            if not isinstance(spec.get("choices"), list) or not spec["choices"]:
                problems.append(f"{knob}: choices must be a non-empty list")
        elif not (isinstance(spec.get("low"), (int, float)) and isinstance(spec.get("high"), (int, float))
                  and spec["low"] < spec["high"]):
            problems.append(f"{knob}: needs numbers low < high, got low={spec.get('low')!r}, high={spec.get('high')!r}"
                            " (YAML reads 1e-5 as text: write 1.0e-5)")
        elif spec.get("log") and spec["low"] <= 0:
            problems.append(f"{knob}: a log range needs low > 0, got {spec['low']!r}")
    if problems:
        raise ConfigError(f"search space ({source}): " + "; ".join(problems))
    return checked


def _suggest(trial: optuna.Trial, space: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    values = {}
    for knob, spec in space.items():
        options = {key: value for key, value in spec.items() if key not in ("type", "low", "high", "choices")}
        if spec["type"] == "float":
            values[knob] = trial.suggest_float(knob, spec["low"], spec["high"], **options)
        elif spec["type"] == "int":
            values[knob] = trial.suggest_int(knob, spec["low"], spec["high"], **options)
        else:
            values[knob] = trial.suggest_categorical(knob, spec["choices"])
    return values


def _overrides(values: Mapping[str, Any]) -> list[str]:
    """``--knob value`` pairs as ``monai.bundle run`` parses them (Python literals)."""
    return [token for knob, value in values.items() for token in (f"--{knob}", json.dumps(value))]


def _folder_number(trial: optuna.trial.BaseTrial | optuna.trial.FrozenTrial) -> int:
    """The trial whose folder ``trial`` works in: its own, or that of the interrupted trial it takes up."""
    return int(trial.user_attrs.get(_RESUMES, trial.number))


def _folder(output_dir: Path, trial: optuna.trial.BaseTrial | optuna.trial.FrozenTrial) -> Path:
    return output_dir / f"trial_{_folder_number(trial):03d}"


def _take_up_interrupted(study: optuna.Study, output_dir: Path) -> None:
    """Queue again, with the same knobs, every trial that was interrupted (not failed by its own training)."""
    optuna = _import_optuna()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    trials = study.get_trials(deepcopy=False)
    for position, trial in enumerate(trials):
        if trial.state != optuna.trial.TrialState.FAIL or _TRAINING_FAILED in trial.user_attrs:
            continue
        number = _folder_number(trial)
        if any(_folder_number(later) == number for later in trials[position + 1:]):
            continue  # already taken up
        logger.info("trial %d was interrupted: taken up again in %s", trial.number, _folder(output_dir, trial))
        study.enqueue_trial(trial.params, user_attrs={_RESUMES: number})


def _counted(study: optuna.Study) -> int:
    """Trials that count towards ``--trials``: finished, pruned, or failed by their own training."""
    states = _import_optuna().trial.TrialState
    return sum(trial.state in (states.COMPLETE, states.PRUNED)
               or (trial.state == states.FAIL and _TRAINING_FAILED in trial.user_attrs)
               for trial in study.get_trials(deepcopy=False))


def _recipe_metric(bundle_dir: Path) -> tuple[str, str]:
    recipe = yaml.safe_load((bundle_dir / TRAIN_CONFIG).read_text(encoding="utf-8"))
    return str(recipe.get("key_metric", "auc")), "minimize" if recipe.get("key_metric_mode") == "min" else "maximize"


def _check_settings(study: optuna.Study, settings: Mapping[str, Any], output_dir: Path) -> None:
    """Refuse to mix trials of different searches in one study (the attributes persist in the database)."""
    previous = study.user_attrs.get("settings")
    if previous is None:
        study.set_user_attr("settings", dict(settings))
    elif previous != json.loads(json.dumps(settings)):
        changed = sorted(key for key in settings if previous.get(key) != json.loads(json.dumps(settings[key])))
        raise ConfigError(f"{output_dir} holds a search started with other settings ({', '.join(changed)} "
                          "changed); rerun with the same settings to resume it, or choose a new --output-dir.")


def run_tuning(
    bundle_dir: str | Path,
    output_dir: str | Path,
    num_folds: int,
    trials: int,
    space: str | Path | Mapping[str, Mapping[str, Any]] | None = None,
    overrides: Sequence[str] = (),
    folds: Sequence[int] | None = None,
    metric: str | None = None,
    direction: str | None = None,
    split_table: str | Path | None = None,
    prune: bool = True,
    bootstrap_resamples: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """Run (or resume) the search until ``trials`` trials are done; write and return ``tune_summary.json``."""
    optuna_module = _import_optuna()  # not named optuna: the annotations below name the module of TYPE_CHECKING
    bundle_dir, output_dir = Path(bundle_dir).absolute(), Path(output_dir).absolute()
    if not (bundle_dir / TRAIN_CONFIG).is_file():
        raise FileNotFoundError(f"{bundle_dir / TRAIN_CONFIG} does not exist; pass a bundle folder such as "
                                "bundles/ad_resnet3d.")
    if trials < 1:
        raise ValueError(f"--trials must be at least 1, got {trials}.")
    space = load_space(space, bundle_dir)
    tuned_overrides = sorted({token.split("=", 1)[0] for token in overrides} & {f"--{knob}" for knob in space})
    if tuned_overrides:
        raise ConfigError(f"bundle overrides {tuned_overrides} are searched by the tuning; remove them or drop the "
                          "knobs from the search space.")
    recipe_metric, recipe_direction = _recipe_metric(bundle_dir)
    metric, direction = metric or recipe_metric, direction or recipe_direction
    folds = list(range(num_folds)) if folds is None else sorted(set(folds))
    output_dir.mkdir(parents=True, exist_ok=True)
    shared_split = output_dir / SPLIT_TABLE_NAME
    if split_table is not None and not shared_split.is_file():
        write_split_table(read_split_table(split_table), shared_split)

    with warnings.catch_warnings():
        # heartbeats: stable since Optuna 2.9
        warnings.simplefilter("ignore", optuna_module.exceptions.ExperimentalWarning)
        storage = optuna_module.storages.RDBStorage(f"sqlite:///{output_dir / STUDY_DB_NAME}",
                                                    heartbeat_interval=_HEARTBEAT_S, grace_period=_GRACE_S)
    pruners = optuna_module.pruners
    study = optuna_module.create_study(storage=storage, study_name=STUDY_NAME, direction=direction,
                                       load_if_exists=True, sampler=optuna_module.samplers.TPESampler(seed=seed),
                                       pruner=pruners.MedianPruner() if prune else pruners.NopPruner())
    _check_settings(study, {"bundle_dir": str(bundle_dir), "num_folds": num_folds, "folds": folds, "space": space,
                            "overrides": list(overrides), "metric": metric, "direction": direction}, output_dir)

    def objective(trial: optuna.Trial) -> float:
        values = _suggest(trial, space)
        trial_dir = _folder(output_dir, trial)
        trial.set_user_attr("folder", str(trial_dir))
        value = math.nan
        for step, fold in enumerate(folds):
            try:
                summary = run_cross_validation(
                    bundle_dir, trial_dir, num_folds, folds=[fold], overrides=[*overrides, *_overrides(values)],
                    split_table=shared_split if shared_split.is_file() else None,
                    bootstrap_resamples=bootstrap_resamples, seed=seed)
            except FoldFailedError as error:
                trial.set_user_attr(_TRAINING_FAILED, str(error))
                raise
            if not shared_split.is_file():
                write_split_table(read_split_table(trial_dir / SPLIT_TABLE_NAME), shared_split)
            if metric not in summary["validation"]:
                raise ConfigError(f"metric {metric!r} is not among the validation metrics "
                                  f"{sorted(summary['validation'])}; choose --metric from them.")
            value = summary["validation"][metric]["mean"]
            if value is None or not math.isfinite(value):
                trial.set_user_attr(_TRAINING_FAILED, f"validation {metric} is undefined ({value})")
                raise FoldFailedError(f"trial {trial.number}: the validation {metric} of fold {fold} is undefined")
            trial.report(value, step)
            if step < len(folds) - 1 and trial.should_prune():
                raise optuna_module.TrialPruned(f"mean validation {metric} {value:.4f} after {step + 1} fold(s)")
        return value

    def stop_when_done(study: optuna.Study, _: optuna.trial.FrozenTrial) -> None:
        _take_up_interrupted(study, output_dir)
        if _counted(study) >= trials:
            study.stop()

    _take_up_interrupted(study, output_dir)
    if _counted(study) < trials:
        study.optimize(objective, callbacks=[stop_when_done], catch=(FoldFailedError,))
    return _write_results(study, output_dir, metric, direction)


def _write_results(study: optuna.Study, output_dir: Path, metric: str, direction: str) -> dict[str, Any]:
    states = _import_optuna().trial.TrialState
    records = [{"number": trial.number, "state": trial.state.name, "value": trial.value, "params": trial.params,
                "folder": trial.user_attrs.get("folder"), "failure": trial.user_attrs.get(_TRAINING_FAILED)}
               for trial in study.get_trials(deepcopy=False)]
    summary: dict[str, Any] = {"metric": metric, "direction": direction, "settings": study.user_attrs["settings"],
                               "trials": records, "best": None}
    if any(trial.state == states.COMPLETE for trial in study.get_trials(deepcopy=False)):
        best = study.best_trial
        summary["best"] = {"number": best.number, "value": best.value, "params": best.params,
                           "folder": best.user_attrs.get("folder"), "overrides": _overrides(best.params)}
        header = (f"# alz-monai tune: best of {len(records)} trials, mean validation {metric} {best.value:.4f} "
                  f"(trial {best.number}, {best.user_attrs.get('folder')}).\n"
                  f"# Train with it: python -m monai.bundle run training --config_file "
                  f"\"['configs/train.yaml','{output_dir / BEST_CONFIG_NAME}']\"\n")
        atomic_write_text(output_dir / BEST_CONFIG_NAME, header + yaml.safe_dump(best.params, sort_keys=False))
        logger.info("best trial %d: validation %s %.4f with %s", best.number, metric, best.value, best.params)
    else:
        logger.warning("no trial of %s finished yet: no best configuration", output_dir)
    atomic_write_json(output_dir / TUNE_SUMMARY_NAME, summary)
    return summary


def format_tune_table(summary: Mapping[str, Any]) -> str:
    """Every trial's state, validation value and knobs, best first."""
    reverse = summary["direction"] == "maximize"
    done = sorted((trial for trial in summary["trials"] if trial["value"] is not None),
                  key=lambda trial: trial["value"], reverse=reverse)
    others = [trial for trial in summary["trials"] if trial["value"] is None]
    lines = [f"{len(summary['trials'])} trials, mean validation {summary['metric']} over folds "
             f"({summary['direction']})"]
    for trial in [*done, *others]:
        value = "-" if trial["value"] is None else f"{trial['value']:.4f}"
        knobs = ", ".join(f"{knob}={value:.4g}" if isinstance(value, float) else f"{knob}={value}"
                          for knob, value in trial["params"].items())
        lines.append(f"trial {trial['number']:3d}  {trial['state']:8s}  {value:>7s}  {knobs}")
    if summary["best"] is not None:
        lines.append(f"best configuration: {Path(summary['settings']['bundle_dir'])} + "
                     f"{Path(summary['best']['folder']).parent / BEST_CONFIG_NAME}")
    return "\n".join(lines)
