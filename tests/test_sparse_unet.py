"""SparseUNet: Pointcept's names and shapes, per-point outputs, batch independence, and fitting."""

import torch

from renderssl.models.encoders.sparse_unet import SparseUNet, SparseUNetConfig


def random_clouds(counts=(300, 200), channels=6, seed=0, extent=2.0):
    g = torch.Generator().manual_seed(seed)
    points = torch.rand(sum(counts), 3, generator=g) * extent  # (N, 3)
    feats = torch.randn(sum(counts), channels, generator=g)  # (N, C)
    offset = torch.cumsum(torch.tensor(counts), 0)
    return points, feats, offset


def test_base_preset_matches_pointcept_spunet_v1m1_keys_shapes_and_size():
    model = SparseUNet(SparseUNetConfig(preset="base", in_channels=6, num_classes=20))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = {  # SpUNet-v1m1 (spconv 2.x weight layout (C_out, k, k, k, C_in)), in 6, 20 classes
        "conv_input.0.weight": (32, 5, 5, 5, 6),
        "conv_input.1.running_var": (32,),
        "down.0.0.weight": (32, 2, 2, 2, 32),
        "down.3.0.weight": (256, 2, 2, 2, 128),
        "enc.0.block1.conv2.weight": (32, 3, 3, 3, 32),
        "enc.3.block5.bn2.weight": (256,),
        "up.3.0.weight": (256, 2, 2, 2, 256),
        "up.0.0.weight": (96, 2, 2, 2, 96),
        "dec.3.block0.conv1.weight": (256, 3, 3, 3, 384),
        "dec.3.block0.proj.0.weight": (256, 1, 1, 1, 384),
        "dec.0.block0.conv1.weight": (96, 3, 3, 3, 128),
        "dec.0.block1.conv1.weight": (96, 3, 3, 3, 96),
        "final.weight": (20, 1, 1, 1, 96),
        "final.bias": (20,),
    }
    for key, shape in expected.items():
        assert shapes.get(key) == shape, key
    assert "enc.0.block0.proj.0.weight" not in shapes  # identity shortcut when widths agree
    assert len([k for k in shapes if k.startswith("enc.3.block")]) == 6 * 12  # 6 blocks x (2 convs + 2 BN x 5 entries)
    params = sum(p.numel() for p in model.parameters())
    assert abs(params / 1e6 - 39.2) < 0.1  # PonderV2 Table 9: SparseUNet 39.2M


def test_encoder_output_per_point_and_shared_within_a_voxel():
    model = SparseUNet(SparseUNetConfig(preset="small", in_channels=6, grid_size=0.25)).eval()
    points, feats, offset = random_clouds()
    with torch.no_grad():
        out = model(points, feats, offset)
    assert out.shape == (500, 32)
    voxels, inverse = model.voxelize(points, feats, offset)
    assert len(voxels) < 500  # the clouds share voxels, so averaging happens
    same = inverse[:, None] == inverse[None, :]  # (N, N)
    i, j = same.nonzero(as_tuple=True)
    torch.testing.assert_close(out[i], out[j])
    # The voxel feature is the mean of its points' features.
    torch.testing.assert_close(voxels.features[inverse[0]], feats[inverse == inverse[0]].mean(0))


def test_clouds_in_a_batch_are_independent_and_translation_invariant():
    model = SparseUNet(SparseUNetConfig(preset="small", in_channels=6, grid_size=0.25)).eval()
    points, feats, offset = random_clouds()
    with torch.no_grad():
        both = model(points, feats, offset)
        first = model(points[:300], feats[:300], offset[:1])
        shifted = model(points[:300] + torch.tensor([2.0, -3.0, 0.5]), feats[:300], offset[:1])  # whole voxels
    torch.testing.assert_close(both[:300], first, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shifted, first, atol=1e-5, rtol=1e-5)


def test_tiny_sparse_unet_fits_a_fixed_segmentation_batch():
    torch.manual_seed(0)
    points, feats, offset = random_clouds((400, 300), channels=3, seed=1)
    labels = (points[:, 0] > 1.0).long() + 2 * (points[:, 2] > 1.2).long()  # 4 spatial classes
    model = SparseUNet(SparseUNetConfig(preset="small", in_channels=3, num_classes=4, grid_size=0.2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = torch.nn.functional.cross_entropy(model(points, feats, offset), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses
    assert all(p.grad is not None for p in model.parameters())
