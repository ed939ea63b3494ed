"""Per-scan predictions: the one CSV schema every report, inference run, comparison and ensemble reads and writes.

Columns: ``participant_id, session_id, image, true_label, predicted_label, prob_<class>..., checkpoint,
training_epoch, temperature``. ``true_label`` is empty for inference on unlabelled scans; ``checkpoint`` and
``training_epoch`` name the model that made the predictions (empty when unknown); ``temperature`` is the one that
divided its logits (alz_monai.calibration), empty for uncalibrated probabilities.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from alz_monai.errors import DataError
from alz_monai.fileio import atomic_write_text

__all__ = ["PROBABILITY_PREFIX", "Predictions", "check_finite", "load_predictions", "write_predictions"]

PROBABILITY_PREFIX = "prob_"
IDENTITY_COLUMNS = ("participant_id", "session_id", "image")
MODEL_COLUMNS = ("checkpoint", "training_epoch", "temperature")
# Longest list of scans quoted in one message; the rest are counted.
_MAX_LISTED = 10


@dataclasses.dataclass(frozen=True)
class Predictions:
    """One model's scored scans; ``y_true`` indexes ``class_names`` (None for unlabelled scans)."""

    source: str
    class_names: tuple[str, ...]
    images: tuple[str, ...]
    participants: tuple[str, ...]
    sessions: tuple[str, ...]
    y_true: np.ndarray | None
    probs: np.ndarray
    checkpoint: str = ""
    training_epoch: int | None = None
    temperature: float | None = None

    @property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(axis=1)

    @property
    def labels(self) -> np.ndarray:
        """``y_true`` where scores are compared against the truth, which unlabelled predictions lack."""
        if self.y_true is None:
            raise ValueError(f"{self.source} holds no true labels")
        return self.y_true

    @property
    def groups(self) -> tuple[str, ...] | None:
        """Participant of every scan for the bootstrap, or None (scans resampled alone) when any is unknown."""
        return self.participants if all(self.participants) else None

    def reordered(self, images: Sequence[str]) -> Predictions:
        """The same predictions in the order of ``images`` (which must be exactly this set of scans)."""
        position = {image: index for index, image in enumerate(self.images)}
        order = np.array([position[image] for image in images], dtype=np.int64)
        return dataclasses.replace(
            self,
            images=tuple(images),
            participants=tuple(self.participants[i] for i in order),
            sessions=tuple(self.sessions[i] for i in order),
            y_true=None if self.y_true is None else self.y_true[order],
            probs=self.probs[order],
        )


def check_finite(predictions: Predictions) -> None:
    """Refuse predictions with NaN or infinite probabilities, naming the scans: never write them as results."""
    bad = [image for image, row in zip(predictions.images, predictions.probs) if not np.isfinite(row).all()]
    if bad:
        shown = ", ".join(bad[:_MAX_LISTED]) + (f" and {len(bad) - _MAX_LISTED} more" if len(bad) > _MAX_LISTED else "")
        raise DataError([f"{len(bad)} scan(s) gave non-finite class probabilities: {shown}"],
                        source=predictions.source,
                        hint="Their preprocessed volumes hold NaN or Inf: run `alz-monai validate-data` on them, "
                             "fix or remove them, then run again.")


def write_predictions(path: str | Path, predictions: Predictions) -> None:
    """Write predictions in the schema above, atomically; non-finite probabilities are refused."""
    check_finite(predictions)
    labels = ([""] * len(predictions.images) if predictions.y_true is None
              else [predictions.class_names[i] for i in predictions.y_true])
    table = pd.DataFrame({
        "participant_id": predictions.participants,
        "session_id": predictions.sessions,
        "image": predictions.images,
        "true_label": labels,
        "predicted_label": [predictions.class_names[i] for i in predictions.predicted],
    })
    for index, name in enumerate(predictions.class_names):
        table[PROBABILITY_PREFIX + name] = predictions.probs[:, index]
    table["checkpoint"] = predictions.checkpoint
    table["training_epoch"] = "" if predictions.training_epoch is None else str(predictions.training_epoch)
    table["temperature"] = "" if predictions.temperature is None else f"{predictions.temperature:.6g}"
    atomic_write_text(path, table.to_csv(index=False, float_format="%.6f", lineterminator="\n"))


def load_predictions(path: str | Path, labelled: bool = True) -> Predictions:
    """Read a predictions CSV, checked; ``labelled`` requires a true label on every row."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; evaluate the run on this split first.")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    class_names = tuple(column[len(PROBABILITY_PREFIX):] for column in table.columns
                        if column.startswith(PROBABILITY_PREFIX))
    required = ("image", "true_label") if labelled else ("image",)
    problems = [f"missing column {column!r}" for column in required if column not in table.columns]
    if len(class_names) < 2:
        problems.append(
            f"found {len(class_names)} {PROBABILITY_PREFIX}<class> column(s), need one per class (2 or more)")
    if problems:
        raise DataError(problems, source=str(path),
                        hint="Pass a <split>_predictions.csv written by a training or evaluation run.")
    # Data rows start on line 2 of the file.
    for image, rows in table.groupby("image", sort=False).groups.items():
        if len(rows) > 1:
            problems.append(f"{image}: listed on lines {', '.join(str(row + 2) for row in rows)}")
    if labelled:
        unknown = ~table["true_label"].isin(class_names)
        problems += [f"line {row + 2}: true_label {label!r} is not one of {list(class_names)}"
                     for row, label in table.loc[unknown, "true_label"].items()]
    probability_columns = [PROBABILITY_PREFIX + name for name in class_names]
    probs = table[probability_columns].apply(pd.to_numeric, errors="coerce")
    for row in np.flatnonzero(probs.isna().any(axis=1).to_numpy()):
        problems.append(f"line {row + 2}: probabilities {table.loc[row, probability_columns].tolist()} are not numbers")
    if problems:
        raise DataError(problems, source=str(path), hint="Fix the listed rows or rerun the evaluation.")
    label_index = {name: index for index, name in enumerate(class_names)}
    optional = {column: tuple(table[column]) if column in table.columns else ("",) * len(table)
                for column in (*IDENTITY_COLUMNS, *MODEL_COLUMNS)}
    epochs = {value for value in optional["training_epoch"] if value}
    temperatures = {value for value in optional["temperature"] if value}
    if len(temperatures) > 1:
        raise DataError([f"the rows hold {len(temperatures)} temperatures ({', '.join(sorted(temperatures))})"],
                        source=str(path), hint="One file holds the predictions of one model: rerun the evaluation.")
    return Predictions(
        source=str(path),
        class_names=class_names,
        images=tuple(table["image"]),
        participants=optional["participant_id"],
        sessions=optional["session_id"],
        y_true=table["true_label"].map(label_index).to_numpy(dtype=np.int64) if labelled else None,
        probs=probs.to_numpy(dtype=np.float64),
        checkpoint=next(iter({value for value in optional["checkpoint"] if value}), ""),
        training_epoch=int(next(iter(epochs))) if len(epochs) == 1 else None,
        temperature=float(next(iter(temperatures))) if temperatures else None,
    )
