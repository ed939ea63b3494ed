"""Space-to-depth computation of strided few-channel convolutions: same results, parameters and checkpoints."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from alz_monai.networks import SpaceToDepthConv3d, get_network, space_to_depth_stems, to_device
from alz_monai.networks.space_to_depth import space_to_depth_conv3d


@pytest.mark.parametrize(
    ("in_channels", "kernel", "stride", "padding", "size", "fold"),
    [
        (1, 7, 2, 3, (20, 23, 18), (1, 1, 1)),  # the ResNet stem, odd and even sizes
        (1, 7, 2, 3, (20, 23, 18), (4, 1, 1)),  # ... with the first axis's taps in channels (the default)
        (1, 7, 2, 3, (17, 16, 19), (2, 4, 1)),  # ... part of one axis's, and another's
        (2, 7, 2, 3, (16, 16, 16), (4, 1, 1)),
        (1, 3, 2, 1, (9, 10, 11), (1, 1, 2)),
        (1, 5, 3, 2, (13, 14, 15), (1, 1, 1)),  # stride 3: 27 block channels
        (3, 4, 2, 0, (16, 17, 9), (2, 2, 2)),  # kernel a multiple of the stride, no padding
        (1, 7, 2, 1, (11, 12, 13), (4, 1, 1)),  # padding smaller than half the kernel: the input's end unused
    ],
)
def test_equals_the_direct_convolution_and_its_gradients(
    in_channels: int, kernel: int, stride: int, padding: int, size: tuple[int, int, int], fold: tuple[int, int, int]
) -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, in_channels, *size, dtype=torch.float64, generator=generator, requires_grad=True)
    weight = torch.randn(5, in_channels, kernel, kernel, kernel, dtype=torch.float64, generator=generator,
                         requires_grad=True)
    bias = torch.randn(5, dtype=torch.float64, generator=generator, requires_grad=True)
    upstream = None
    gradients = []
    for convolution in (lambda: nn.functional.conv3d(x, weight, bias, stride, padding),
                        lambda: space_to_depth_conv3d(x, weight, bias, stride, padding, fold)):
        out = convolution()
        if upstream is None:
            upstream = torch.randn(out.shape, dtype=torch.float64, generator=generator)
            expected = out.detach()
        else:
            assert out.shape == expected.shape
            torch.testing.assert_close(out.detach(), expected, rtol=0, atol=1e-10)
        gradients.append(torch.autograd.grad(out, (x, weight, bias), upstream))
    for direct, rearranged in zip(*gradients):
        torch.testing.assert_close(rearranged, direct, rtol=0, atol=1e-10)


@pytest.mark.parametrize(("name", "expected"), [("resnet18", ["conv1"]), ("mosa_shared", ["backbone.conv1"]),
                                                ("densenet121", ["features.conv0"])])
def test_stems_are_converted_in_place_keeping_parameters_and_results(name: str, expected: list[str]) -> None:
    torch.manual_seed(0)
    network = get_network(name, num_classes=2, spatial_size=(32, 32, 32)).eval()
    images = torch.randn(2, 1, 32, 32, 32)
    state = {key: value.clone() for key, value in network.state_dict().items()}
    with torch.no_grad():
        reference = network(images)
        assert space_to_depth_stems(network) == expected
        converted = network(images)
    assert {key: value.shape for key, value in network.state_dict().items()} == {k: v.shape for k, v in state.items()}
    assert [module.fold for module in network.modules() if isinstance(module, SpaceToDepthConv3d)] == [(4, 1, 1)]
    torch.testing.assert_close(converted, reference, rtol=0, atol=1e-5)
    scripted = torch.jit.script(network)
    torch.testing.assert_close(scripted(images), reference, rtol=0, atol=1e-5)


def test_only_strided_few_channel_convolutions_qualify() -> None:
    network = nn.Sequential(
        nn.Conv3d(1, 8, 3, stride=1, padding=1),  # not strided
        nn.Conv3d(8, 8, 3, stride=2, padding=1),  # 8 x 2^3 = 64 block channels: converted
        nn.Conv3d(16, 8, 3, stride=2, padding=1),  # 128 block channels: left alone
        nn.Conv3d(1, 8, 3, stride=2, padding=1, groups=1, dilation=2),  # dilated
        nn.Conv3d(1, 8, (3, 5, 3), stride=2),  # not cubic
        nn.Conv3d(1, 8, 3, stride=2, padding=1, padding_mode="reflect"),
    )
    assert space_to_depth_stems(network) == ["1"]


def test_unsupported_geometry_is_refused_when_built_directly() -> None:
    assert SpaceToDepthConv3d(1, 4, 7, stride=2, padding=3).stride == (2, 2, 2)
    for options in ({"stride": (2, 1, 1)}, {"stride": 2, "padding": (1, 0, 0)}, {"stride": 2, "groups": 2},
                    {"stride": 1}):
        with pytest.raises(ValueError, match="SpaceToDepthConv3d needs a cubic kernel"):
            SpaceToDepthConv3d(2, 4, 3, **options)


def test_to_device_keeps_the_direct_stem_on_the_cpu_unless_asked() -> None:
    network = to_device(get_network("resnet10"), "cpu")
    assert type(network.conv1) is nn.Conv3d
    network = to_device(get_network("resnet10"), "cpu", space_to_depth=True)
    assert type(network.conv1) is SpaceToDepthConv3d


@pytest.mark.parametrize("trained_with_stem", [True, False])
def test_checkpoints_and_torchscript_exports_move_between_stems(tmp_path, trained_with_stem: bool) -> None:
    """A model trained with either stem loads into a network with the other; its TorchScript export agrees."""
    torch.manual_seed(0)
    trained = to_device(get_network("resnet10"), "cpu", space_to_depth=trained_with_stem)
    optimizer = torch.optim.SGD(trained.parameters(), lr=1e-3)
    nn.functional.cross_entropy(trained(torch.randn(2, 1, 16, 16, 16)), torch.tensor([0, 1])).backward()
    optimizer.step()
    torch.save(trained.state_dict(), tmp_path / "model.pt")
    loaded = to_device(get_network("resnet10"), "cpu", space_to_depth=not trained_with_stem)
    loaded.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))  # strict: same keys and shapes
    assert (type(loaded.conv1) is SpaceToDepthConv3d) is not trained_with_stem
    images = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        expected = trained.eval()(images)
        torch.testing.assert_close(loaded.eval()(images), expected, rtol=1e-5, atol=1e-5)
        torch.jit.save(torch.jit.script(loaded), tmp_path / "model_scripted.pt")
        torch.testing.assert_close(torch.jit.load(tmp_path / "model_scripted.pt")(images), expected, rtol=1e-5,
                                   atol=1e-5)
