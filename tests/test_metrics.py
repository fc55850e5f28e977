"""Tests for renderssl.eval.metrics and renderssl.eval.lpips against hand-computed values and slow twins."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from renderssl.errors import InputError
from renderssl.eval.lpips import LPIPS, MissingWeightsError, MissingWeightsWarning, try_load_lpips
from renderssl.eval.metrics import (
    DepthMeter,
    SegmentationMeter,
    confusion_matrix,
    depth_metrics,
    psnr,
    ssim,
)

# ----------------------------------------------------------------------------- PSNR


def test_psnr_of_known_mse():
    x = torch.zeros(2, 3, 8, 8)
    y = torch.full((2, 3, 8, 8), 0.1)  # MSE 0.01 -> 20 dB
    y[1] = 0.01  # MSE 1e-4 -> 40 dB
    assert torch.allclose(psnr(x, y), torch.tensor([20.0, 40.0]), atol=1e-4)
    assert psnr(x, x)[0] == math.inf


def test_psnr_mask_counts_only_masked_pixels():
    x = torch.zeros(1, 3, 4, 4)
    y = torch.full((1, 3, 4, 4), 0.3)
    y[..., :2, :] = 0.1  # top half error 0.1, bottom half 0.3
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    mask[..., :2, :] = True
    assert psnr(x, y, mask).item() == pytest.approx(20.0, abs=1e-4)
    assert psnr(x, y, mask[:, 0]).item() == pytest.approx(20.0, abs=1e-4)  # (B, H, W) mask
    # unmasked: MSE = (0.01 + 0.09) / 2 = 0.05
    assert psnr(x, y).item() == pytest.approx(-10 * math.log10(0.05), abs=1e-4)


def test_psnr_rejects_mismatched_shapes():
    with pytest.raises(InputError):
        psnr(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5))


# ----------------------------------------------------------------------------- SSIM


def _ssim_brute_force(x: np.ndarray, y: np.ndarray, sample_cov: bool = False) -> float:
    """Slow twin: Wang et al. SSIM, every 11x11 window fully inside the image, two-pass moments."""
    r = 5
    g1 = np.array([math.exp(-(i * i) / (2 * 1.5**2)) for i in range(-r, r + 1)])
    w = np.outer(g1, g1)
    w /= w.sum()
    c1, c2 = 0.01**2, 0.03**2
    norm = 121 / 120 if sample_cov else 1.0
    vals = []
    for c in range(x.shape[0]):
        for i in range(x.shape[1] - 2 * r):
            for j in range(x.shape[2] - 2 * r):
                a, b = x[c, i : i + 11, j : j + 11], y[c, i : i + 11, j : j + 11]
                ma, mb = (w * a).sum(), (w * b).sum()
                va = norm * (w * (a - ma) ** 2).sum()
                vb = norm * (w * (b - mb) ** 2).sum()
                cov = norm * (w * (a - ma) * (b - mb)).sum()
                vals.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_ssim_identical_is_one():
    x = torch.rand(2, 3, 24, 20, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-6)


@pytest.mark.parametrize("sample_cov", [False, True])
def test_ssim_matches_brute_force_window_loop(sample_cov):
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 14, 13, generator=gen, dtype=torch.float64)
    y = (x + 0.2 * torch.randn(x.shape, generator=gen, dtype=torch.float64)).clamp(0, 1)
    got = ssim(x, y, sample_covariance=sample_cov)
    want = [_ssim_brute_force(x[b].numpy(), y[b].numpy(), sample_cov) for b in range(2)]
    assert got.shape == (2,)
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), atol=1e-10)
    assert got[0] < 0.95  # noise actually changed something


def test_ssim_decreases_with_noise():
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(1, 3, 32, 32, generator=gen)
    noise = torch.randn(x.shape, generator=gen)
    scores = [ssim(x, (x + s * noise).clamp(0, 1)).item() for s in (0.0, 0.02, 0.1, 0.3)]
    assert scores[0] == pytest.approx(1.0, abs=1e-6)
    assert all(a > b for a, b in zip(scores, scores[1:]))


def test_ssim_rejects_images_smaller_than_window():
    with pytest.raises(InputError, match="11x11"):
        ssim(torch.rand(1, 3, 10, 32), torch.rand(1, 3, 10, 32))


# ----------------------------------------------------------------------------- LPIPS

# torchvision vgg16 `features` convs: (index, in channels, out channels), written out by hand
VGG16_CONVS = [
    (0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256), (14, 256, 256),
    (17, 256, 512), (19, 512, 512), (21, 512, 512), (24, 512, 512), (26, 512, 512), (28, 512, 512),
]
LIN_CHANNELS = [64, 128, 256, 512, 512]


def _random_weight_files(tmp_path, vgg_suffix=".pth"):
    gen = torch.Generator().manual_seed(3)
    vgg = {}
    for i, cin, cout in VGG16_CONVS:
        vgg[f"features.{i}.weight"] = torch.randn(cout, cin, 3, 3, generator=gen) * math.sqrt(2.0 / (9 * cin))
        vgg[f"features.{i}.bias"] = 0.01 * torch.randn(cout, generator=gen)
    vgg["classifier.0.weight"] = torch.randn(7, 5, generator=gen)  # non-`features` keys are ignored
    lin = {f"lin{l}.model.1.weight": torch.rand(1, c, 1, 1, generator=gen) for l, c in enumerate(LIN_CHANNELS)}
    vgg_path, lin_path = tmp_path / f"vgg16{vgg_suffix}", tmp_path / "vgg.pth"
    if vgg_suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(vgg, str(vgg_path))
    else:
        torch.save(vgg, vgg_path)
    torch.save(lin, lin_path)
    return vgg_path, lin_path, vgg, lin


def _lpips_twin(x, y, vgg, lin):
    """Slow functional twin of LPIPS-VGG written from the recipe, not from the module."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def feats(z):
        z = (2 * z - 1 - shift) / scale
        out = []
        blocks = [[0, 2], [5, 7], [10, 12, 14], [17, 19, 21], [24, 26, 28]]
        for bi, block in enumerate(blocks):
            if bi > 0:
                z = F.max_pool2d(z, 2)
            for i in block:
                z = F.relu(F.conv2d(z, vgg[f"features.{i}.weight"], vgg[f"features.{i}.bias"], padding=1))
            out.append(z)
        return out

    total = torch.zeros(x.shape[0])
    for l, (a, b) in enumerate(zip(feats(x), feats(y))):
        a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        total += (((a - b) ** 2) * lin[f"lin{l}.model.1.weight"].view(1, -1, 1, 1)).sum(1).mean((1, 2))
    return total


