"""Backbones (ConvNet-3, ResNetAP-10), the hashing network wrapper and the name registry."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hashcondense.models import BACKBONES, ConvNet, HashingNetwork, ResNetAP10, build_backbone
from hashcondense.registry import Registry


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------------------------
# ConvNet-3
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize(("resolution", "expected"), [(32, 2048), (64, 128 * 8 * 8)])
def test_convnet_feature_dim_and_embed_shape(channels, resolution, expected):
    torch.manual_seed(0)
    net = ConvNet(in_channels=channels, resolution=resolution)
    assert net.feature_dim == expected
    x = torch.randn(2, channels, resolution, resolution)
    with torch.no_grad():
        f = net.embed(x)
        assert f.shape == (2, expected)
        assert torch.equal(net(x), f)  # forward is embed


def test_convnet_feature_dim_follows_width_and_depth():
    net = ConvNet(in_channels=3, resolution=16, width=8, depth=2)
    assert net.feature_dim == 8 * 4 * 4
    with torch.no_grad():
        assert net.embed(torch.zeros(1, 3, 16, 16)).shape == (1, 128)


@pytest.mark.parametrize("resolution", [30, 36, 20, 33])
def test_convnet_resolution_not_divisible_raises(resolution):
    with pytest.raises(ValueError, match="divisible"):
        ConvNet(resolution=resolution)


def test_convnet_parameter_count_matches_hand_arithmetic():
    width, k = 128, 3
    conv_in = 3 * width * k * k + width  # weights + bias
    conv_mid = width * width * k * k + width
    norm = 2 * width  # GroupNorm affine weight + bias
    expected = conv_in + norm + 2 * (conv_mid + norm)
    classifier = 2048 * 10 + 10  # the 10-way linear layer of the classification ConvNet
    assert classifier == 20_490
    assert expected == 320_010 - 20_490 == 299_520
    assert n_params(ConvNet(in_channels=3, resolution=32)) == expected
    # one input channel changes only the first conv's weights
    assert n_params(ConvNet(in_channels=1, resolution=32)) == expected - 2 * width * k * k


def test_convnet_instance_norm_is_groupnorm_c_c():
    net = ConvNet(in_channels=3, resolution=32)
    norms = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 3
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    for m in norms:
        assert m.num_groups == m.num_channels == 128
        assert m.affine


def test_convnet_norm_output_is_per_sample_per_channel_standardised():
    torch.manual_seed(0)
    net = ConvNet(in_channels=3, resolution=16, width=16)
    norms = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    # random affine parameters, undone below, so the check does not pass by the identity affine
    with torch.no_grad():
        for m in norms:
            m.weight.uniform_(0.5, 2.0)
            m.bias.uniform_(-1.0, 1.0)
    captured = []

    def hook(module, inputs, output):  # clone: the following ReLU is in place
        captured.append((module, output.detach().clone()))

    handles = [m.register_forward_hook(hook) for m in norms]
    # samples of wildly different scale and offset: batch statistics would not standardise them
    x = torch.randn(4, 3, 16, 16) * torch.tensor([0.1, 1.0, 10.0, 100.0]).view(4, 1, 1, 1)
    x = x + torch.tensor([-5.0, 0.0, 5.0, 50.0]).view(4, 1, 1, 1)
    with torch.no_grad():
        net(x)
    for h in handles:
        h.remove()
    assert len(captured) == 3
    for module, out in captured:
        w = module.weight.view(1, -1, 1, 1)
        b = module.bias.view(1, -1, 1, 1)
        z = (out - b) / w
        mean = z.mean(dim=(2, 3))
        std = z.std(dim=(2, 3), unbiased=False)
        assert mean.shape == (4, 16)
        assert torch.allclose(mean, torch.zeros_like(mean), atol=1e-4)
        assert torch.allclose(std, torch.ones_like(std), atol=2e-2)


# ----------------------------------------------------------------------------------------------
# ResNetAP-10
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("resolution", [32, 64, 128])
def test_resnetap10_embed_is_512d(resolution):
    torch.manual_seed(0)
    net = ResNetAP10(in_channels=3, resolution=resolution)
    assert net.feature_dim == 512
    with torch.no_grad():
        assert net.embed(torch.randn(1, 3, resolution, resolution)).shape == (1, 512)


def test_resnetap10_small_resolution_rejected_or_informative():
    torch.manual_seed(0)
    try:
        net = ResNetAP10(in_channels=3, resolution=8)
    except ValueError:
        return
    with torch.no_grad():
        f = net.embed(torch.randn(4, 3, 8, 8))
    assert (f - f[:1]).abs().max() > 1e-2  # different images, different features


def test_resnetap10_one_channel_input():
    net = ResNetAP10(in_channels=1, resolution=32)
    with torch.no_grad():
        assert net(torch.randn(2, 1, 32, 32)).shape == (2, 512)


@pytest.mark.parametrize("resolution", [32, 128])
def test_resnetap10_has_no_strided_convs_and_downsamples_by_avgpool(resolution):
    net = ResNetAP10(in_channels=3, resolution=resolution)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert convs
    assert all(m.stride == (1, 1) for m in convs)
    assert not any(isinstance(m, nn.MaxPool2d) for m in net.modules())
    pools = [m for m in net.modules() if isinstance(m, nn.AvgPool2d)]
    # 3 downsampling blocks, each pooling its main path and its shortcut; + stem pool above 64 px
    assert len(pools) == 6 + (resolution > 64)
    assert all(m.kernel_size == 2 for m in pools)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())

    sizes = []
    handles = [b.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[1:])))
               for b in net.blocks]
    with torch.no_grad():
        net.embed(torch.randn(1, 3, resolution, resolution))
    for h in handles:
        h.remove()
    s = resolution // 2 if resolution > 64 else resolution
    assert sizes == [(64, s, s), (128, s // 2, s // 2), (256, s // 4, s // 4),
                     (512, s // 8, s // 8)]


# ----------------------------------------------------------------------------------------------
# build_backbone and the backbone registry
# ----------------------------------------------------------------------------------------------


def test_build_backbone_known_names():
    assert isinstance(build_backbone("convnet3", in_channels=3, resolution=32), ConvNet)
    assert isinstance(build_backbone("resnetap10", in_channels=3, resolution=32), ResNetAP10)


def test_build_backbone_unknown_name_lists_choices():
    with pytest.raises(ValueError, match="nope") as e:
        build_backbone("nope", in_channels=3, resolution=32)
    for name in BACKBONES:
        assert name in str(e.value)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_forward_backward_finite(name):
    torch.manual_seed(0)
    channels = 3
    net = build_backbone(name, in_channels=channels, resolution=16)
    assert isinstance(net.feature_dim, int) and net.feature_dim > 0
    x = torch.randn(2, channels, 16, 16, requires_grad=True)
    f = net.embed(x)
    assert f.shape == (2, net.feature_dim)
    assert torch.isfinite(f).all()
    (f**2).mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_is_per_sample(name):
    """Instance norm, not batch norm: a sample's feature does not depend on its batch-mates."""
    torch.manual_seed(0)
    net = build_backbone(name, in_channels=3, resolution=16)
    net.train()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        alone = net.embed(x[:1])
        together = net.embed(torch.cat([x[:1], 100 * x[1:]]))
    assert torch.allclose(alone, together[:1], atol=1e-5)


