"""TensorBoard handlers: a killed and resumed run shows the curves of an uninterrupted one."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import CheckpointLoader, LrScheduleHandler, TensorBoardStatsHandler, ValidationHandler, from_engine
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.compat.proto.event_pb2 import SessionLog
from tensorboard.plugins.hparams import plugin_data_pb2
from torch.utils.tensorboard import SummaryWriter

from alz_monai.handlers.checkpoint import RunCheckpointer
from alz_monai.handlers.tensorboard import (
    EPOCH_LOSS_TAG,
    EpochLossLogger,
    HistogramLogger,
    HParamsLogger,
    LearningRateLogger,
    TensorBoardResume,
)

BATCHES = [
    {"image": torch.randn(3, 4, generator=torch.Generator().manual_seed(seed)), "label": torch.tensor([0, 1, 1])}
    for seed in range(2)
]
AUC_BY_EPOCH = {1: 0.6, 2: 0.7, 3: 0.65, 4: 0.8}


class SimulatedKill(RuntimeError):
    pass


def _train(output: Path, max_epochs: int, resume: bool = False, killed_in_epoch: int | None = None) -> None:
    """The bundle's handler order; ``killed_in_epoch``: die after that epoch's logging, before its checkpoint."""
    torch.manual_seed(0)
    network = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    train_writer = SummaryWriter(str(output / "tensorboard" / "train"))
    val_writer = SummaryWriter(str(output / "tensorboard" / "val"))
    trainer = SupervisedTrainer(
        device="cpu",
        max_epochs=max_epochs,
        train_data_loader=BATCHES,
        network=network,
        optimizer=optimizer,
        loss_function=torch.nn.CrossEntropyLoss(),
    )
    evaluator = SupervisedEvaluator(device="cpu", val_data_loader=BATCHES[:1], network=network)
    evaluator.add_event_handler(
        Events.EPOCH_COMPLETED, lambda engine: engine.state.metrics.update(auc=AUC_BY_EPOCH[engine.state.epoch])
    )
    TensorBoardStatsHandler(val_writer, iteration_log=False).attach(evaluator)
    EpochLossLogger(val_writer, "validation", torch.nn.CrossEntropyLoss()).attach(evaluator)
    save_dict = {"network": network, "optimizer": optimizer, "lr_scheduler": scheduler, "trainer": trainer}
    checkpointer = RunCheckpointer(output / "checkpoints", save_dict, network, evaluator=evaluator)

    if resume:
        load_dict = {**save_dict, "checkpointer": checkpointer}
        CheckpointLoader(str(output / "checkpoints" / "checkpoint_latest.pt"), load_dict).attach(trainer)
    TensorBoardResume(train_writer, step="iteration").attach(trainer)
    TensorBoardResume(val_writer, step="epoch").attach(trainer)
    LrScheduleHandler(scheduler, print_lr=False).attach(trainer)
    ValidationHandler(interval=1, validator=evaluator).attach(trainer)
    if killed_in_epoch is not None:

        @trainer.on(Events.EPOCH_COMPLETED(once=killed_in_epoch))
        def _die() -> None:
            raise SimulatedKill

    checkpointer.attach(trainer)
    TensorBoardStatsHandler(
        train_writer, epoch_log=False, output_transform=from_engine(["loss"], first=True)
    ).attach(trainer)
    LearningRateLogger(train_writer, optimizer).attach(trainer)
    EpochLossLogger(val_writer, "train").attach(trainer)
    HistogramLogger(val_writer, network).attach(trainer)
    try:
        trainer.run()
    finally:
        train_writer.close()
        val_writer.close()


def _curves(log_dir: Path) -> dict[str, list[tuple[int, float | None]]]:
    """(step, value) per scalar tag and (step, None) per histogram tag, as TensorBoard shows them."""
    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0})
    accumulator.Reload()
    curves: dict[str, list[tuple[int, float | None]]] = {}
    for tag in accumulator.Tags()["scalars"]:
        curves[tag] = [(event.step, event.value) for event in accumulator.Scalars(tag)]
    for tag in accumulator.Tags()["histograms"]:
        curves[tag] = [(event.step, None) for event in accumulator.Histograms(tag)]
    return curves


def _start_events(log_dir: Path) -> list[int]:
    return [
        event.step
        for path in sorted(log_dir.glob("events.out.tfevents.*"))
        for event in EventFileLoader(str(path)).Load()
        if event.HasField("session_log") and event.session_log.status == SessionLog.START
    ]


def _wait_for_next_second() -> None:
    """Event files are named by the second they were opened in; TensorBoard reads them in name order."""
    time.sleep(1.02 - time.time() % 1)


def test_killed_and_resumed_run_matches_uninterrupted_run(tmp_path: Path) -> None:
    killed = tmp_path / "killed"
    with pytest.raises(SimulatedKill):
        _train(killed, max_epochs=4, killed_in_epoch=3)
    assert _curves(killed / "tensorboard" / "train")["lr"][-1][0] == 6  # epoch 3 reached TensorBoard
    _wait_for_next_second()
    _train(killed, max_epochs=4, resume=True)
    uninterrupted = tmp_path / "uninterrupted"
    _train(uninterrupted, max_epochs=4)

    for writer, steps in (("train", list(range(1, 9))), ("val", [1, 2, 3, 4])):
        resumed_curves = _curves(killed / "tensorboard" / writer)
        expected_curves = _curves(uninterrupted / "tensorboard" / writer)
        assert resumed_curves == expected_curves
        for tag, points in resumed_curves.items():
            assert [step for step, _ in points] == steps, tag
    assert set(_curves(killed / "tensorboard" / "train")) == {"Loss", "lr"}
    assert set(_curves(killed / "tensorboard" / "val")) == {
        "auc",
        f"{EPOCH_LOSS_TAG}/train",
        f"{EPOCH_LOSS_TAG}/validation",
        "parameters/weight",
        "parameters/bias",
        "gradients/weight",
        "gradients/bias",
    }
    # resumed from the epoch-2 checkpoint: events from iteration 5 / epoch 3 on are superseded
    assert _start_events(killed / "tensorboard" / "train") == [5]
    assert _start_events(killed / "tensorboard" / "val") == [3]
    assert _start_events(uninterrupted / "tensorboard" / "train") == []


def _steps_and_values(points: list[tuple[int, float | None]]) -> tuple[list[int], list[float | None]]:
    return [step for step, _ in points], [value for _, value in points]


def test_learning_rate_logger_tags_each_group(tmp_path: Path) -> None:
    first, second = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [first], "lr": 0.1, "name": "backbone"}, {"params": [second], "lr": 0.01}])
    engine = Engine(lambda engine, batch: None)
    engine.add_event_handler(
        Events.ITERATION_STARTED, lambda engine: optimizer.param_groups[0].update(lr=0.1 * engine.state.iteration)
    )
    with SummaryWriter(str(tmp_path / "iterations")) as writer:
        LearningRateLogger(writer, optimizer, tag="learning_rate").attach(engine)
        engine.run([0, 1, 2], max_epochs=1)
    curves = _curves(tmp_path / "iterations")
    assert set(curves) == {"learning_rate/backbone", "learning_rate/group1"}
    steps, values = _steps_and_values(curves["learning_rate/backbone"])
    assert steps == [1, 2, 3] and values == pytest.approx([0.1, 0.2, 0.3])
    steps, values = _steps_and_values(curves["learning_rate/group1"])
    assert steps == [1, 2, 3] and values == pytest.approx([0.01, 0.01, 0.01])

    single = torch.optim.SGD([first], lr=0.5)
    engine = Engine(lambda engine, batch: None)
    with SummaryWriter(str(tmp_path / "epochs")) as writer:
        LearningRateLogger(writer, single, epoch_level=True).attach(engine)
        engine.run([0, 1, 2], max_epochs=2)
    assert _curves(tmp_path / "epochs") == {"lr": [(1, 0.5), (2, 0.5)]}


def test_histograms_every_interval_with_last_iteration_gradients(tmp_path: Path) -> None:
    network = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    trainer = SupervisedTrainer(
        device="cpu",
        max_epochs=3,
        train_data_loader=BATCHES,
        network=network,
        optimizer=optimizer,
        loss_function=torch.nn.CrossEntropyLoss(),
    )
    last_gradient_sums: dict[int, float] = {}
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED,
        lambda engine: last_gradient_sums.update({engine.state.epoch: float(network.weight.grad.sum())}),
    )
    with SummaryWriter(str(tmp_path)) as writer:
        HistogramLogger(writer, network, interval=2).attach(trainer)
        trainer.run()
    accumulator = EventAccumulator(str(tmp_path), size_guidance={"histograms": 0})
    accumulator.Reload()
    assert sorted(accumulator.Tags()["histograms"]) == [
        "gradients/bias",
        "gradients/weight",
        "parameters/bias",
        "parameters/weight",
    ]
    (gradient,) = accumulator.Histograms("gradients/weight")
    assert gradient.step == 2
    assert gradient.histogram_value.num == network.weight.numel()
    assert gradient.histogram_value.sum == pytest.approx(last_gradient_sums[2], abs=1e-6)


def test_epoch_losses_are_the_means_of_the_training_and_validation_losses(tmp_path: Path) -> None:
    torch.manual_seed(0)
    network = torch.nn.Linear(4, 2)
    loss_function = torch.nn.CrossEntropyLoss()
    trainer = SupervisedTrainer(device="cpu", max_epochs=2, train_data_loader=BATCHES, network=network,
                                optimizer=torch.optim.SGD(network.parameters(), lr=0.1), loss_function=loss_function,
                                decollate=False)  # as the bundles run it; the evaluator decollates its output
    evaluator = SupervisedEvaluator(device="cpu", val_data_loader=BATCHES, network=network)
    iteration_losses: dict[int, list[float]] = {}
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda engine: iteration_losses.setdefault(
        engine.state.epoch, []).append(float(engine.state.output["loss"].detach())))
    validation_losses = {}

    def reference_validation_loss(engine: Engine) -> None:
        with torch.no_grad():
            losses = [float(loss_function(network(batch["image"]), batch["label"])) for batch in BATCHES]
        validation_losses[engine.state.epoch] = sum(losses) / len(losses)

    with SummaryWriter(str(tmp_path)) as writer:
        EpochLossLogger(writer, "train").attach(trainer)
        ValidationHandler(interval=1, validator=evaluator).attach(trainer)
        EpochLossLogger(writer, "validation", loss_function).attach(evaluator)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, reference_validation_loss)
        EpochLossLogger.add_layout(writer)
        trainer.run()
    curves = _curves(tmp_path)
    steps, values = _steps_and_values(curves[f"{EPOCH_LOSS_TAG}/train"])
    assert steps == [1, 2]
    assert values == pytest.approx([sum(iteration_losses[e]) / len(iteration_losses[e]) for e in steps], rel=1e-5)
    steps, values = _steps_and_values(curves[f"{EPOCH_LOSS_TAG}/validation"])
    assert steps == [1, 2] and values == pytest.approx([validation_losses[1], validation_losses[2]], rel=1e-5)
    assert values[1] != pytest.approx(values[0])  # the network learnt between the two validations
    layouts = [event for path in tmp_path.glob("events.out.tfevents.*") for event in EventFileLoader(str(path)).Load()
               if event.HasField("summary") and any(v.tag == "custom_scalars__config__" for v in event.summary.value)]
    assert len(layouts) == 1


def _hparams_plugin_data(log_dir: Path) -> dict[str, plugin_data_pb2.HParamsPluginData]:
    found = {}
    for path in log_dir.glob("events.out.tfevents.*"):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value if event.HasField("summary") else []:
                if value.metadata.plugin_data.plugin_name == "hparams":
                    found[value.tag] = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
    return found


def test_hparams_are_written_for_tensorboards_hparams_tab(tmp_path: Path) -> None:
    engine = Engine(lambda engine, batch: None)
    with SummaryWriter(str(tmp_path)) as writer:
        HParamsLogger(writer, {"network": "resnet18", "learning_rate": 1e-4, "amp": False, "spatial_size": [32, 32],
                               "focal_alpha": None}, ["test/auc", "test/balanced_accuracy"]).attach(engine)
        engine.add_event_handler(Events.COMPLETED, lambda _: writer.add_scalar("test/auc", 0.8, 1))
        engine.run([0], max_epochs=1)
    data = _hparams_plugin_data(tmp_path)
    assert set(data) == {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"}
    metrics = [info.name.tag for info in data["_hparams_/experiment"].experiment.metric_infos]
    assert metrics == ["test/auc", "test/balanced_accuracy"]
    start = data["_hparams_/session_start_info"].session_start_info.hparams
    assert start["network"].string_value == "resnet18" and start["learning_rate"].number_value == pytest.approx(1e-4)
    assert start["amp"].bool_value is False and start["spatial_size"].string_value == "[32, 32]"
    assert start["focal_alpha"].string_value == "None"
    assert _curves(tmp_path)["test/auc"] == [(1, pytest.approx(0.8))]


def test_invalid_arguments_are_refused(tmp_path: Path) -> None:
    with SummaryWriter(str(tmp_path)) as writer:
        with pytest.raises(ValueError, match=r"step must be one of \('iteration', 'epoch'\)"):
            TensorBoardResume(writer, step="iterations")
        with pytest.raises(ValueError, match="interval must be an integer >= 1"):
            HistogramLogger(writer, torch.nn.Linear(1, 1), interval=0)
        with pytest.raises(ValueError, match="metric_tags must name at least one scalar"):
            HParamsLogger(writer, {"lr": 0.1}, [])