def test_lpips_loads_torchvision_and_lpips_names(tmp_path):
    vgg_path, lin_path, vgg, lin = _random_weight_files(tmp_path)
    model = LPIPS.from_files(vgg_path, lin_path)
    sd = model.state_dict()
    want = {k: v.shape for k, v in {**vgg, **lin}.items() if not k.startswith("classifier")}
    assert {k: v.shape for k, v in sd.items()} == want
    assert all(torch.equal(sd[k], vgg[k]) for k in want if k.startswith("features"))
    assert all(torch.equal(sd[k], lin[k]) for k in lin)


def test_lpips_loads_safetensors(tmp_path):
    pytest.importorskip("safetensors")
    vgg_path, lin_path, vgg, _ = _random_weight_files(tmp_path, ".safetensors")
    model = LPIPS.from_files(vgg_path, lin_path)
    assert torch.equal(model.state_dict()["features.28.weight"], vgg["features.28.weight"])


def test_lpips_values_match_twin_zero_for_identical_and_grad_flows(tmp_path):
    vgg_path, lin_path, vgg, lin = _random_weight_files(tmp_path)
    model = LPIPS.from_files(vgg_path, lin_path)
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(2, 3, 32, 32, generator=gen)
    y = (x + 0.3 * torch.randn(x.shape, generator=gen)).clamp(0, 1)

    d = model(x, y)
    assert d.shape == (2,) and not d.requires_grad  # metric mode: no graph
    assert (d > 0).all()
    assert torch.allclose(d, _lpips_twin(x, y, vgg, lin), rtol=1e-4, atol=1e-6)
    assert torch.allclose(model(x, x), torch.zeros(2), atol=1e-7)

    xg = x.clone().requires_grad_(True)
    loss = model(xg, y, grad=True).sum()
    loss.backward()
    assert torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())  # frozen
    model.train()
    assert not model.training  # stays in eval mode


