"""Sparse convolutions against dense Conv3d / ConvTranspose3d on the same occupied voxels."""

import pytest
import torch
import torch.nn.functional as F

from renderssl.errors import InputError
from renderssl.models.encoders.sparse_conv import (
    CoordinateHash, SparseConv3d, SparseInverseConv3d, SparseTensor, SubMConv3d, sparse_conv, strided_map,
    submanifold_map,
)


def random_voxels(size=8, clouds=2, fill=0.3, channels=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    occupied = torch.rand(clouds, size, size, size, generator=g) < fill  # (B, X, Y, Z)
    b, x, y, z = occupied.nonzero(as_tuple=True)
    perm = torch.randperm(len(b), generator=g)  # row order must not matter
    coords, batch = torch.stack([x, y, z], 1)[perm], b[perm]
    feats = torch.randn(len(b), channels, generator=g, dtype=torch.float64)
    return coords, batch, feats


def _scatter_dense(dense, feats, coords, batch):
    dense = dense.clone()
    dense[batch, :, coords[:, 0], coords[:, 1], coords[:, 2]] = feats
    return dense


def read_dense(dense, coords, batch):
    return dense[batch, :, coords[:, 0], coords[:, 1], coords[:, 2]]  # (N, C)


def dense_weight(conv):
    return conv.weight.permute(0, 4, 1, 2, 3)  # (C_out, C_in, k, k, k) for F.conv3d


def compare_grads(sparse_out, dense_out, leaves_sparse, leaves_dense, seed=1):
    g = torch.Generator().manual_seed(seed)
    probe = torch.randn(sparse_out.shape, generator=g, dtype=sparse_out.dtype)
    gs = torch.autograd.grad((sparse_out * probe).sum(), leaves_sparse)
    gd = torch.autograd.grad((dense_out * probe).sum(), leaves_dense)
    return gs, gd


@pytest.mark.parametrize("kernel", [1, 3, 5])
def test_submanifold_equals_dense_conv3d(kernel):
    size, clouds = 7, 2
    coords, batch, feats = random_voxels(size, clouds)
    conv = SubMConv3d(3, 4, kernel, bias=True).double()
    feats.requires_grad_(True)
    out = conv(SparseTensor(feats, coords, batch)).features  # (N, 4)

    dense_in = _scatter_dense(feats.new_zeros(clouds, 3, size, size, size), feats, coords, batch)
    dense_out = F.conv3d(dense_in, dense_weight(conv), conv.bias, padding=kernel // 2)
    expected = read_dense(dense_out, coords, batch)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)

    gs, gd = compare_grads(out, expected, (feats, conv.weight, conv.bias), (feats, conv.weight, conv.bias))
    for a, b in zip(gs, gd):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernel,stride,padding", [(2, 2, 0), (3, 2, 1), (3, 2, 0)])
def test_strided_equals_dense_conv3d(kernel, stride, padding):
    size, clouds, margin = 8, 2, 4
    coords, batch, feats = random_voxels(size, clouds, fill=0.2)
    feats.requires_grad_(True)
    conv = SparseConv3d(3, 5, kernel, stride, padding).double()
    out = conv(SparseTensor(feats, coords, batch))
    assert out.stride == stride

    big = size + margin  # room for every output voxel the sparse conv generates
    dense_in = _scatter_dense(feats.new_zeros(clouds, 3, big, big, big), feats, coords, batch)
    dense_out = F.conv3d(dense_in, dense_weight(conv), stride=stride, padding=padding)  # (B, 5, q, q, q)
    assert int(out.coords.max()) < dense_out.shape[-1]
    expected = read_dense(dense_out, out.coords, out.batch)
    torch.testing.assert_close(out.features, expected, rtol=1e-12, atol=1e-12)

    # Every coarse voxel some input reaches is an output, and no other: the dense result is zero elsewhere.
    rest = dense_out.clone()
    rest[out.batch, :, out.coords[:, 0], out.coords[:, 1], out.coords[:, 2]] = 0
    assert rest.abs().max() == 0
    assert len(torch.unique(out.coords[:, 0] * 1000 + out.coords[:, 1] * 10 + out.coords[:, 2] + out.batch * 10**6)) == len(out)

    gs, gd = compare_grads(out.features, expected, (feats, conv.weight), (feats, conv.weight))
    for a, b in zip(gs, gd):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernel,padding", [(2, 0), (3, 1)])
def test_inverse_conv_restores_coordinates_and_equals_conv_transpose(kernel, padding):
    size, clouds = 8, 2
    coords, batch, feats = random_voxels(size, clouds, fill=0.25)
    down = SparseConv3d(3, 4, kernel, 2, padding).double()
    up = SparseInverseConv3d(4, 3, kernel, 2, padding).double()
    x = SparseTensor(feats, coords, batch)
    coarse = down(x)
    coarse_feats = coarse.features.detach().requires_grad_(True)
    restored = up(coarse.replace_features(coarse_feats))
    assert restored.stride == 1
    assert torch.equal(restored.coords, coords) and torch.equal(restored.batch, batch)

    q = int(coarse.coords.max()) + 1
    dense_coarse = _scatter_dense(coarse_feats.new_zeros(clouds, 4, q, q, q), coarse_feats, coarse.coords, coarse.batch)
    w_t = up.weight.permute(4, 0, 1, 2, 3)  # (C_in, C_out, k, k, k) for conv_transpose3d
    dense_out = F.conv_transpose3d(dense_coarse, w_t, stride=2, padding=padding, output_padding=1)
    assert dense_out.shape[-1] >= size
    expected = read_dense(dense_out, coords, batch)
    torch.testing.assert_close(restored.features, expected, rtol=1e-12, atol=1e-12)
    gs, gd = compare_grads(restored.features, expected, (coarse_feats, up.weight), (coarse_feats, up.weight))
    for a, b in zip(gs, gd):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_fast_conv_equals_reference_twin_and_passes_gradcheck():
    coords, batch, feats = random_voxels(6, 2, channels=2)
    feats.requires_grad_(True)
    conv = SubMConv3d(2, 3, 3).double()
    x = SparseTensor(feats, coords, batch)
    fast, slow = conv(x).features, conv(x, reference=True).features
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)
    for a, b in zip(*compare_grads(fast, slow, (feats, conv.weight), (feats, conv.weight))):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)

    subm = submanifold_map(coords, batch, 3)
    weight = torch.randn(27, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f, w: sparse_conv(f, w, subm), (feats, weight))
    strided = strided_map(coords, batch, 2, 2, 0).kernel_map
    w2 = torch.randn(8, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f, w: sparse_conv(f, w, strided), (feats, w2))
    coarse = torch.randn(strided.num_out, 3, dtype=torch.float64, requires_grad=True)
    w3 = torch.randn(8, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f, w: sparse_conv(f, w, strided.swapped()), (coarse, w3))


def test_hash_lookup_misses_out_of_range_and_other_clouds():
    coords = torch.tensor([[0, 0, 0], [5, 1, 2]])
    batch = torch.tensor([0, 1])
    h = CoordinateHash.build(coords, batch)
    query = torch.tensor([[0, 0, 0], [5, 1, 2], [5, 1, 2], [-1, 0, 0], [0, 0, 1 << 17]])
    qbatch = torch.tensor([0, 1, 0, 0, 0])
    assert h.lookup(query, qbatch).tolist() == [0, 1, -1, -1, -1]


def test_bad_inputs_are_named():
    with pytest.raises(InputError, match="odd"):
        SubMConv3d(3, 4, 2)
    with pytest.raises(InputError, match="input channels"):
        SubMConv3d(3, 4)(SparseTensor(torch.zeros(2, 5), torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, dtype=torch.long)))
    with pytest.raises(InputError, match="no SparseConv3d"):
        SparseInverseConv3d(4, 3)(SparseTensor(torch.zeros(1, 4), torch.zeros(1, 3, dtype=torch.long),
                                               torch.zeros(1, dtype=torch.long), stride=2))
