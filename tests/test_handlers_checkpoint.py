"""RunCheckpointer (atomic, resumable checkpoints and best model) and RandomStateRecorder."""

from __future__ import annotations

import io
import json
import logging
import math
import random
import threading
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import ValidationHandler
from monai.transforms import Compose, OneOf, RandFlipd, RandGaussianNoised, RandRotate90d, RandSpatialCropd

import alz_monai.handlers.checkpoint as checkpoint_module
from alz_monai.handlers.checkpoint import GradScalerState, RunCheckpointer
from alz_monai.handlers.random_state import RandomStateRecorder, find_random_states
from alz_monai.handlers.resume import RunResumer

BATCHES = [
    {"image": torch.randn(3, 4, generator=torch.Generator().manual_seed(seed)), "label": torch.tensor([0, 1, 1])}
    for seed in range(2)
]


class TinyRun:
    """A Linear model trained by MONAI's SupervisedTrainer, validated by an evaluator whose key metric is
    scripted per trainer epoch, and checkpointed as in the bundles."""

    def __init__(
        self,
        save_dir: Path,
        max_epochs: int,
        metric_by_epoch: Mapping[int, float] | None = None,
        resume: bool = False,
        key_metric_name: str = "auc",
        key_metric_mode: str = "max",
        save_freq: int = 0,
        background: bool = False,
    ) -> None:
        torch.manual_seed(0)
        self.network = torch.nn.Linear(4, 2)
        self.optimizer = torch.optim.SGD(self.network.parameters(), lr=0.1, momentum=0.9)
        self.trainer = SupervisedTrainer(
            device="cpu",
            max_epochs=max_epochs,
            train_data_loader=BATCHES,
            network=self.network,
            optimizer=self.optimizer,
            loss_function=torch.nn.CrossEntropyLoss(),
        )
        self.weights_by_epoch: dict[int, dict[str, torch.Tensor]] = {}
        self.trainer.add_event_handler(Events.EPOCH_COMPLETED, self._snapshot)
        save_dict = {"network": self.network, "optimizer": self.optimizer}
        self.evaluator = None
        if metric_by_epoch is not None:
            self.evaluator = SupervisedEvaluator(device="cpu", val_data_loader=BATCHES[:1], network=self.network)
            self.evaluator.add_event_handler(
                Events.EPOCH_COMPLETED,
                lambda engine: engine.state.metrics.update(
                    {key_metric_name: metric_by_epoch[engine.state.epoch], "accuracy": torch.tensor(0.5)}
                ),
            )
        self.checkpointer = RunCheckpointer(
            save_dir,
            save_dict,
            self.network,
            evaluator=self.evaluator,
            key_metric_name=key_metric_name,
            key_metric_mode=key_metric_mode,
            save_freq=save_freq,
            background=background,
        )
        if resume:
            # RunResumer adds the trainer, its scaler and the checkpointer's record to what it loads
            RunResumer(save_dir / "checkpoint_latest.pt", save_dict, self.checkpointer).attach(self.trainer)
        if self.evaluator is not None:
            ValidationHandler(interval=1, validator=self.evaluator).attach(self.trainer)
        self.checkpointer.attach(self.trainer)

    def _snapshot(self, trainer: SupervisedTrainer) -> None:
        self.weights_by_epoch[trainer.state.epoch] = {k: v.clone() for k, v in self.network.state_dict().items()}


def _load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def _assert_same_weights(actual: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0)


