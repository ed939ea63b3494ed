"""ONNX export of a trained classifier, checked against PyTorch with onnxruntime before the file is written.

The graph comes from PyTorch's ``torch.export``-based exporter (``torch.onnx.export(..., dynamo=True)``, the default
since PyTorch 2.9; it needs ``onnxscript``): the TorchScript-based one is deprecated, and the new one translates
``scaled_dot_product_attention`` (Mosa) and the space-to-depth stem without special cases. The batch axis is
dynamic, the spatial axes are the ones the network was built for (Mosa's position embeddings fix them). The
exported model is run by onnxruntime on inputs of batch sizes other than the traced one and compared with the
PyTorch network; only a model within tolerance is written, atomically.

Needs the ``onnx`` extra: ``pip install 'alz-monai[onnx]'`` (onnx, onnxruntime, onnxscript).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

import alz_monai
from alz_monai.errors import ConfigError
from alz_monai.fileio import atomic_open
from alz_monai.networks import get_network, load_backbone_weights

__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_RTOL",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "OnnxCheck",
    "OnnxMismatchError",
    "example_inputs",
    "export_checkpoint_onnx",
    "export_onnx",
    "load_trained_network",
    "verify_onnx",
]

logger = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
#: Tolerance on the logits, |onnx - torch| <= atol + rtol * |torch|: float32 kernels of two runtimes differ by
#: summation order only (at most 5e-7 measured on ResNet18 and Mosa at 128^3); a wrong graph differs by far more.
DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-4
#: Batch sizes of the check: neither is the traced one (2), so a graph that kept the batch size fails.
CHECK_BATCH_SIZES = (1, 3)
# Traced batch size, none of the checked ones.
_TRACE_BATCH = 2
# Loggers of the exporter and its ONNX optimiser that write, on every export, lines that say nothing about this
# model (skipped torchvision operators, each rewrite pass at INFO).
_QUIET_LOGGERS = ("torch.onnx._internal.exporter._registration", "onnx_ir", "onnxscript")


class OnnxMismatchError(RuntimeError):
    """The ONNX model's outputs differ from the PyTorch network's beyond tolerance."""


@dataclasses.dataclass(frozen=True)
class OnnxCheck:
    """Result of comparing an ONNX model with its PyTorch network on the same random inputs."""

    batch_sizes: tuple[int, ...]
    max_abs_diff: float
    atol: float
    rtol: float
    passed: bool

    def describe(self) -> str:
        verdict = "within" if self.passed else "OUTSIDE"
        return (f"onnxruntime vs PyTorch logits, batch sizes {list(self.batch_sizes)}: max |diff| "
                f"{self.max_abs_diff:.2e}, {verdict} atol {self.atol:g} + rtol {self.rtol:g} * |torch|")


def _onnx_modules() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError as error:
        raise ConfigError(f"ONNX export needs the onnx extra ({error.name} is missing): "
                          "pip install 'alz-monai[onnx]'") from None
    return onnx, onnxruntime


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in _QUIET_LOGGERS]
    levels = [item.level for item in loggers]
    for item in loggers:
        item.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # raised inside torch.export by PyTorch's own pytree code
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            yield
    finally:
        for item, level in zip(loggers, levels):
            item.setLevel(level)


def example_inputs(
    spatial_size: Sequence[int], in_channels: int = 1, batch_sizes: Sequence[int] = CHECK_BATCH_SIZES, seed: int = 0
) -> list[torch.Tensor]:
    """Standard-normal images, the scale of the foreground-z-scored scans the networks see."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, in_channels, *spatial_size, generator=generator) for batch in batch_sizes]


def _network_device(network: nn.Module) -> torch.device:
    return next(network.parameters()).device


def verify_onnx(
    network: nn.Module,
    model: str | os.PathLike | bytes,
    inputs: Sequence[torch.Tensor],
    *,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
) -> OnnxCheck:
    """Run ``model`` (a path or serialised bytes) in onnxruntime on ``inputs`` and compare with ``network``.

    onnxruntime runs on the CPU; the network where its parameters are, in eval mode (its mode is restored).
    """
    _, onnxruntime = _onnx_modules()
    source = os.fspath(model) if isinstance(model, (str, os.PathLike)) else model
    session = onnxruntime.InferenceSession(source, providers=["CPUExecutionProvider"])
    device = _network_device(network)
    was_training = network.training
    network.eval()
    max_diff, passed = 0.0, True
    try:
        for batch in inputs:
            with torch.no_grad():
                expected = network(batch.to(device)).float().cpu().numpy()
            (actual,) = session.run([OUTPUT_NAME], {INPUT_NAME: batch.cpu().numpy()})
            if actual.shape != expected.shape:
                raise OnnxMismatchError(f"ONNX output has shape {actual.shape}, PyTorch {expected.shape}")
            diff = np.abs(actual - expected)
            max_diff = max(max_diff, float(diff.max()))
            passed = passed and bool(np.all(diff <= atol + rtol * np.abs(expected)))
    finally:
        network.train(was_training)
    return OnnxCheck(tuple(len(batch) for batch in inputs), max_diff, atol, rtol, passed)


