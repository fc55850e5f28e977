import pytest
import torch

from renderssl.errors import InputError
from renderssl.models.dropout import Dropout, keep_mask


def test_keep_mask_rate_matches_the_rounded_probability():
    torch.manual_seed(0)
    n = 2_000_000
    for p in (0.1, 0.5, 0.9):
        rate = 1.0 - keep_mask(torch.Size([n]), p).float().mean().item()
        assert rate == pytest.approx(round(p * 65536) / 65536, abs=5 * (p * (1 - p) / n) ** 0.5)  # 5 binomial sigma


def test_entries_are_independent_across_the_four_lanes_of_a_draw():
    torch.manual_seed(1)
    keep = keep_mask(torch.Size([400_000, 4]), 0.5).float()  # each row: the 4 int16 lanes of one int64 draw
    corr = torch.corrcoef(keep.T)
    assert (corr - torch.eye(4)).abs().max() < 0.01  # 400k samples: 1 / sqrt(n) = 0.0016


def test_dropout_scales_the_kept_values_and_its_gradient_is_the_same_mask():
    torch.manual_seed(2)
    layer = Dropout(0.25).train()
    x = torch.rand(64, 256, dtype=torch.float64) + 1.0
    x.requires_grad_(True)
    y = layer(x)
    y.sum().backward()
    kept = y != 0
    scale = 1.0 / (1.0 - round(0.25 * 65536) / 65536)
    assert torch.allclose(y[kept], x[kept] * scale, rtol=0, atol=1e-15)
    assert torch.equal(x.grad, kept.double() * scale)
    assert y.dtype == torch.float64


def test_eval_and_zero_p_are_the_identity_and_bad_p_is_refused():
    x = torch.randn(10)
    assert Dropout(0.3).eval()(x) is x
    assert Dropout(0.0).train()(x) is x
    with pytest.raises(InputError, match="p must be in"):
        Dropout(1.0)
