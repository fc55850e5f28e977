"""eval/surfaces.py against independent references: analytic sphere SDFs (marching cubes within half a
voxel, vertices where the grid's own trilinear lookup reads the level), hand-computed Chamfer / F-score
of concentric spheres, a brute-force nearest-neighbour twin, a tiny PLY face reader, triangulated
meshes sampled by area (the analytic patch samplers' twin), and the renderer's exact depth."""

import math

import numpy as np
import pytest
import torch

from renderssl.data.formats.ply import read_ply
from renderssl.data.synthetic import SyntheticConfig, make_scene_layout, render_layout, render_rays, scene_cameras
from renderssl.errors import InputError
from renderssl.eval.surfaces import (
    chamfer_and_fscore, extract_mesh, nearest_distances, sample_ellipsoids, sample_laterals, sample_surface,
    sdf_on_grid, surface_patches, synthetic_surface_points, write_mesh_ply,
)
from renderssl.render.grid import trilinear_lookup, world_to_grid

CENTRE = torch.tensor([0.2, -0.1, 0.3])
RADIUS = 0.4
LO, HI = (-0.5, -0.7, -0.3), (0.9, 0.6, 1.0)  # off-centre box, a different margin on each axis
RES = (29, 23, 31)  # (x, y, z): anisotropic voxels


def sphere_sdf(p):
    return (p - CENTRE.to(p)).norm(dim=-1) - RADIUS


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---- grid and marching cubes ----------------------------------------------------------------------
def test_sdf_on_grid_matches_a_meshgrid_evaluation_in_any_chunking():
    xs, ys, zs = (torch.linspace(lo, hi, n, dtype=torch.float64) for lo, hi, n in zip(LO, HI, RES))
    z, y, x = torch.meshgrid(zs, ys, xs, indexing="ij")  # (Z, Y, X) each
    want = sphere_sdf(torch.stack([x, y, z], dim=-1))  # (Z, Y, X)
    for chunk in (997, 1 << 16):
        got = sdf_on_grid(sphere_sdf, LO, HI, RES, chunk=chunk, dtype=torch.float64)
        assert got.shape == (RES[2], RES[1], RES[0])
        torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=0)


def test_marching_cubes_on_an_analytic_sphere_lies_on_the_radius_within_half_a_voxel():
    vertices, faces = extract_mesh(sphere_sdf, LO, HI, resolution=RES)
    voxel = max((h - l) / (n - 1) for l, h, n in zip(LO, HI, RES))
    r = (vertices - CENTRE).norm(dim=-1)
    assert vertices.shape[0] > 500 and faces.shape[1] == 3
    assert float((r - RADIUS).abs().max()) < 0.5 * voxel
    for sign in (1.0, -1.0):  # normals towards increasing SDF: out of the sphere, into it for -SDF
        vertices, faces = extract_mesh(lambda p: sign * sphere_sdf(p), LO, HI, resolution=RES)
        tri = vertices[faces]  # (F, 3, 3)
        normal = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
        assert bool((sign * (normal * (tri.mean(1) - CENTRE)).sum(-1) >= 0).all())


def test_mesh_vertices_are_where_the_grids_trilinear_lookup_reads_the_level():
    # marching cubes interpolates linearly along voxel edges, where trilinear interpolation is linear:
    # the same volume read by render/grid.py at the world vertices gives the level (the conventions agree)
    volume = sdf_on_grid(sphere_sdf, LO, HI, RES, dtype=torch.float64)  # (Z, Y, X)
    for level in (0.0, 0.05):
        vertices, _ = extract_mesh(volume, LO, HI, level=level)
        coords = world_to_grid(vertices.double(), torch.tensor(LO), torch.tensor(HI))[None]  # (1, V, 3)
        values = trilinear_lookup(volume.double()[None, None], coords)[0, :, 0]  # (V,)
        assert float((values - level).abs().max()) < 1e-5


def test_no_level_crossing_gives_an_empty_mesh_and_the_worst_scores():
    vertices, faces = extract_mesh(torch.ones(4, 5, 6), LO, HI)
    assert vertices.shape == (0, 3) and faces.shape == (0, 3)
    assert sample_surface(vertices, faces, 10, gen()).shape == (0, 3)
    scores = chamfer_and_fscore(torch.zeros(0, 3), torch.rand(5, 3))
    assert scores["chamfer"] == math.inf and scores["fscore"] == 0.0


