"""Networks: shapes, feature pyramid, gradients, weight loading, TorchScript, freezing and factory errors."""

from __future__ import annotations

import math

import pytest
import torch
from monai.networks.nets import ResNet
from torch import nn

from alz_monai.networks import (
    NETWORK_NAMES,
    RESNET_ARCHITECTURES,
    Mosa,
    MosaShared,
    ResNet3D,
    build_resnet3d,
    get_network,
    load_backbone_weights,
    resnet10_3d,
    resnet18_3d,
    resnet50_3d,
)

TINY_TRANSFORMER = {"embed_dim": 32, "depth": 1, "num_heads": 4}
MOSA_CLASSES = [Mosa, MosaShared]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _count_parameters(model: nn.Module) -> int:
    return sum(param.numel() for param in model.parameters())


@pytest.mark.parametrize(
    ("name", "channels"),
    [("resnet18", (64, 64, 128, 256, 512)), ("resnet50", (64, 256, 512, 1024, 2048))],
)
def test_feature_pyramid_channels_and_downsampling(name: str, channels: tuple[int, ...]) -> None:
    with torch.device("meta"):
        model = build_resnet3d(name)
        levels = model.forward_features(torch.empty(2, 1, 64, 64, 32))
    assert model.feature_channels == channels
    assert [tuple(level.shape) for level in levels] == [
        (2, channel, 64 // factor, 64 // factor, 32 // factor) for channel, factor in zip(channels, (4, 4, 8, 16, 32))
    ]


def _monai_resnet(name: str) -> ResNet:
    """MONAI's ResNet configured like ours: stride-2 stem and bias-free projection shortcuts."""
    block, layers = RESNET_ARCHITECTURES[name]
    return ResNet(
        "basic" if block.expansion == 1 else "bottleneck",
        list(layers),
        [64, 128, 256, 512],
        spatial_dims=3,
        n_input_channels=1,
        num_classes=2,
        conv1_t_size=7,
        conv1_t_stride=2,
        shortcut_type="B",
        bias_downsample=False,
    )


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


@pytest.mark.parametrize("name", list(RESNET_ARCHITECTURES))
def test_resnet_has_the_torchvision_layout(name: str) -> None:
    with torch.device("meta"):
        assert _shapes(build_resnet3d(name)) == _shapes(_monai_resnet(name))


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnet_computes_like_monai_resnet(name: str) -> None:
    reference = _monai_resnet(name).eval()
    with torch.device("meta"):
        model = build_resnet3d(name).eval()
    model.load_state_dict(reference.state_dict(), assign=True)
    example = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(example), reference(example))


@pytest.mark.parametrize("name", list(RESNET_ARCHITECTURES))
def test_resnet_logits_shape(name: str) -> None:
    with torch.device("meta"):
        logits = build_resnet3d(name, in_channels=2, num_classes=3, dropout=0.2)(torch.empty(2, 2, 96, 112, 96))
    assert logits.shape == (2, 3)


def test_headless_resnet_returns_pooled_features() -> None:
    with torch.device("meta"):
        model = resnet50_3d(num_classes=0)
        features = model(torch.empty(2, 1, 32, 32, 32))
    assert not any(key.startswith("fc.") for key in model.state_dict())
    assert features.shape == (2, 2048)


@pytest.mark.parametrize(("name", "last_norm", "num_blocks"), [("resnet10", "bn2", 4), ("resnet50", "bn3", 16)])
def test_zero_init_residual_zeroes_last_norm_of_every_block(name: str, last_norm: str, num_blocks: int) -> None:
    def last_norm_weights(model: ResNet3D) -> list[torch.Tensor]:
        return [param for key, param in model.named_parameters() if key.endswith(f"{last_norm}.weight")]

    zeroed = last_norm_weights(build_resnet3d(name, zero_init_residual=True))
    assert len(zeroed) == num_blocks
    assert all(torch.count_nonzero(weight) == 0 for weight in zeroed)
    assert all(torch.all(weight == 1) for weight in last_norm_weights(build_resnet3d(name)))


