"""densify: a brute-force per-cell mean (dict loop), gradients to every point, no mixing between scenes;
voxel_centres / centre_bounds: trilinear_lookup reads a cell back exactly at its centre."""

from collections import defaultdict

import pytest
import torch

from renderssl.errors import InputError
from renderssl.models.volume import UNIT_BOX, centre_bounds, densify, voxel_centres, voxel_size
from renderssl.render.grid import trilinear_lookup, world_to_grid

GRID = (5, 4, 3)  # (X, Y, Z), all different so that axis mix-ups show


def random_scene_points(n=(60, 40), seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    points = torch.rand(sum(n), 3, generator=g, dtype=dtype) - 0.5  # (N, 3) in the unit cube
    points[0] = torch.tensor([0.5, 0.5, 0.5], dtype=dtype)  # upper face: last cell
    points[1] = torch.tensor([-0.5, -0.5, -0.5], dtype=dtype)
    batch = torch.repeat_interleave(torch.arange(len(n)), torch.tensor(n))
    features = torch.randn(sum(n), 4, generator=g, dtype=dtype)
    return points, batch, features


def brute_force(features, points, batch, num_scenes, grid_shape):
    X, Y, Z = grid_shape
    cells = defaultdict(list)
    for f, p, b in zip(features, points.tolist(), batch.tolist()):
        ix = min(int((p[0] + 0.5) * X), X - 1)
        iy = min(int((p[1] + 0.5) * Y), Y - 1)
        iz = min(int((p[2] + 0.5) * Z), Z - 1)
        cells[(b, iz, iy, ix)].append(f)
    out = torch.zeros(num_scenes, features.shape[1], Z, Y, X, dtype=features.dtype)
    for (b, iz, iy, ix), fs in cells.items():
        out[b, :, iz, iy, ix] = torch.stack(fs).mean(0)
    return out


def test_equals_brute_force_mean():
    points, batch, features = random_scene_points()
    out = densify(features, points, batch, 2, GRID)
    assert out.shape == (2, 4, 3, 4, 5)
    torch.testing.assert_close(out, brute_force(features, points, batch, 2, GRID))
    assert out[0, :, 2, 3, 4].abs().sum() > 0  # the point on the upper face landed in the last cell


def test_every_point_gets_gradient_and_gradcheck():
    points, batch, features = random_scene_points(n=(20, 15))
    features.requires_grad_(True)
    weights = torch.randn(2, 4, 3, 4, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (densify(features, points, batch, 2, GRID) * weights).sum().backward()
    assert bool((features.grad.abs().sum(dim=1) > 0).all())
    torch.autograd.gradcheck(lambda f: densify(f, points, batch, 2, GRID), (features.detach().requires_grad_(True),))


def test_scenes_do_not_mix():
    points, batch, features = random_scene_points()
    both = densify(features, points, batch, 3, GRID)  # a third, empty scene
    alone = densify(features[batch == 1], points[batch == 1], torch.zeros(int((batch == 1).sum()), dtype=torch.long), 1, GRID)
    torch.testing.assert_close(both[1], alone[0])
    assert both[2].abs().sum() == 0
    changed = features.clone()
    changed[batch == 0] += 10
    torch.testing.assert_close(densify(changed, points, batch, 3, GRID)[1], both[1])


def test_voxel_centres_layout():
    centres = voxel_centres(GRID, dtype=torch.float64)  # (Z, Y, X, 3)
    assert centres.shape == (3, 4, 5, 3)
    size = voxel_size(GRID, dtype=torch.float64)
    torch.testing.assert_close(size, torch.tensor([0.2, 0.25, 1 / 3], dtype=torch.float64))
    torch.testing.assert_close(centres[0, 0, 0], torch.tensor([-0.4, -0.375, -0.5 + 1 / 6], dtype=torch.float64))
    torch.testing.assert_close(centres[2, 1, 4], torch.tensor([0.4, -0.125, 0.5 - 1 / 6], dtype=torch.float64))
    # one point per centre, densified: cell (x, y, z) receives exactly its own centre
    flat = centres.reshape(-1, 3)
    out = densify(flat, flat, torch.zeros(len(flat), dtype=torch.long), 1, GRID)  # (1, 3, Z, Y, X)
    torch.testing.assert_close(out[0].permute(1, 2, 3, 0), centres)


@pytest.mark.parametrize("box", [UNIT_BOX, ((-0.55, -0.6, -0.5), (0.55, 0.4, 0.7))])
def test_trilinear_lookup_reads_cells_at_their_centres(box):
    g = torch.Generator().manual_seed(2)
    points, batch, features = random_scene_points(seed=3)
    lo, hi = torch.tensor(box[0], dtype=torch.float64), torch.tensor(box[1], dtype=torch.float64)
    points = lo + (points + 0.5) * (hi - lo)  # into the box
    volume = densify(features, points, batch, 2, GRID, box)  # (2, 4, Z, Y, X)
    volume = volume + torch.randn(volume.shape, generator=g, dtype=torch.float64) * (volume == 0)  # fill empties
    centres = voxel_centres(GRID, box, dtype=torch.float64).reshape(1, -1, 3).expand(2, -1, -1)  # (2, Z Y X, 3)
    read = trilinear_lookup(volume, world_to_grid(centres, *centre_bounds(GRID, box, dtype=torch.float64)))  # (2, ZYX, 4)
    torch.testing.assert_close(read, volume.reshape(2, 4, -1).transpose(1, 2), rtol=0, atol=1e-12)


def test_bad_input():
    points, batch, features = random_scene_points()
    with pytest.raises(InputError, match="batch"):
        densify(features, points, batch, 1, GRID)
    with pytest.raises(InputError, match="points_unit"):
        densify(features, points[:, :2], batch, 2, GRID)
    with pytest.raises(InputError, match="grid_shape"):
        densify(features, points, batch, 2, (4, 4))
    with pytest.raises(InputError, match="box"):
        densify(features, points, batch, 2, GRID, ((0, 0, 0), (1, 1, 0)))
