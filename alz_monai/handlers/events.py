"""Custom Ignite events that let handlers cooperate without knowing each other."""

from ignite.engine import Engine, EventEnum

__all__ = ["RunEvents", "register_run_events"]


class RunEvents(EventEnum):
    """Fired on the validation evaluator by the checkpointer when the key metric improves, after it saved
    the best model, so that report handlers write their 'best' artefacts for exactly that epoch."""

    BEST_METRIC_IMPROVED = "best_metric_improved"


def register_run_events(engine: Engine) -> None:
    """Register :class:`RunEvents` on ``engine`` once, whichever handler gets there first."""
    if RunEvents.BEST_METRIC_IMPROVED not in engine._allowed_events:
        engine.register_events(*RunEvents)