@pytest.mark.parametrize("background", [False, True], ids=["in_training_thread", "in_background"])
def test_files_are_written_and_load_weights_only(tmp_path: Path, background: bool) -> None:
    run = TinyRun(tmp_path, max_epochs=3, metric_by_epoch={1: 0.6, 2: 0.5, 3: 0.7}, save_freq=2, background=background)
    run.trainer.run()

    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == [
        "best_metric.json",
        "checkpoint_epoch=2.pt",
        "checkpoint_final.pt",
        "checkpoint_latest.pt",
        "model_best.pt",
    ]
    latest = _load(tmp_path / "checkpoint_latest.pt")
    assert set(latest) == {"network", "optimizer", "trainer", "scaler", "checkpointer"}
    assert latest["network"]._metadata == run.network.state_dict()._metadata  # module versions kept
    assert (latest["trainer"]["iteration"], latest["trainer"]["epoch_length"]) == (6, 2)  # 3 epochs done
    assert _load(tmp_path / "checkpoint_epoch=2.pt")["trainer"]["iteration"] == 4
    assert _load(tmp_path / "checkpoint_final.pt")["trainer"]["iteration"] == 6
    _assert_same_weights(latest["network"], run.weights_by_epoch[3])
    assert latest["checkpointer"]["best_epoch"] == 3
    _assert_same_weights(_load(tmp_path / "model_best.pt"), run.weights_by_epoch[3])
    record = json.loads((tmp_path / "best_metric.json").read_text())
    assert record == {"metric": "auc", "value": 0.7, "epoch": 3, "metrics": {"auc": 0.7, "accuracy": 0.5}}