def test_bad_inputs_name_the_argument():
    with pytest.raises(InputError, match="resolution"):
        extract_mesh(sphere_sdf, LO, HI)
    with pytest.raises(InputError, match="box_max"):
        extract_mesh(torch.zeros(3, 3, 3), HI, LO)
    with pytest.raises(InputError, match="non-finite"):
        extract_mesh(torch.full((3, 3, 3), float("nan")), LO, HI)
    with pytest.raises(InputError, match="gt_points"):
        chamfer_and_fscore(torch.rand(3, 3), torch.zeros(0, 3))
    with pytest.raises(InputError, match="generator"):
        sample_surface(torch.rand(3, 3), torch.tensor([[0, 1, 2]]), 4, None)


# ---- PLY ------------------------------------------------------------------------------------------
def read_faces(path):
    """A tiny binary little-endian PLY face reader (vertex x y z float32, faces as uchar + 3 int32)."""
    data = path.read_bytes()
    body = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:body].decode("ascii").split("\n")
    nv = int(next(h for h in header if h.startswith("element vertex")).split()[-1])
    nf = int(next(h for h in header if h.startswith("element face")).split()[-1])
    rec = np.frombuffer(data, dtype=[("n", "u1"), ("v", "<i4", (3,))], count=nf, offset=body + 12 * nv)
    assert (rec["n"] == 3).all()
    return torch.from_numpy(rec["v"].astype(np.int64))


def test_write_mesh_ply_round_trips_and_leaves_no_temporary_file(tmp_path):
    vertices, faces = extract_mesh(sphere_sdf, LO, HI, resolution=(9, 8, 10))
    path = write_mesh_ply(tmp_path / "sub" / "mesh.ply", vertices, faces)
    assert torch.equal(read_ply(path).points, vertices.float())  # the existing reader, vertex element
    assert torch.equal(read_faces(path), faces)
    assert [p.name for p in path.parent.iterdir()] == ["mesh.ply"]
    with pytest.raises(InputError, match="faces"):
        write_mesh_ply(tmp_path / "bad.ply", vertices, faces + vertices.shape[0])


# ---- mesh sampling --------------------------------------------------------------------------------
def test_sample_surface_is_area_weighted_and_uniform_on_each_triangle():
    vertices = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [3, 0, 1], [3, 3, 1], [0, 3, 1]], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])  # areas 0.5 and 4.5
    p = sample_surface(vertices, faces, 40000, gen())
    upper = p[:, 2] > 0.5
    assert abs(float(upper.double().mean()) - 0.9) < 0.01
    lower = p[~upper]  # uniform on the unit right triangle: mean (1/3, 1/3), all inside
    assert bool((lower[:, :2] >= 0).all() and (lower[:, :2].sum(-1) <= 1 + 1e-9).all())
    torch.testing.assert_close(lower[:, :2].mean(0), torch.tensor([1 / 3, 1 / 3], dtype=torch.float64), atol=0.01, rtol=0)