def export_onnx(
    network: nn.Module,
    path: str | os.PathLike,
    spatial_size: Sequence[int],
    *,
    in_channels: int = 1,
    metadata: Mapping[str, str] | None = None,
    opset_version: int | None = None,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
) -> OnnxCheck:
    """Export ``network`` to ONNX at ``path`` (input ``image``, output ``logits``, dynamic batch axis).

    The model is verified with :func:`verify_onnx` before anything is written; outside tolerance raises
    :class:`OnnxMismatchError` and ``path`` is left as it was. ``metadata`` goes into the model's
    ``metadata_props`` (with the alz-monai version and the input size).
    """
    onnx, _ = _onnx_modules()
    spatial_size = tuple(int(size) for size in spatial_size)
    # A CPU float32 copy: the graph does not depend on the device, and the check then compares like with like
    # (no TF32 or bf16 on either side); the caller's network keeps its device and mode.
    network = copy.deepcopy(network).float().cpu().eval()
    trace_input = example_inputs(spatial_size, in_channels, [_TRACE_BATCH], seed=1)[0]
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            network, (trace_input,), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=opset_version, external_data=False,
            verbose=False)
    assert program is not None  # the dynamo exporter always returns its program
    proto = program.model_proto
    props = {"alz_monai_version": alz_monai.__version__, "input": f"{INPUT_NAME} (batch, {in_channels}, "
             f"{', '.join(map(str, spatial_size))}) float32", "output": f"{OUTPUT_NAME} (batch, classes)",
             **(metadata or {})}
    onnx.helper.set_model_props(proto, {key: str(value) for key, value in props.items()})
    serialised = proto.SerializeToString()
    check = verify_onnx(network, serialised, example_inputs(spatial_size, in_channels), atol=atol, rtol=rtol)
    logger.info("%s", check.describe())
    if not check.passed:
        raise OnnxMismatchError(f"{check.describe()}; {path} not written")
    with atomic_open(path, "wb") as handle:
        handle.write(serialised)
    logger.info("ONNX model written to %s (%.1f MB)", path, len(serialised) / 1e6)
    return check


def load_trained_network(
    name: str,
    checkpoint: str | os.PathLike,
    *,
    spatial_size: Sequence[int],
    in_channels: int = 1,
    num_classes: int = 2,
    options: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Build network ``name`` as it was trained and load every tensor of ``checkpoint`` into it.

    ``checkpoint``: a run's ``model_best.pt`` or a training checkpoint (its ``network`` entry). A partial fit
    means the options differ from training and raises ConfigError naming what did not match.
    """
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist; pass a run's checkpoints/model_best.pt")
    options = dict(options or {})
    if options.get("backbone_weights") is not None:
        raise ConfigError("backbone_weights is a training option; the checkpoint holds the whole network")
    network = get_network(name, in_channels=in_channels, num_classes=num_classes, spatial_size=spatial_size,
                          **options)
    report = load_backbone_weights(network, checkpoint)
    misfits = (("missing", report.missing), ("unexpected", report.unexpected), ("classifier", report.skipped))
    if any(keys for _, keys in misfits):
        listed = "; ".join(f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                           for label, keys in misfits if keys)
        raise ConfigError(f"{checkpoint} does not fit network {name!r} with options {options} ({listed}); pass the "
                          "network name, options and classes the run was trained with")
    return network


def export_checkpoint_onnx(
    name: str,
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    *,
    spatial_size: Sequence[int],
    in_channels: int = 1,
    classes: Sequence[str] = ("CN", "AD"),
    options: Mapping[str, Any] | None = None,
) -> OnnxCheck:
    """Export a trained checkpoint: what ``alz-monai export-onnx`` does, and what a run's recorded configuration
    (network name, options, spatial size, classes) drives."""
    network = load_trained_network(name, checkpoint, spatial_size=spatial_size, in_channels=in_channels,
                                   num_classes=len(classes), options=options)
    recorded_options = yaml.safe_dump(dict(options or {}), default_flow_style=True).strip()
    metadata = {"network": name, "network_options": recorded_options, "classes": ",".join(classes)}
    return export_onnx(network, output, spatial_size, in_channels=in_channels, metadata=metadata)
