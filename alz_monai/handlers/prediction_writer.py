"""Write per-scan class probabilities of an inference run to a CSV."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from ignite.engine import Engine, Events
from monai.utils import CommonKeys

from alz_monai.data.dataset import PATH_KEY
from alz_monai.fileio import atomic_write_text

__all__ = ["PredictionWriter"]

logger = logging.getLogger(__name__)


class PredictionWriter:
    """Collects softmax probabilities on the device and writes ``image, participant_id, session_id,
    predicted_label, prob_<class>...`` once at the end of the run (atomically)."""

    def __init__(self, class_names: Sequence[str], output_path: str | Path) -> None:
        self.class_names = list(class_names)
        self.output_path = Path(output_path)
        self._probs: list[torch.Tensor] = []
        self._rows: list[tuple[str, str, str]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _collect(self, engine: Engine) -> None:
        logits = engine.state.output[CommonKeys.PRED]
        self._probs.append(torch.softmax(logits.detach().float(), dim=1))
        batch = engine.state.batch
        count = logits.shape[0]
        images = batch[PATH_KEY]
        participants = batch.get("participant_id", [""] * count)
        sessions = batch.get("session_id", [""] * count)
        self._rows.extend(zip(map(str, images), map(str, participants), map(str, sessions)))

    def _write(self, engine: Engine) -> None:
        probs = torch.cat(self._probs).cpu().numpy()
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["image", "participant_id", "session_id", "predicted_label",
                         *[f"prob_{name}" for name in self.class_names]])
        for (image, participant, session), row in zip(self._rows, probs):
            writer.writerow([image, participant, session, self.class_names[int(row.argmax())],
                             *[f"{p:.6f}" for p in row]])
        atomic_write_text(self.output_path, buffer.getvalue())
        logger.info("predictions for %d scans written to %s", len(self._rows), self.output_path)
