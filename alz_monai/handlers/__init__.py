"""Ignite handlers of alz-monai, one per file, each with ``attach(engine)``."""

from alz_monai.handlers.broadcast_buffers import BroadcastBuffers
from alz_monai.handlers.checkpoint import GradScalerState, RunCheckpointer, unwrap_network
from alz_monai.handlers.classification_report import ClassificationReport
from alz_monai.handlers.entropy_lr import EntropyAdaptiveLR
from alz_monai.handlers.events import RunEvents
from alz_monai.handlers.gradient_clipping import GradientClipping
from alz_monai.handlers.loss_scaling import SkipBFloat16LossScaling
from alz_monai.handlers.prediction_writer import PredictionWriter
from alz_monai.handlers.random_state import RandomStateRecorder
from alz_monai.handlers.resume import RunResumer
from alz_monai.handlers.temperature import ApplyTemperature, Calibration, calibration_of
from alz_monai.handlers.tensorboard import (
    EpochLossLogger,
    HistogramLogger,
    HParamsLogger,
    LearningRateLogger,
    TensorBoardResume,
)

__all__ = [
    "ApplyTemperature", "BroadcastBuffers", "Calibration", "ClassificationReport", "EntropyAdaptiveLR",
    "EpochLossLogger", "HParamsLogger", "GradScalerState", "GradientClipping", "HistogramLogger", "LearningRateLogger",
    "PredictionWriter", "RandomStateRecorder", "RunCheckpointer", "RunEvents", "RunResumer", "SkipBFloat16LossScaling",
    "TensorBoardResume", "calibration_of", "unwrap_network",
]
