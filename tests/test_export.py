"""ONNX export: both bundles' networks, both stem forms, checked by onnxruntime at batch sizes other than the traced
one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed (pip install 'alz-monai[onnx]')")
pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install 'alz-monai[onnx]')")
pytest.importorskip("onnxscript", reason="the onnx extra is not installed (pip install 'alz-monai[onnx]')")

from alz_monai.cli import build_parser  # noqa: E402
from alz_monai.errors import ConfigError  # noqa: E402
from alz_monai.export import (  # noqa: E402
    DEFAULT_ATOL,
    INPUT_NAME,
    OnnxMismatchError,
    example_inputs,
    export_onnx,
    load_trained_network,
    verify_onnx,
)
from alz_monai.networks import SpaceToDepthConv3d, get_network, space_to_depth_stems, to_device  # noqa: E402

SPATIAL = (32, 32, 32)
TINY_MOSA = {"backbone": "resnet10", "embed_dim": 32, "num_heads": 4, "depth": 1}


def _cli(*argv: str) -> int:
    parser = build_parser()
    args = parser.parse_args(["export-onnx", *map(str, argv)])
    return args.func(args)


@pytest.fixture(scope="module")
def exported_resnet(tmp_path_factory) -> tuple[Path, Path]:
    """A three-class resnet10 checkpoint and its export through ``alz-monai export-onnx``."""
    folder = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    checkpoint = folder / "model_best.pt"
    torch.save(get_network("resnet10", num_classes=3).state_dict(), checkpoint)
    assert _cli(checkpoint, "--network", "resnet10", "--spatial-size", "32,32,32", "--classes", "CN,MCI,AD") == 0
    return checkpoint, checkpoint.with_suffix(".onnx")


def test_cli_export_has_dynamic_batch_and_records_the_model(exported_resnet, capsys) -> None:
    checkpoint, output = exported_resnet
    model = onnx.load(output)
    (graph_input,) = model.graph.input
    assert graph_input.name == INPUT_NAME
    batch, *fixed = graph_input.type.tensor_type.shape.dim
    assert batch.dim_param and not batch.HasField("dim_value")
    assert [dim.dim_value for dim in fixed] == [1, *SPATIAL]
    props = {prop.key: prop.value for prop in model.metadata_props}
    assert props["network"] == "resnet10" and props["classes"] == "CN,MCI,AD"
    network = load_trained_network("resnet10", checkpoint, spatial_size=SPATIAL, num_classes=3)
    check = verify_onnx(network, output, example_inputs(SPATIAL, batch_sizes=(4,), seed=7))
    assert check.passed and check.batch_sizes == (4,) and check.max_abs_diff <= DEFAULT_ATOL


def test_verification_catches_a_model_that_differs(exported_resnet) -> None:
    checkpoint, output = exported_resnet
    network = load_trained_network("resnet10", checkpoint, spatial_size=SPATIAL, num_classes=3)
    with torch.no_grad():
        network.fc.bias += 0.01
    check = verify_onnx(network, output, example_inputs(SPATIAL, batch_sizes=(1,)))
    assert not check.passed and check.max_abs_diff == pytest.approx(0.01, rel=1e-3)


def test_cli_refuses_to_replace_an_export(exported_resnet) -> None:
    checkpoint, output = exported_resnet
    before = output.stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="--force"):
        _cli(checkpoint, "--network", "resnet10", "--spatial-size", "32,32,32", "--classes", "CN,MCI,AD")
    assert output.stat().st_mtime_ns == before


def test_checkpoint_of_other_options_is_a_config_error(exported_resnet) -> None:
    checkpoint, _ = exported_resnet
    with pytest.raises(ConfigError, match="resnet18.*missing: layer1.1"):
        load_trained_network("resnet18", checkpoint, spatial_size=SPATIAL, num_classes=3)
    with pytest.raises(ConfigError, match="classifier: fc.weight"):
        load_trained_network("resnet10", checkpoint, spatial_size=SPATIAL, num_classes=2)


@pytest.mark.parametrize(("name", "space_to_depth"), [("mosa", True), ("mosa_shared", False)])
def test_mosa_exports_with_either_stem(tmp_path, name: str, space_to_depth: bool) -> None:
    """48 is an odd multiple of 16: the padded last token; the space-to-depth case also has channels-last weights,
    the layout of a CUDA training run."""
    spatial = (48, 32, 32)
    torch.manual_seed(0)
    network = get_network(name, spatial_size=spatial, **TINY_MOSA)
    if space_to_depth:
        assert space_to_depth_stems(network) == ["backbone.conv1"]
        to_device(network, "cpu", channels_last=True)
    output = tmp_path / "model.onnx"
    check = export_onnx(network, output, spatial)
    assert check.passed and check.batch_sizes == (1, 3) and check.max_abs_diff <= DEFAULT_ATOL
    assert isinstance(network.backbone.conv1, SpaceToDepthConv3d) is space_to_depth
    assert network.training  # the caller's network keeps its mode
    ops = {node.op_type for node in onnx.load(output).graph.node}
    assert "Conv" in ops and ("Softmax" in ops or "Attention" in ops)


def test_failed_verification_writes_nothing(tmp_path, monkeypatch) -> None:
    import alz_monai.export as export

    network = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3), torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten())
    monkeypatch.setattr(export, "verify_onnx", lambda *args, **kwargs: export.OnnxCheck((1,), 1.0, 1e-4, 1e-4, False))
    output = tmp_path / "model.onnx"
    output.write_text("earlier export")
    with pytest.raises(OnnxMismatchError, match="not written"):
        export_onnx(network, output, SPATIAL)
    assert output.read_text() == "earlier export" and sorted(path.name for path in tmp_path.iterdir()) == ["model.onnx"]