# Shape tests run on the meta device: shapes are computed, not values, so full sizes and default widths are cheap.
SPATIAL_SIZES = [(32, 32, 32), (64, 64, 32), (96, 112, 96), (128, 128, 128)]


@pytest.mark.parametrize("mosa_class", MOSA_CLASSES)
@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
@pytest.mark.parametrize("spatial_size", SPATIAL_SIZES)
def test_mosa_logits_shape(mosa_class: type[Mosa], backbone: str, spatial_size: tuple[int, int, int]) -> None:
    with torch.device("meta"):
        logits = mosa_class(spatial_size, backbone, num_classes=3)(torch.empty(2, 1, *spatial_size))
    assert logits.shape == (2, 3)


@pytest.mark.parametrize(
    ("spatial_size", "token_grid"),
    [((96, 112, 96), (3, 4, 3)), ((128, 128, 128), (4, 4, 4)), ((48, 48, 32), (2, 2, 1)), ((32, 32, 32), (1, 1, 1))],
)
def test_mosa_token_grid_is_the_same_for_every_level(
    spatial_size: tuple[int, int, int], token_grid: tuple[int, int, int]
) -> None:
    with torch.device("meta"):
        model = Mosa(spatial_size, "resnet50", embed_dim=64, num_heads=4)
        token_sets = model.tokenize(torch.empty(2, 1, *spatial_size))
    assert model.token_grid == token_grid
    assert model.patch_sizes == (8, 8, 4, 2, 1)
    positions = 1 + math.prod(token_grid)
    assert all(tokenizer.position_embedding.shape == (1, positions, 64) for tokenizer in model.tokenizers)
    assert [tuple(tokens.shape) for tokens in token_sets] == [(2, positions, 64)] * 5


@pytest.mark.parametrize("mosa_class", MOSA_CLASSES)
def test_gradients_reach_backbone_and_every_scale(mosa_class: type[Mosa]) -> None:
    model = mosa_class((32, 32, 32), "resnet10", **TINY_TRANSFORMER).train()
    loss = nn.functional.cross_entropy(model(torch.randn(2, 1, 32, 32, 32)), torch.tensor([0, 1]))
    loss.backward()
    without_gradient = [
        key for key, param in model.named_parameters() if param.grad is None or torch.count_nonzero(param.grad) == 0
    ]
    assert without_gradient == []
    assert len(model.tokenizers) == 5


def _prefixed(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"module.{key}": value for key, value in state.items()}


# The key layout is the same at every depth: wrappers are checked on resnet10 to keep the test fast.
@pytest.mark.parametrize(
    ("name", "wrap"),
    [
        ("resnet18", lambda state: state),
        ("resnet10", lambda state: {"state_dict": state}),
        ("resnet10", lambda state: {"model": state}),
        ("resnet10", lambda state: {"network": state, "trainer": {"epoch": 3, "iteration": 30}}),
        ("resnet10", _prefixed),
        ("resnet10", lambda state: {"state_dict": _prefixed(state)}),
    ],
    ids=["resnet18", "state_dict", "model", "ignite_network", "ddp_prefix", "wrapped_ddp_prefix"],
)
def test_original_layout_checkpoint_loads_completely(tmp_path, name: str, wrap) -> None:
    original = build_resnet3d(name)
    path = tmp_path / f"{name}_3d.pt"
    torch.save(wrap(original.state_dict()), path)
    model = build_resnet3d(name)
    report = load_backbone_weights(model, path)
    assert (report.missing, report.unexpected, report.skipped) == ((), (), ())
    assert report.source == str(path)
    assert all(torch.equal(model.state_dict()[key], value) for key, value in original.state_dict().items())


