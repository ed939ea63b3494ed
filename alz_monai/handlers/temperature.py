"""Temperature scaling in an evaluator: the logits of the run's calibrated model divided by its temperature."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from ignite.engine import Engine, Events
from monai.utils import CommonKeys

from alz_monai.calibration import run_temperature

__all__ = ["ApplyTemperature", "Calibration", "calibration_of"]

logger = logging.getLogger(__name__)

#: Attribute of ``engine.state`` holding the :class:`Calibration` of the running evaluation.
STATE_ATTRIBUTE = "calibration"


@dataclass(frozen=True)
class Calibration:
    """The temperature that divides this evaluation's logits (None: probabilities as the network gives them)."""

    temperature: float | None
    reason: str


def calibration_of(engine: Engine) -> Calibration | None:
    """What :class:`ApplyTemperature` decided for ``engine`` (None where none is attached)."""
    return getattr(engine.state, STATE_ATTRIBUTE, None)


class ApplyTemperature:
    """Looks up, when the evaluator starts, the temperature ``run_dir`` recorded for the model file at
    ``model_path`` (checked by sha256, so another checkpoint is never scaled with it) and divides each batch's
    logits by it. Attach it before the report handlers: ignite calls handlers in the order they were attached."""

    def __init__(self, run_dir: str | Path, model_path: str | Path, enabled: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.model_path = Path(model_path)
        self.enabled = enabled

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._look_up)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._scale)

    def _look_up(self, engine: Engine) -> None:
        if self.enabled:
            calibration = Calibration(*run_temperature(self.run_dir, self.model_path))
        else:
            calibration = Calibration(None, "calibrate is false")
        setattr(engine.state, STATE_ATTRIBUTE, calibration)
        if calibration.temperature is None:
            logger.info("uncalibrated probabilities: %s", calibration.reason)
        else:
            logger.info("logits divided by the temperature %.4f (%s)", calibration.temperature, calibration.reason)

    def _scale(self, engine: Engine) -> None:
        calibration = calibration_of(engine)
        if calibration is None or calibration.temperature is None:
            return
        output = cast(dict[str, Any], engine.state.output)  # ignite annotates State.output as int: MONAI's dict
        output[CommonKeys.PRED] = output[CommonKeys.PRED] / calibration.temperature