# ---- Chamfer and F-score --------------------------------------------------------------------------
def test_nearest_distances_kdtree_and_blocks_match_brute_force():
    g = gen(1)
    q, r = torch.rand(700, 3, generator=g) * 4 + 3, torch.rand(900, 3, generator=g) * 4 + 3
    want = torch.cdist(q.double(), r.double(), compute_mode="donot_use_mm_for_euclid_dist").amin(1).float()
    for backend in ("kdtree", "blocks"):
        torch.testing.assert_close(nearest_distances(q, r, backend, block=128), want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", ["kdtree", "blocks"])
def test_a_mesh_compared_with_itself_scores_zero_and_one(backend):
    vertices, faces = extract_mesh(sphere_sdf, LO, HI, resolution=RES)
    points = sample_surface(vertices, faces, 5000, gen())
    s = chamfer_and_fscore(points, points, backend=backend)
    assert s["chamfer"] < 1e-6 and s["fscore"] == 1.0 and s["precision"] == s["recall"] == 1.0


@pytest.mark.parametrize("backend", ["kdtree", "blocks"])
def test_spheres_one_centimetre_apart_by_hand(backend):
    # the same directions on radii r and r + 1 cm: every point's nearest neighbour on the other sphere is
    # its own direction's (|r u - (r + d) v|^2 >= d^2), so every distance is 1 cm exactly
    u = torch.nn.functional.normalize(torch.randn(6000, 3, generator=gen(), dtype=torch.float64), dim=-1)
    a, b = (0.5 * u + 2.0).float(), (0.51 * u + 2.0).float()
    s = chamfer_and_fscore(a, b, threshold=0.05, backend=backend)
    assert abs(s["chamfer"] - 0.01) < 2e-5 and abs(s["accuracy"] - 0.01) < 2e-5 and abs(s["completeness"] - 0.01) < 2e-5
    assert s["fscore"] == 1.0
    s = chamfer_and_fscore(a, b, threshold=0.005, backend=backend)
    assert s["fscore"] == 0.0 and s["precision"] == s["recall"] == 0.0


# ---- the true surface of synthetic scenes ---------------------------------------------------------
def uv_sphere_mesh(radii, n_theta=120, n_phi=240):
    """A triangulated ellipsoid (the patch sampler's twin, sampled by sample_surface)."""
    theta = torch.linspace(0, math.pi, n_theta + 1, dtype=torch.float64)
    phi = torch.linspace(0, 2 * math.pi, n_phi + 1, dtype=torch.float64)
    t, p = torch.meshgrid(theta, phi, indexing="ij")
    unit = torch.stack([t.sin() * p.cos(), t.sin() * p.sin(), t.cos()], dim=-1)  # (T + 1, P + 1, 3)
    return grid_mesh(unit * torch.tensor(radii, dtype=torch.float64))


def frustum_side_mesh(r0, r1, h, n_s=100, n_phi=240):
    s = torch.linspace(0, 1, n_s + 1, dtype=torch.float64)
    phi = torch.linspace(0, 2 * math.pi, n_phi + 1, dtype=torch.float64)
    s, p = torch.meshgrid(s, phi, indexing="ij")
    rho = r0 + (r1 - r0) * s
    return grid_mesh(torch.stack([rho * p.cos(), rho * p.sin(), h * s], dim=-1))


def grid_mesh(points):
    """(A + 1, B + 1, 3) parametric grid -> (vertices, faces), two triangles per cell."""
    A, B = points.shape[0] - 1, points.shape[1] - 1
    idx = torch.arange((A + 1) * (B + 1)).reshape(A + 1, B + 1)
    a, b, c, d = idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]
    faces = torch.cat([torch.stack([a, b, c], -1).reshape(-1, 3), torch.stack([a, c, d], -1).reshape(-1, 3)])
    return points.reshape(-1, 3), faces


def ks_distance(x, y):
    grid = torch.cat([x, y]).sort().values
    cdf = lambda v: torch.searchsorted(v.sort().values, grid, right=True).double() / v.numel()  # noqa: E731
    return float((cdf(x) - cdf(y)).abs().max())


def test_ellipsoid_and_frustum_samplers_match_sampled_triangulations():
    n = 30000
    radii = (0.1, 0.15, 0.6)
    params = torch.tensor([list(radii) + [0.0] * 6], dtype=torch.float64).expand(n, 9)
    p, kept = sample_ellipsoids(params, gen(0))
    p = p[kept]
    assert float((((p / torch.tensor(radii, dtype=torch.float64)) ** 2).sum(-1) - 1).abs().max()) < 1e-9
    ref = sample_surface(*uv_sphere_mesh(radii), p.shape[0], gen(1))
    direction = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen(2), dtype=torch.float64), dim=-1)
    unif = torch.tensor(radii, dtype=torch.float64) * direction  # no area correction: wrong
    for axis in range(3):
        assert ks_distance(p[:, axis], ref[:, axis]) < 0.02
    assert max(ks_distance(unif[:, a], ref[:, a]) for a in range(3)) > 0.04  # it sees a missing area correction
    for r0, r1, h in ((0.4, 0.0, 0.9), (0.15, 0.15, 1.5), (0.1, 0.3, 0.5)):
        p, _ = sample_laterals(torch.tensor([[r0, r1, h] + [0.0] * 6], dtype=torch.float64).expand(n, 9), gen(3))
        ref = sample_surface(*frustum_side_mesh(r0, r1, h), n, gen(4))
        assert ks_distance(p[:, 2], ref[:, 2]) < 0.02
        assert float((p[:, :2].norm(dim=-1) - (r0 + (r1 - r0) * p[:, 2] / h)).abs().max()) < 1e-9