def test_medicalnet_style_backbone_reports_missing_fc_and_unexpected_head() -> None:
    """MedicalNet's resnet_10 layout: no fc, a conv_seg head, no BatchNorm counters (PyTorch < 0.4.1)."""
    medicalnet = {
        key: value
        for key, value in resnet10_3d().state_dict().items()
        if not key.startswith("fc.") and not key.endswith("num_batches_tracked")
    }
    medicalnet["conv_seg.0.weight"] = torch.zeros(32, 512, 3, 3, 3)
    model = resnet10_3d()
    report = load_backbone_weights(model, {"state_dict": _prefixed(medicalnet)})
    assert report.missing == ("fc.weight", "fc.bias")
    assert report.unexpected == ("conv_seg.0.weight",)
    assert torch.equal(model.layer4[0].conv2.weight, medicalnet["layer4.0.conv2.weight"])


def test_other_num_classes_skips_classifier_unless_strict() -> None:
    three_class = resnet18_3d(num_classes=3).state_dict()
    report = load_backbone_weights(resnet18_3d(num_classes=2), three_class)
    assert report.skipped == ("fc.weight", "fc.bias")
    assert report.missing == ()
    with pytest.raises(ValueError, match=r"strict_classifier.*fc\.bias \(3,\) vs model \(2,\)"):
        load_backbone_weights(resnet18_3d(num_classes=2), three_class, strict_classifier=True)


def test_shape_mismatch_on_a_convolution_raises(tmp_path) -> None:
    path = tmp_path / "two_channel.pt"
    torch.save(resnet18_3d(in_channels=2).state_dict(), path)
    model = resnet18_3d(in_channels=1)
    before = model.conv1.weight.clone()
    with pytest.raises(ValueError, match=r"two_channel\.pt: conv1\.weight has shape \(64, 2, 7, 7, 7\)"):
        load_backbone_weights(model, path)
    assert torch.equal(model.conv1.weight, before)


def test_checkpoint_of_another_network_raises_naming_the_file(tmp_path) -> None:
    path = tmp_path / "densenet.pt"
    torch.save(get_network("densenet121").state_dict(), path)
    with pytest.raises(ValueError, match=r"densenet\.pt: no tensor matches ResNet3D"):
        load_backbone_weights(resnet18_3d(), path)
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        load_backbone_weights(resnet18_3d(), tmp_path / "absent.pt")


def test_mosa_loads_backbone_weights_and_freezes_backbone(tmp_path) -> None:
    path = tmp_path / "model_best.pt"
    pretrained = resnet18_3d()
    torch.save(pretrained.state_dict(), path)
    model = Mosa((32, 32, 32), "resnet18", backbone_weights=path, freeze_backbone=True, **TINY_TRANSFORMER)
    assert torch.equal(model.backbone.layer2[0].downsample[0].weight, pretrained.layer2[0].downsample[0].weight)
    assert not any(param.requires_grad for param in model.backbone.parameters())

    groups = model.param_groups(lr=1e-3, backbone_lr_multiplier=0.1)
    assert [group["name"] for group in groups] == ["fusion"]
    grouped = {id(param) for group in groups for param in group["params"]}
    assert grouped == {id(param) for param in model.parameters() if param.requires_grad}
    assert not grouped & {id(param) for param in model.backbone.parameters()}

    model.train()
    assert not model.backbone.training and model.head.training


def test_param_groups_apply_backbone_multiplier() -> None:
    model = MosaShared((32, 32, 32), resnet18_3d(), **TINY_TRANSFORMER)
    backbone_group, fusion_group = model.param_groups(lr=1e-3, backbone_lr_multiplier=0.1)
    assert (backbone_group["name"], backbone_group["lr"]) == ("backbone", pytest.approx(1e-4))
    assert (fusion_group["name"], fusion_group["lr"]) == ("fusion", 1e-3)
    assert len(backbone_group["params"]) + len(fusion_group["params"]) == len(list(model.parameters()))
    assert isinstance(model.backbone.fc, nn.Identity)


