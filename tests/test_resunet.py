"""ResUNet (GNT's feature network): output size and stride, odd intermediate sizes, per-image independence
of instance norm (against BatchNorm, which mixes the batch), gradients to the first conv, GNT's parameter
names, and the parameter count computed by hand from the layout."""

import pytest
import torch

from renderssl.errors import InputError
from renderssl.models.encoders.resunet import ResUNet, ResUNetConfig


@pytest.mark.parametrize("H, W", [(64, 48), (320, 240)])
def test_output_shape_and_stride_gnt_preset(H, W):
    net = ResUNet()  # GNT: layers (3, 4, 6), widths 64/128/256, 32 output channels
    with torch.no_grad():
        out = net(torch.rand(1, 3, H, W))
    assert net.stride == 4 and net.out_channels == 32
    assert out.shape == (1, 32, H // 4, W // 4)
    assert bool(torch.isfinite(out).all())


def test_odd_intermediate_sizes_are_resized_to_the_skip():
    net = ResUNet(ResUNetConfig(preset="tiny"))
    with torch.no_grad():
        out = net(torch.rand(2, 3, 36, 60))  # 1/8: 5 x 8, 1/16: 3 x 4 (odd intermediate sizes)
    assert out.shape == (2, 16, 9, 15)


def test_bad_inputs_are_input_errors():
    net = ResUNet(ResUNetConfig(preset="tiny"))
    with pytest.raises(InputError, match="divisible by 4"):
        net(torch.rand(1, 3, 42, 64))
    with pytest.raises(InputError, match="> 16"):
        net(torch.rand(1, 3, 16, 64))
    with pytest.raises(InputError, match=r"\(N, 3, H, W\)"):
        net(torch.rand(3, 64, 64))
    with pytest.raises(InputError, match="resunet.norm"):
        ResUNetConfig(norm="group")
    with pytest.raises(InputError, match="resunet.layers"):
        ResUNetConfig(layers=(3, 4))
    with pytest.raises(InputError, match="resunet.preset"):
        ResUNetConfig(preset="huge")


def test_instance_norm_keeps_images_independent_unlike_batch_norm():
    """Changing image 1 of a batch leaves image 0's features unchanged with instance norm (GNT), in
    training mode too; with BatchNorm (training statistics) image 0's features move."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g)
    y = x.clone()
    y[1] = torch.rand(3, 32, 32, generator=g)
    cfg = dict(layers=(1, 1, 1), base_channels=8, out_channels=8, preset=None)
    torch.manual_seed(0)
    inst = ResUNet(ResUNetConfig(norm="instance", **cfg)).train()
    torch.manual_seed(0)
    batch = ResUNet(ResUNetConfig(norm="batch", **cfg)).train()
    with torch.no_grad():
        torch.testing.assert_close(inst(x)[0], inst(y)[0], rtol=0, atol=1e-5)
        torch.testing.assert_close(inst(x[:1])[0], inst(x)[0], rtol=0, atol=1e-5)  # batch size irrelevant
        assert float((batch(x)[0] - batch(y)[0]).abs().max()) > 1e-3


def test_gradient_reaches_conv1_and_the_input():
    net = ResUNet(ResUNetConfig(preset="tiny"))
    x = torch.rand(2, 3, 32, 48, requires_grad=True)
    net(x).square().mean().backward()
    assert net.conv1.weight.grad is not None and float(net.conv1.weight.grad.abs().sum()) > 0
    assert float(x.grad.abs().sum()) > 0


def test_gnt_parameter_names():
    keys = set(ResUNet().state_dict())
    expected = {
        "conv1.weight", "bn1.weight", "bn1.bias",
        "layer1.0.conv1.weight", "layer1.0.bn1.weight", "layer1.0.conv2.weight", "layer1.0.bn2.bias",
        "layer1.0.downsample.0.weight", "layer1.0.downsample.1.weight", "layer1.2.conv2.weight",
        "layer2.0.downsample.0.weight", "layer2.3.bn2.weight", "layer3.0.downsample.1.bias", "layer3.5.conv1.weight",
        "upconv3.conv.conv.weight", "upconv3.conv.conv.bias", "upconv3.conv.bn.weight",
        "iconv3.conv.weight", "iconv3.bn.bias", "upconv2.conv.conv.weight", "upconv2.conv.bn.bias",
        "iconv2.conv.weight", "iconv2.conv.bias", "out_conv.weight", "out_conv.bias",
    }
    assert expected <= keys
    assert not any(k.startswith(("layer4", "fc", "maxpool")) for k in keys)
    assert "layer1.1.downsample.0.weight" not in keys  # only a stage's first block has one
    assert ResUNet().state_dict()["layer3.0.conv1.weight"].shape == (256, 128, 3, 3)
    assert ResUNet().state_dict()["iconv2.conv.weight"].shape == (32, 128, 3, 3)


def test_parameter_count_by_hand():
    """layers (1, 1, 1), base 4, out 8, counted from the layout (norms: 2 x channels)."""
    net = ResUNet(ResUNetConfig(preset=None, layers=(1, 1, 1), base_channels=4, out_channels=8))
    stem = 3 * 4 * 49 + 2 * 4  # conv1 7x7 no bias + bn1

    def block(i, o):  # two 3x3 convs without bias, two norms, downsample 1x1 + norm (stride 2 every stage)
        return i * o * 9 + 2 * o + o * o * 9 + 2 * o + i * o + 2 * o

    def dec(i, o):  # 3x3 conv with bias + norm
        return i * o * 9 + o + 2 * o

    encoder = block(4, 4) + block(4, 8) + block(8, 16)
    decoder = dec(16, 8) + dec(8 + 8, 8) + dec(8, 4) + dec(4 + 4, 8)
    out = 8 * 8 + 8
    assert stem + encoder + decoder + out == 8872  # the same sum worked out on paper
    assert sum(p.numel() for p in net.parameters()) == 8872