def test_lpips_wrong_file_is_input_error(tmp_path):
    vgg_path, _, _, _ = _random_weight_files(tmp_path)
    alex_like = tmp_path / "alex.pth"
    torch.save({f"lin{l}.model.1.weight": torch.rand(1, c, 1, 1) for l, c in enumerate([64, 192, 384, 256, 256])}, alex_like)
    with pytest.raises(InputError, match="lin1.model.1.weight"):
        LPIPS.from_files(vgg_path, alex_like)


def test_lpips_missing_file_names_path(tmp_path):
    _, lin_path, _, _ = _random_weight_files(tmp_path)
    absent = tmp_path / "nowhere" / "vgg16-397923af.pth"
    with pytest.raises(MissingWeightsError, match="vgg16-397923af.pth") as err:
        LPIPS.from_files(absent, lin_path)
    assert isinstance(err.value, InputError) and "vgg_path" in str(err.value)
    with pytest.raises(MissingWeightsError, match="lin_path is not set"):
        LPIPS.from_files(absent, None)


def test_try_load_lpips_warns_once_and_returns_none(tmp_path):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        assert try_load_lpips({"vgg_path": None, "lin_path": str(tmp_path / "vgg.pth")}) is None
        assert try_load_lpips(None) is None
    assert len(rec) == 2 and all(issubclass(r.category, MissingWeightsWarning) for r in rec)
    assert "vgg_path is not set" in str(rec[0].message) and str(tmp_path / "vgg.pth") in str(rec[0].message)

    vgg_path, lin_path, _, _ = _random_weight_files(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert isinstance(try_load_lpips({"vgg_path": vgg_path, "lin_path": lin_path}), LPIPS)


# ----------------------------------------------------------------------------- segmentation

# pairs by hand (ignoring the -1 pixel): (0,0) (0,0) (0,1) (1,1) (1,2) (2,2) (2,1)
SEG_TARGET = torch.tensor([[[0, 0, 0, 1], [1, 2, -1, 2]]])
SEG_PRED = torch.tensor([[[0, 0, 1, 1], [2, 2, 0, 1]]])


def test_confusion_and_scores_by_hand():
    conf = confusion_matrix(SEG_PRED, SEG_TARGET, num_classes=4)
    want = torch.tensor([[2, 1, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]])
    assert torch.equal(conf, want)
    meter = SegmentationMeter(num_classes=4)
    meter.update(SEG_PRED, SEG_TARGET)
    out = meter.compute()
    # IoU: c0 2/(3+2-2)=2/3, c1 1/(2+3-1)=1/4, c2 1/(2+2-1)=1/3, c3 absent -> excluded
    assert out["miou"] == pytest.approx((2 / 3 + 1 / 4 + 1 / 3) / 3)  # = 5/12
    assert out["overall_acc"] == pytest.approx(4 / 7)
    assert out["mean_class_acc"] == pytest.approx((2 / 3 + 1 / 2 + 1 / 2) / 3)  # = 5/9
    assert math.isnan(out["iou"][3])


def test_ignore_index_excluded_and_configurable():
    pred2 = SEG_PRED.clone()
    pred2[0, 1, 2] = 3  # prediction at the ignored pixel must not matter
    base = confusion_matrix(SEG_PRED, SEG_TARGET, 4)
    assert torch.equal(confusion_matrix(pred2, SEG_TARGET, 4), base)
    t255 = SEG_TARGET.clone()
    t255[t255 == -1] = 255
    assert torch.equal(confusion_matrix(SEG_PRED, t255, 4, ignore_index=255), base)
    with pytest.raises(InputError):
        confusion_matrix(SEG_PRED, t255, 4)  # 255 is not a class and not ignored


def test_meter_accumulates_and_matches_brute_force():
    gen = torch.Generator().manual_seed(5)
    k = 5
    target = torch.randint(-1, k, (3, 6, 7), generator=gen)
    logits = torch.randn(3, k, 6, 7, generator=gen)
    pred = logits.argmax(1)
    brute = torch.zeros(k, k, dtype=torch.int64)
    for t, p in zip(target.flatten().tolist(), pred.flatten().tolist()):
        if t != -1:
            brute[t, p] += 1
    meter = SegmentationMeter(k)
    meter.update(logits[:1], target[:1])  # logits accepted
    meter.update(pred[1:], target[1:])
    assert torch.equal(meter.compute()["confusion"], brute)


# ----------------------------------------------------------------------------- depth

# gt 0 = invalid; valid pairs (gt, pred): (1, 1), (2, 4), (4, 3)
DEPTH_GT = torch.tensor([[[[1.0, 2.0], [4.0, 0.0]]]])
DEPTH_PRED = torch.tensor([[[[1.0, 4.0], [3.0, 5.0]]]])


def test_depth_metrics_by_hand():
    m = depth_metrics(DEPTH_PRED, DEPTH_GT)
    want = {
        "abs_rel": (0 + 2 / 2 + 1 / 4) / 3,
        "sq_rel": (0 + 4 / 2 + 1 / 4) / 3,
        "rmse": math.sqrt((0 + 4 + 1) / 3),
        "rmse_log": math.sqrt((0 + math.log(2) ** 2 + math.log(3 / 4) ** 2) / 3),
        "delta1": 1 / 3,  # ratios 1, 2, 4/3
        "delta2": 2 / 3,  # 1.25^2 = 1.5625
        "delta3": 2 / 3,  # 1.25^3 = 1.953 < 2
    }
    for k, v in want.items():
        assert m[k].item() == pytest.approx(v, abs=1e-9), k


def test_depth_invalid_and_max_depth_excluded():
    pred2 = DEPTH_PRED.clone()
    pred2[..., 1, 1] = 100.0  # at the gt == 0 pixel
    assert depth_metrics(pred2, DEPTH_GT)["rmse"].item() == pytest.approx(math.sqrt(5 / 3))
    m = depth_metrics(DEPTH_PRED, DEPTH_GT, max_depth=3.0)  # drops gt = 4: pairs (1, 1), (2, 4)
    # pred is clamped to max_depth (4 -> 3): abs_rel = (0 + |3 - 2| / 2) / 2
    assert m["abs_rel"].item() == pytest.approx(0.25)
    assert m["valid_pixels"].item() == 2


def test_depth_median_scaling():
    # medians: gt {1, 2, 4} -> 2, pred {1, 4, 3} -> 3; pred * 2/3 = {2/3, 8/3, 2}
    m = depth_metrics(DEPTH_PRED, DEPTH_GT, median_scaling=True)
    assert m["abs_rel"].item() == pytest.approx((1 / 3 + (2 / 3) / 2 + 2 / 4) / 3)
    # even count (numpy median = mean of middles): gt {1, 2} -> 1.5, pred {1, 4} -> 2.5
    m = depth_metrics(DEPTH_PRED, DEPTH_GT, max_depth=3.0, median_scaling=True)
    p = [1 * 0.6, 4 * 0.6]
    assert m["abs_rel"].item() == pytest.approx((abs(p[0] - 1) / 1 + abs(p[1] - 2) / 2) / 2)
    # scale invariance
    a = depth_metrics(DEPTH_PRED * 7.0, DEPTH_GT, median_scaling=True)["rmse"]
    b = depth_metrics(DEPTH_PRED, DEPTH_GT, median_scaling=True)["rmse"]
    assert torch.allclose(a, b)


def test_depth_meter_averages_per_image():
    gt = torch.stack([DEPTH_GT[0], torch.tensor([[[2.0, 2.0], [2.0, 2.0]]]), torch.zeros(1, 2, 2)])
    pred = torch.stack([DEPTH_PRED[0], torch.full((1, 2, 2), 3.0), torch.ones(1, 2, 2)])
    meter = DepthMeter()
    meter.update(pred[:2], gt[:2])
    meter.update(pred[2:], gt[2:])  # no valid pixel: skipped
    out = meter.compute()
    assert out["num_images"] == 2
    # per image: 5/12 and 1/2 -> mean 11/24 (pooled over pixels would be (1.25 + 2) / 7)
    assert out["abs_rel"] == pytest.approx((5 / 12 + 0.5) / 2)
    assert out["delta1"] == pytest.approx((1 / 3 + 0) / 2)