def test_unsupported_spatial_size_is_explained() -> None:
    with pytest.raises(ValueError, match=r"multiple of 16, got \(100, 112, 96\); .* e\.g\. \(96, 112, 96\)"):
        Mosa((100, 112, 96), "resnet18")
    model = Mosa((32, 32, 32), "resnet18", **TINY_TRANSFORMER)
    with pytest.raises(ValueError, match=r"built for input \(batch, 1, 32, 32, 32\), got \[1, 1, 32, 32, 48\]"):
        model(torch.randn(1, 1, 32, 32, 48))


def test_mosa_rejects_backbone_with_other_channels() -> None:
    with pytest.raises(ValueError, match="in_channels=1 but its backbone takes 2"):
        Mosa((32, 32, 32), resnet18_3d(in_channels=2))


def test_factory_errors_name_what_to_fix() -> None:
    with pytest.raises(ValueError, match="valid names: resnet10, resnet18, .*mosa_shared, densenet121, vit"):
        get_network("resnet19")
    with pytest.raises(ValueError, match="'vit' needs spatial_size"):
        get_network("vit")
    with pytest.raises(ValueError, match=r"divisible by patch_size=16, got \(40, 32, 32\)"):
        get_network("vit", spatial_size=(40, 32, 32))


@pytest.mark.parametrize("name", NETWORK_NAMES)
def test_factory_builds_every_network(name: str) -> None:
    small = {
        "mosa": TINY_TRANSFORMER,
        "mosa_shared": TINY_TRANSFORMER,
        "vit": {"hidden_size": 48, "mlp_dim": 96, "num_layers": 1, "num_heads": 4},
    }
    with torch.device("meta"):
        model = get_network(name, in_channels=2, num_classes=3, spatial_size=(32, 32, 32), **small.get(name, {}))
        logits = model(torch.empty(2, 2, 32, 32, 32))
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 3)


def _assert_torchscript_matches_eager(model: nn.Module, example: torch.Tensor) -> None:
    model.eval()
    with torch.no_grad():
        eager = model(example)
        for compiled in (torch.jit.trace(model, example, check_trace=False), torch.jit.script(model)):
            torch.testing.assert_close(compiled(example), eager, rtol=0, atol=1e-5)


def test_torchscript_resnet18_matches_eager() -> None:
    _assert_torchscript_matches_eager(resnet18_3d(), torch.randn(1, 1, 32, 32, 32))


@pytest.mark.parametrize("mosa_class", MOSA_CLASSES)
def test_torchscript_mosa_matches_eager(mosa_class: type[Mosa]) -> None:
    _assert_torchscript_matches_eager(
        mosa_class((48, 32, 32), "resnet18", **TINY_TRANSFORMER), torch.randn(1, 1, 48, 32, 32)
    )


def test_parameter_counts() -> None:
    """Prints every default-sized model's size (see ``pytest -s``); the shared variant shares exactly one encoder."""
    with torch.device("meta"):  # shapes only: skips allocating and initialising ~450M parameters
        models = {name: get_network(name, spatial_size=(96, 112, 96)) for name in NETWORK_NAMES}
    counts = {name: _count_parameters(model) for name, model in models.items()}
    for name, count in counts.items():
        print(f"{name:>12}: {count:>12,} parameters")
    encoder_size = _count_parameters(models["mosa"].encoders[0])
    scale_embedding_size = models["mosa_shared"].scale_embedding.numel()
    assert counts["mosa_shared"] == counts["mosa"] - 4 * encoder_size + scale_embedding_size


def test_stem_max_pool_is_left_out_of_compiled_graphs() -> None:
    """torch.compile hands the stem's max-pool to ATen's kernel (Inductor's is slower there), same results."""
    network = resnet10_3d().eval()
    graphs: list[str] = []

    def record(graph_module: torch.fx.GraphModule, example_inputs: list) -> object:
        graphs.append(graph_module.code)
        return graph_module.forward

    images = torch.randn(2, 1, 32, 32, 32)
    torch._dynamo.reset()
    compiled = torch.compile(network, backend=record)(images)
    assert any("conv" in code for code in graphs)
    assert not any("max_pool" in code for code in graphs)
    torch.testing.assert_close(compiled, network(images), rtol=0, atol=0)