def test_patch_areas_of_box_and_frustum_objects_by_hand():
    box = make_scene_layout(3, SyntheticConfig(kind="object"))  # a box (checked)
    hx, hy, hz = box.size[0].double().tolist()
    assert torch.isclose(surface_patches(box)[2].sum(), torch.tensor(8 * (hx * hy + hx * hz + hy * hz), dtype=torch.float64))
    lamp = make_scene_layout(1, SyntheticConfig(kind="object"))  # a frustum (checked)
    r0, r1, h = lamp.size[0].double().tolist()
    want = math.pi * (r0 + r1) * math.hypot(r1 - r0, h) + math.pi * (r0 * r0 + r1 * r1)
    assert math.isclose(float(surface_patches(lamp)[2].sum()), want, rel_tol=1e-6)


def test_synthetic_surface_points_lie_on_the_rendered_depth():
    # every sample sits on the depth the renderer casts through its own pixel position in some camera
    layout = make_scene_layout(2, SyntheticConfig(num_views=6))  # a room
    cams = scene_cameras(layout)
    points = synthetic_surface_points(layout, 3000, gen(), cameras=cams).double()  # (N, 3)
    uv, z = cams.project(points.float())  # (V, N, 2), (V, N)
    origins, dirs = cams.rays_at(uv, normalize=False)  # (V, N, 3) unit camera z: t is z-depth
    t = render_rays(layout, origins.reshape(-1, 3), dirs.reshape(-1, 3))["t"].reshape(z.shape)  # (V, N)
    back = origins.double() + t[..., None].double() * dirs.double()  # (V, N, 3) back-projected GT depth
    inside = (z > 0) & (uv[..., 0] >= 0) & (uv[..., 0] <= cams.width) & (uv[..., 1] >= 0) & (uv[..., 1] <= cams.height)
    err = torch.where(inside & t.isfinite(), (back - points).norm(dim=-1), math.inf).amin(dim=0)  # (N,)
    assert float(err.max()) < 1e-3 * float(z.abs().max())
    # and no sample is hidden in front of what a camera sees: depth at the sample <= the sample's depth
    assert bool(((t >= z * (1 - 2e-3)) | ~inside).any(dim=0).all())


def test_synthetic_surface_and_back_projected_depth_maps_cover_each_other():
    layout = make_scene_layout(3, SyntheticConfig(kind="object", num_views=8, width=96, height=96))  # a box
    cams = scene_cameras(layout)
    depth = render_layout(layout, cams)["depth"]  # (V, 1, H, W)
    cloud = cams.backproject_depth(depth)[depth[:, 0] > 0]  # (M, 3) back-projected GT depth
    points = synthetic_surface_points(layout, 30000, gen(), cameras=cams)  # (N, 3)
    footprint = 2.4 * 2 * math.tan(math.radians(65 / 2)) / 96  # pixel size at the camera distance
    d_pixels = nearest_distances(cloud, points)  # every rendered pixel is near a sample
    d_points = nearest_distances(points, cloud)  # every sample is near a rendered pixel
    assert float(d_pixels.max()) < 0.05 and float(d_points.quantile(0.99)) < footprint
    # hidden surfaces are excluded: the bottom face (z = -hz) is sampled only without the visibility test
    hx, hy, hz = layout.size[0].tolist()
    bottom = lambda p: float((p[:, 2] < -hz + 1e-4).double().mean())  # noqa: E731
    local = points.double() @ layout.rotation[0].double()  # (N, 3) box frame (origin 0)
    seen_bottom = local[local[:, 2] < -hz + 1e-4]  # only within the visibility tolerance of an edge
    assert bottom(points) < 1e-3 and bool(((hx - seen_bottom[:, 0].abs()).minimum(hy - seen_bottom[:, 1].abs()) < 1e-3).all())
    everything = synthetic_surface_points(layout, 20000, gen(), visible_only=False)
    assert abs(bottom(everything) - hx * hy / (2 * (hx * hy + hx * hz + hy * hz))) < 0.015