# ----------------------------------------------------------------------------------------------
# HashingNetwork
# ----------------------------------------------------------------------------------------------


class _ConstHead(nn.Module):
    def __init__(self, values: torch.Tensor) -> None:
        super().__init__()
        self.values = values

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.values.expand(f.shape[0], -1)


def test_hashing_network_forward_and_encode_signs():
    backbone = ConvNet(in_channels=1, resolution=8, width=4)
    values = torch.tensor([[0.5, -0.2, 0.0, -0.0, 3.0, -1e-8]])
    net = HashingNetwork(backbone, _ConstHead(values))
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(net(x), values.expand(2, -1))
    codes = net.encode(x)
    assert codes.dtype == torch.int8
    expected = torch.tensor([1, -1, 1, 1, 1, -1], dtype=torch.int8).expand(2, -1)
    assert torch.equal(codes, expected)


def test_hashing_network_encode_matches_sign_of_linear_head():
    torch.manual_seed(0)
    backbone = ConvNet(in_channels=3, resolution=8, width=8)
    head = nn.Linear(backbone.feature_dim, 12)
    net = HashingNetwork(backbone, head)
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        v = head(backbone.embed(x))
    codes = net.encode(x)
    assert codes.shape == (5, 12)
    assert set(codes.unique().tolist()) <= {-1, 1}
    assert torch.equal(codes, torch.where(v >= 0, 1, -1).to(torch.int8))


# ----------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------


def test_registry_register_get_names():
    reg: Registry[int] = Registry("widget")

    @reg.register("b")
    def make_b() -> int:
        return 2

    reg.register("a")(lambda: 1)
    assert make_b() == 2  # the decorator returns the factory unchanged
    assert reg.get("a")() == 1 and reg.get("b")() == 2
    assert reg.names() == ["a", "b"]
    assert list(reg) == ["a", "b"]
    assert "a" in reg and "c" not in reg


def test_registry_duplicate_registration_raises():
    reg: Registry[int] = Registry("widget")
    reg.register("a")(lambda: 1)
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        reg.register("a")(lambda: 2)
    assert reg.get("a")() == 1  # the first registration survives


def test_registry_unknown_name_lists_choices():
    reg: Registry[int] = Registry("widget")
    reg.register("zeta")(lambda: 1)
    reg.register("alpha")(lambda: 2)
    with pytest.raises(ValueError) as e:
        reg.get("gamma")
    msg = str(e.value)
    assert "unknown widget 'gamma'" in msg
    assert "alpha, zeta" in msg
