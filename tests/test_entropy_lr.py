"""EntropyAdaptiveLR: each mode's direction, warm-up, clamping, the PID loop and resumable state."""

from __future__ import annotations

import io
import math
from types import SimpleNamespace

import pytest
import scipy.stats
import torch
from monai.engines import SupervisedTrainer
from monai.transforms import Activationsd
from monai.utils import CommonKeys

from alz_monai.handlers.entropy_lr import MODES, EntropyAdaptiveLR, mean_normalised_entropy

BASE_LR = 0.01
UNSURE = torch.zeros(4, 2)  # uniform softmax: entropy 1
CONFIDENT = torch.tensor([[6.0, -6.0]] * 4)  # entropy close to 0


def _optimizer(lr: float = BASE_LR) -> torch.optim.SGD:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def _feed(handler: EntropyAdaptiveLR, logits: torch.Tensor, iterations: int = 1) -> list[float]:
    """Calls the handler as the trainer would after each forward pass; returns the rate after each call."""
    rates = []
    for _ in range(iterations):
        handler(SimpleNamespace(state=SimpleNamespace(output={CommonKeys.PRED: logits})))
        rates.append(handler.optimizer.param_groups[0]["lr"])
    return rates


def test_entropy_is_normalised_softmax_entropy() -> None:
    logits = torch.randn(5, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    probabilities = torch.softmax(logits, dim=1).numpy()
    expected = scipy.stats.entropy(probabilities, base=3, axis=1).mean()
    assert float(mean_normalised_entropy(logits)) == pytest.approx(expected, rel=1e-5)
    assert float(mean_normalised_entropy(UNSURE)) == pytest.approx(1.0)
    assert float(mean_normalised_entropy(CONFIDENT)) < 0.01
    binary_logit = torch.tensor([[0.0], [2.0]])
    bernoulli = scipy.stats.entropy([[0.5, 0.5], [1 / (1 + math.exp(2)), 1 / (1 + math.exp(-2))]], base=2, axis=1)
    assert float(mean_normalised_entropy(binary_logit)) == pytest.approx(bernoulli.mean(), rel=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_each_mode_gives_unsure_networks_larger_steps(mode: str) -> None:
    def final_rate(logits: torch.Tensor) -> float:
        handler = EntropyAdaptiveLR(_optimizer(), mode=mode, ema=0.0, max_scale=2.0, update_every=1)
        return _feed(handler, logits, iterations=5)[-1]

    unsure, confident = final_rate(UNSURE), final_rate(CONFIDENT)
    assert unsure > confident
    if mode == "pid":  # pushes the rate above base while too unsure, below while too certain
        assert unsure > BASE_LR > confident


def test_curve_shapes() -> None:
    def curve(mode: str, gain: float = 5.0) -> EntropyAdaptiveLR:
        return EntropyAdaptiveLR(_optimizer(), mode=mode, gain=gain, min_scale=0.1, max_scale=2.0, target_entropy=0.3)

    linear, inverse = curve("linear"), curve("inverse")
    assert (linear._curve_scale(0.0), linear._curve_scale(1.0)) == pytest.approx((0.1, 2.0))
    assert (inverse._curve_scale(0.0), inverse._curve_scale(1.0)) == pytest.approx((1 / 6, 1.0))
    for mode in ("sigmoid", "tanh"):
        assert curve(mode)._curve_scale(0.3) == pytest.approx((0.1 + 2.0) / 2)  # centred at target_entropy
    assert curve("tanh", gain=2.0)._curve_scale(0.8) == pytest.approx(curve("sigmoid", gain=4.0)._curve_scale(0.8))


def test_warmup_ramps_linearly_to_base() -> None:
    handler = EntropyAdaptiveLR(_optimizer(), min_scale=1.0, max_scale=1.0, warmup_steps=4)
    rates = _feed(handler, UNSURE, iterations=6)
    assert rates == pytest.approx([BASE_LR * factor for factor in (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)])


def test_rate_is_clamped_to_min_and_max_lr() -> None:
    capped = EntropyAdaptiveLR(_optimizer(), max_scale=2.0, max_lr=0.015, ema=0.0, update_every=1)
    assert _feed(capped, UNSURE, iterations=3) == [0.015] * 3
    floored = EntropyAdaptiveLR(_optimizer(), min_lr=0.005, ema=0.0, update_every=1)
    assert _feed(floored, CONFIDENT, iterations=3) == [0.005] * 3
    unclamped = EntropyAdaptiveLR(_optimizer(), ema=0.0, update_every=1)
    assert _feed(unclamped, CONFIDENT)[0] < 0.005


def test_pid_integrates_toward_target_and_does_not_wind_up() -> None:
    handler = EntropyAdaptiveLR(
        _optimizer(), mode="pid", ema=0.0, kp=0.2, ki=0.1, min_scale=0.1, max_scale=2.0, update_every=1
    )
    rising = _feed(handler, UNSURE, iterations=60)  # constant error +0.5: only the integral changes
    assert all(later > earlier for earlier, later in zip(rising[:8], rising[1:9]))
    assert rising[-1] == pytest.approx(2.0 * BASE_LR)  # saturated at max_scale
    # anti-windup: the integral stopped where the output saturated (1 + 0.2 * 0.5 + 0.1 * 9 = 2) instead of
    # reaching 60 * 0.5, so the rate falls at the first opposite error
    assert handler.integral <= 9
    falling = _feed(handler, CONFIDENT, iterations=2)
    assert falling[0] < 2.0 * BASE_LR and falling[1] < falling[0]


def test_entropy_is_read_every_update_every_iterations_and_smoothed() -> None:
    handler = EntropyAdaptiveLR(_optimizer(), ema=0.5, update_every=5)
    readings = []
    for iteration in range(1, 12):
        _feed(handler, CONFIDENT if iteration <= 2 else UNSURE)
        readings.append(handler.smoothed_entropy)
    confident_entropy = float(mean_normalised_entropy(CONFIDENT))
    first = readings[0]
    assert first == pytest.approx(confident_entropy)  # iteration 1 starts the average
    assert readings[1:5] == [first] * 4  # nothing read on iterations 2-5
    window = (confident_entropy + 4 * 1.0) / 5  # iterations 2-6
    assert readings[5] == pytest.approx(0.5 * first + 0.5 * window)
    assert readings[6:10] == [readings[5]] * 4
    assert readings[10] == pytest.approx(0.5 * readings[5] + 0.5 * 1.0)


def test_state_round_trip_continues_identically() -> None:
    def make() -> EntropyAdaptiveLR:
        return EntropyAdaptiveLR(
            _optimizer(), mode="pid", ema=0.7, kd=0.5, max_scale=3.0, warmup_steps=10, update_every=3
        )

    sequence = [UNSURE, CONFIDENT, torch.randn(4, 2, generator=torch.Generator().manual_seed(1))] * 6
    original = make()
    for logits in sequence[:7]:  # stop in the middle of a reading window and of the warm-up
        _feed(original, logits)
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    restored = make()
    restored.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    for logits in sequence[7:]:
        assert _feed(restored, logits) == pytest.approx(_feed(original, logits), rel=1e-12)
    assert restored.state_dict() == pytest.approx(original.state_dict())


def test_invalid_arguments_are_listed() -> None:
    with pytest.raises(ValueError, match="mode must be one of linear, tanh, sigmoid, inverse, pid, got 'cosine'"):
        EntropyAdaptiveLR(_optimizer(), mode="cosine")
    with pytest.raises(ValueError, match=r"ema must be in \[0, 1\).*update_every must be an integer >= 1"):
        EntropyAdaptiveLR(_optimizer(), ema=1.0, update_every=0)
    with pytest.raises(ValueError, match="min_lr <= max_lr"):
        EntropyAdaptiveLR(_optimizer(), min_lr=0.1, max_lr=0.01)
    with pytest.raises(ValueError, match="kp, ki and kd must be >= 0"):
        EntropyAdaptiveLR(_optimizer(), ki=-1.0)


def test_reads_raw_logits_in_a_monai_trainer() -> None:
    """The trainer's postprocessing (softmax) and decollation must not reach the entropy."""
    network = torch.nn.Linear(4, 2)
    with torch.no_grad():
        network.weight.zero_()
        network.bias.copy_(torch.tensor([6.0, -6.0]))
    optimizer = torch.optim.SGD(network.parameters(), lr=1e-6)
    trainer = SupervisedTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=[{"image": torch.randn(4, 4), "label": torch.zeros(4, dtype=torch.long)}] * 3,
        network=network,
        optimizer=optimizer,
        loss_function=torch.nn.CrossEntropyLoss(),
        postprocessing=Activationsd(keys=CommonKeys.PRED, softmax=True),
    )
    handler = EntropyAdaptiveLR(optimizer, ema=0.0, update_every=1)
    handler.attach(trainer)
    trainer.run()
    assert handler.step == 3
    assert handler.smoothed_entropy < 0.01  # softmax-of-probabilities would read about 0.84
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-6 * (0.1 + 0.9 * handler.smoothed_entropy))