def test_background_write_saves_the_state_of_its_epoch_while_training_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The epoch-1 write is held until epoch 2 has taken an optimizer step: the file must still hold epoch 1's
    weights, optimizer moments and counters, not the live (changed) ones."""
    run = TinyRun(tmp_path, max_epochs=2, background=True)
    stepped_in_epoch_2 = threading.Event()
    run.trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda engine: stepped_in_epoch_2.set() if engine.state.epoch == 2 else None
    )
    written_in_epoch_2: list[dict] = []
    real_save = checkpoint_module.atomic_torch_save

    def held_save(state: dict, path: Path) -> None:
        if state["trainer"]["iteration"] == 2:  # the end of epoch 1 (2 batches per epoch)
            assert stepped_in_epoch_2.wait(timeout=60), "training did not go on during the background write"
            written_in_epoch_2.append(state)
        real_save(state, path)

    monkeypatch.setattr(checkpoint_module, "atomic_torch_save", held_save)
    expected_momentum = {}
    run.trainer.add_event_handler(
        Events.EPOCH_COMPLETED(once=1),
        lambda engine: expected_momentum.update(
            {k: v["momentum_buffer"].clone() for k, v in run.optimizer.state_dict()["state"].items()}
        ),
    )
    run.trainer.run()

    (state,) = written_in_epoch_2
    assert (state["trainer"]["iteration"], state["trainer"]["epoch_length"]) == (2, 2)
    _assert_same_weights(state["network"], run.weights_by_epoch[1])
    assert not torch.equal(run.weights_by_epoch[1]["weight"], run.weights_by_epoch[2]["weight"])
    for key, momentum in expected_momentum.items():
        torch.testing.assert_close(state["optimizer"]["state"][key]["momentum_buffer"], momentum, rtol=0, atol=0)
    _assert_same_weights(_load(tmp_path / "checkpoint_latest.pt")["network"], run.weights_by_epoch[2])


def test_background_write_error_stops_training_with_a_clear_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def failing_save(state: dict, path: Path) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint_module, "atomic_torch_save", failing_save)
    run = TinyRun(tmp_path, max_epochs=3, background=True)
    epochs_started: list[int] = []
    run.trainer.add_event_handler(Events.EPOCH_STARTED, lambda engine: epochs_started.append(engine.state.epoch))
    with caplog.at_level(logging.ERROR, logger="alz_monai.handlers.checkpoint"), pytest.raises(
        RuntimeError, match=r"writing a checkpoint into .* failed: .*No space left on device"
    ):
        run.trainer.run()
    assert "No space left on device" in caplog.text  # logged by the writer thread as it fails
    assert epochs_started == [1, 2]  # epoch 1's failed write surfaces when epoch 2 saves
    assert run.checkpointer._writer is None


@pytest.mark.parametrize(
    ("mode", "metric_by_epoch", "best_epoch"),
    [
        ("max", {1: 0.7, 2: math.nan, 3: 0.6, 4: 0.65}, 1),
        ("max", {1: math.nan, 2: 0.6, 3: 0.8, 4: 0.8}, 3),
        ("min", {1: 0.5, 2: 0.4, 3: math.nan, 4: 0.45}, 2),
    ],
)
def test_best_model_only_on_improvement(
    tmp_path: Path, mode: str, metric_by_epoch: dict[int, float], best_epoch: int
) -> None:
    run = TinyRun(tmp_path, max_epochs=4, metric_by_epoch=metric_by_epoch, key_metric_name="loss", key_metric_mode=mode)
    run.trainer.run()

    _assert_same_weights(_load(tmp_path / "model_best.pt"), run.weights_by_epoch[best_epoch])
    record = json.loads((tmp_path / "best_metric.json").read_text())
    assert (record["metric"], record["epoch"], record["value"]) == ("loss", best_epoch, metric_by_epoch[best_epoch])
    assert (run.checkpointer.best_epoch, run.checkpointer.best_value) == (best_epoch, metric_by_epoch[best_epoch])


def test_ddp_style_wrapper_is_unwrapped_in_best_model(tmp_path: Path) -> None:
    network = torch.nn.Linear(4, 2)
    wrapped = torch.nn.DataParallel(network)
    run = TinyRun(tmp_path, max_epochs=1, metric_by_epoch={1: 0.5})
    run.checkpointer.network = wrapped
    run.trainer.run()
    assert set(_load(tmp_path / "model_best.pt")) == {"weight", "bias"}


def test_missing_key_metric_is_a_clear_error(tmp_path: Path) -> None:
    run = TinyRun(tmp_path, max_epochs=1, metric_by_epoch={1: 0.5})
    run.checkpointer.key_metric_name = "balanced_accuracy"
    with pytest.raises(KeyError, match=r"lack the key metric 'balanced_accuracy'.*set key_metric_name"):
        run.trainer.run()


def test_disabled_checkpointer_writes_nothing(tmp_path: Path) -> None:
    network = torch.nn.Linear(1, 1)
    checkpointer = RunCheckpointer(tmp_path / "ckpt", {"network": network}, network, enabled=False)
    run = TinyRun(tmp_path / "other", max_epochs=1)
    checkpointer.attach(run.trainer)
    run.trainer.run()
    assert not (tmp_path / "ckpt").exists()


def test_invalid_arguments_are_refused(tmp_path: Path) -> None:
    network = torch.nn.Linear(1, 1)
    with pytest.raises(ValueError, match="key_metric_mode must be one of"):
        RunCheckpointer(tmp_path, {"network": network}, network, key_metric_mode="maximum")
    with pytest.raises(ValueError, match="save_freq"):
        RunCheckpointer(tmp_path, {"network": network}, network, save_freq=-1)
    with pytest.raises(TypeError, match=r"\['epochs'\] have no state_dict"):
        RunCheckpointer(tmp_path, {"network": network, "epochs": 3}, network)
    with pytest.raises(ValueError, match="reserved"):
        RunCheckpointer(tmp_path, {"network": network, "checkpointer": network}, network)


def test_resume_restores_progress_and_best_record(tmp_path: Path) -> None:
    first = TinyRun(tmp_path, max_epochs=2, metric_by_epoch={1: 0.8, 2: 0.6})
    first.trainer.run()

    resumed = TinyRun(tmp_path, max_epochs=4, metric_by_epoch={3: 0.7, 4: 0.75}, resume=True)
    started_at: list[tuple[int, int]] = []
    resumed.trainer.add_event_handler(
        Events.STARTED, lambda engine: started_at.append((engine.state.epoch, engine.state.iteration))
    )
    resumed.trainer.run()

    assert started_at == [(2, 4)]
    assert sorted(resumed.weights_by_epoch) == [3, 4]
    # 0.7 and 0.75 are below the restored best (0.8 at epoch 1): the epoch-1 model stays the best
    assert (resumed.checkpointer.best_epoch, resumed.checkpointer.best_value) == (1, 0.8)
    _assert_same_weights(_load(tmp_path / "model_best.pt"), first.weights_by_epoch[1])
    assert _load(tmp_path / "checkpoint_latest.pt")["checkpointer"]["best_epoch"] == 1

    uninterrupted = TinyRun(tmp_path / "uninterrupted", max_epochs=4)
    uninterrupted.trainer.run()
    _assert_same_weights(resumed.network.state_dict(), uninterrupted.network.state_dict())


def test_crash_during_save_keeps_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crashing_save(obj: object, handle: io.BufferedWriter) -> None:
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("simulated crash in the middle of torch.save")

    run = TinyRun(tmp_path, max_epochs=3)
    run.trainer.add_event_handler(
        Events.EPOCH_STARTED(once=2), lambda: monkeypatch.setattr(torch, "save", crashing_save)
    )
    with pytest.raises(OSError, match="simulated crash"):
        run.trainer.run()
    monkeypatch.undo()

    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoint_latest.pt"]
    latest = _load(tmp_path / "checkpoint_latest.pt")
    assert latest["trainer"]["iteration"] == 2  # epoch 1 of 2 iterations
    _assert_same_weights(latest["network"], run.weights_by_epoch[1])


def test_grad_scaler_state_follows_the_scaler_that_run_rebuilds() -> None:
    trainer = SimpleNamespace(scaler=torch.amp.GradScaler("cpu", init_scale=1024.0))
    entry = GradScalerState(trainer)
    buffer = io.BytesIO()
    torch.save(entry.state_dict(), buffer)
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0)  # as MONAI's Trainer.run() does
    entry.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    assert trainer.scaler.get_scale() == 1024.0

    trainer.scaler = None  # training without AMP
    assert entry.state_dict() == {}
    entry.load_state_dict({"scale": 8.0})  # an AMP checkpoint resumed without AMP: nothing to restore
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0)
    entry.load_state_dict({})  # a checkpoint saved without AMP leaves the new scaler as built
    assert trainer.scaler.get_scale() == 2.0


def _pipeline() -> Compose:
    return Compose(
        [
            RandGaussianNoised(keys="image", prob=1.0),
            OneOf([RandFlipd(keys="image", prob=1.0, spatial_axis=0), RandRotate90d(keys="image", prob=1.0)]),
            RandSpatialCropd(keys="image", roi_size=(4, 4, 4), random_size=True),
        ]
    ).set_random_state(seed=3)


def _draw(pipeline: Compose, generator: torch.Generator) -> list:
    image = torch.arange(6**3, dtype=torch.float32).reshape(1, 6, 6, 6)
    return [
        torch.rand(3),
        np.random.rand(3),
        random.random(),
        random.gauss(0, 1),  # Python keeps the second Box-Muller value as state
        np.random.standard_normal(),  # numpy does too
        pipeline({"image": image})["image"],
        torch.rand(3, generator=generator),
    ]


def test_random_state_round_trip_replays_every_stream() -> None:
    pipeline = _pipeline()
    generator = torch.Generator().manual_seed(7)
    recorder = RandomStateRecorder(pipeline, generators=[generator])
    _draw(pipeline, generator)  # move every stream away from its seed

    buffer = io.BytesIO()
    torch.save(recorder.state_dict(), buffer)
    first = _draw(pipeline, generator)
    second = _draw(pipeline, generator)
    recorder.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    replayed = _draw(pipeline, generator)

    assert not torch.equal(first[0], second[0])
    for original, again in zip(first, replayed):
        if isinstance(original, torch.Tensor):
            assert original.shape == again.shape and torch.equal(original, again)
        else:
            np.testing.assert_array_equal(original, again)


def test_random_states_are_found_in_nested_and_inner_transforms() -> None:
    pipeline = _pipeline()
    states = find_random_states(pipeline)
    noise = pipeline.transforms[0]
    one_of = pipeline.transforms[1]
    expected = [pipeline.R, noise.R, noise.rand_gaussian_noise.R, one_of.R, one_of.transforms[0].R]
    assert all(any(state is found for found in states) for state in expected)
    assert len({id(state) for state in states}) == len(states)
    assert find_random_states([pipeline, pipeline]) == states


def test_random_state_refuses_a_changed_pipeline() -> None:
    state = RandomStateRecorder(_pipeline()).state_dict()
    with pytest.raises(ValueError, match="pipeline changed"):
        RandomStateRecorder(RandGaussianNoised(keys="image")).load_state_dict(state)
    with pytest.raises(TypeError, match="torch.Generator"):
        RandomStateRecorder(generators=[np.random.default_rng()])
