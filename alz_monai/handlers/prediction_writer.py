"""Write per-scan class probabilities of an inference run (the predictions CSV schema, unlabelled)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch
from ignite.engine import Engine, Events
from monai.utils import CommonKeys

from alz_monai.handlers.temperature import calibration_of
from alz_monai.layout import PATH_KEY
from alz_monai.predictions import Predictions, write_predictions
from alz_monai.run_config import describe_model

__all__ = ["PredictionWriter"]

logger = logging.getLogger(__name__)


class PredictionWriter:
    """Collects softmax probabilities on the device and writes them once at the end of the run (atomically),
    naming the model (``model_path``) that made them; scans with non-finite probabilities are refused by name."""

    def __init__(self, class_names: Sequence[str], output_path: str | Path,
                 model_path: str | Path | None = None) -> None:
        self.class_names = list(class_names)
        self.output_path = Path(output_path)
        self.model_path = model_path
        self._probs: list[torch.Tensor] = []
        self._rows: list[tuple[str, str, str]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _collect(self, engine: Engine) -> None:
        # ignite annotates State.output and State.batch as int: they are MONAI's dicts
        logits = cast(dict[str, Any], engine.state.output)[CommonKeys.PRED]
        self._probs.append(torch.softmax(logits.detach().float(), dim=1))
        batch = cast(dict[str, Any], engine.state.batch)
        count = logits.shape[0]
        images = batch[PATH_KEY]
        participants = batch.get("participant_id", [""] * count)
        sessions = batch.get("session_id", [""] * count)
        self._rows.extend(zip(map(str, images), map(str, participants), map(str, sessions)))

    def _write(self, engine: Engine) -> None:
        images, participants, sessions = (tuple(column) for column in zip(*self._rows))
        model = describe_model(self.model_path) if self.model_path is not None else {}
        applied = calibration_of(engine)
        predictions = Predictions(
            source=str(self.output_path), class_names=tuple(self.class_names), images=images,
            participants=participants, sessions=sessions, y_true=None,
            probs=torch.cat(self._probs).cpu().double().numpy(), checkpoint=model.get("checkpoint", ""),
            training_epoch=model.get("training_epoch"), temperature=applied.temperature if applied else None)
        write_predictions(self.output_path, predictions)
        logger.info("predictions for %d scans written to %s", len(images), self.output_path)
