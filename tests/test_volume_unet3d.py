"""UNet3D (PonderV2 UNet3D-v1m2): paper-scale shapes on the meta device, a hand count of parameters,
odd grid sizes, gradients to the input."""

import pytest
import torch
from torch import nn

from renderssl.errors import InputError
from renderssl.models.volume import UNet3D


def test_paper_scale_shape_on_meta():
    with torch.device("meta"):
        net = UNet3D(96, 128)
        out = net(torch.empty(2, 96, 32, 128, 128))
    assert out.shape == (2, 128, 32, 128, 128)
    assert net.widths == (32, 64, 128, 256)


def test_parameter_count_by_hand():
    net = UNet3D(96, 128)
    k = 27
    encoders = sum(2 * i + i * o * k for i, o in [(96, 32), (32, 64), (64, 128), (128, 256)])  # BN(in) + conv, no bias
    decoders = sum(i * o * k + o + 2 * o + o * o * k for i, o in [(256, 128), (128, 64), (64, 32)])  # tconv + BN + conv
    final = 32 * 128 + 128
    assert sum(p.numel() for p in net.parameters()) == encoders + decoders + final
    single = net.encoders[0].basic_module
    assert [type(m) for m in single] == [nn.BatchNorm3d, nn.Conv3d, nn.ReLU]  # order "bcr"


@pytest.mark.parametrize("size", [(4, 8, 8), (3, 5, 7), (1, 6, 9)])
def test_odd_sizes_and_gradients(size):
    torch.manual_seed(0)
    net = UNet3D(5, 3, f_maps=4, levels=4)
    x = torch.randn(2, 5, *size, requires_grad=True)
    out = net(x)
    assert out.shape == (2, 3, *size)
    out.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.parameters())


def test_bad_input():
    net = UNet3D(5, 3, f_maps=4, levels=2)
    with pytest.raises(InputError, match="x must be"):
        net(torch.randn(1, 4, 4, 4, 4))
    with pytest.raises(InputError, match="levels"):
        UNet3D(5, 3, levels=0)
