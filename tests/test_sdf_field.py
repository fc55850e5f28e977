"""models.heads.sdf_field: PonderV2's volume field against analytic SDFs, finite differences and the
NeuS renderer (a sphere written into the volume renders its analytic depth)."""

import pytest
import torch
from torch import nn

from renderssl.errors import InputError
from renderssl.geometry import Cameras, intrinsics_matrix
from renderssl.models.heads.sdf_field import (
    IFNetDecoder,
    RGBDecoder,
    SDFDecoder,
    SDFFieldConfig,
    SemanticDecoder,
    VolumeSDFField,
    unit_cube_to_grid,
)
from renderssl.models.volume import UNIT_BOX, densify
from renderssl.models.volume import voxel_centres as grid_voxel_centres
from renderssl.render.grid import trilinear_lookup
from renderssl.render.volume import eikonal_loss, neus_sample, render_neus
from renderssl.render.volume.neus_upsample import sampling_sdf

f64 = torch.float64
HALF = 0.55  # PonderV2's collider: rays start and end on the box ±0.55 (the volume itself tiles ±0.5)


class ChannelZeroSDF(nn.Module):
    """Identity decoder path for tests: sdf = looked-up channel 0, zero geometry feature."""

    def __init__(self, geo_dim: int):
        super().__init__()
        self.geo_dim = geo_dim

    def forward(self, points, feats):
        return torch.cat([feats[..., :1], feats.new_zeros(feats.shape[:-1] + (self.geo_dim,))], dim=-1)


def voxel_centres(shape_zyx, dtype=f64):
    """Unit-cube positions (Z, Y, X, 3) of the voxel centres of a grid tiling [-0.5, 0.5]^3 (densify's cells)."""
    Z, Y, X = shape_zyx
    return grid_voxel_centres((X, Y, Z), UNIT_BOX, dtype=dtype)


def sdf_volume(sdf_fn, shape_zyx=(48, 64, 64), channels=4, dtype=f64):
    """(1, channels, Z, Y, X) with the analytic SDF in channel 0, zeros elsewhere."""
    vol = torch.zeros(1, channels, *shape_zyx, dtype=dtype)
    vol[0, 0] = sdf_fn(voxel_centres(shape_zyx, dtype))
    return vol


def identity_field(channels=4, semantic_dim=0, dtype=f64):
    field = VolumeSDFField(SDFFieldConfig(volume_channels=channels, hidden=8, geometry_feature_dim=2,
                                          semantic_dim=semantic_dim)).to(dtype)
    field.sdf_decoder = ChannelZeroSDF(2)
    return field


CENTRE = torch.tensor([0.08, -0.05, 0.03], dtype=f64)
RADIUS = 0.22


def sphere_sdf(p):
    return (p - CENTRE).norm(dim=-1) - RADIUS


def ray_box(o, d, lo=-HALF, hi=HALF):
    """Slab intersection of rays (R, 3) with the cube -> near, far (R,)."""
    inv = 1.0 / d
    t0, t1 = (lo - o) * inv, (hi - o) * inv
    return torch.minimum(t0, t1).amax(-1).clamp_min(0.01), torch.maximum(t0, t1).amin(-1)


def ray_sphere(o, d):
    """First hit distance (R,) of unit rays with the sphere, NaN for a miss."""
    oc = o - CENTRE
    b = (oc * d).sum(-1)
    disc = b**2 - ((oc * oc).sum(-1) - RADIUS**2)
    return -b - disc.sqrt()


def camera_rays(eye, target, size=12, fov_px=14.0, dtype=f64):
    """Unit rays (size², 3) of an OpenCV pinhole camera at ``eye`` looking at ``target``."""
    fwd = torch.nn.functional.normalize(target - eye, dim=0)
    right = torch.nn.functional.normalize(torch.linalg.cross(fwd, torch.tensor([0, 0, 1.0], dtype=dtype)), dim=0)
    down = torch.linalg.cross(fwd, right)
    c2w = torch.eye(4, dtype=dtype)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, fwd, eye
    K = intrinsics_matrix(fov_px, fov_px, size / 2, size / 2, dtype=dtype)
    cams = Cameras(K=K[None], c2w=c2w[None], width=size, height=size)
    o, d = cams.rays(normalize=True)
    return o.reshape(-1, 3), d.reshape(-1, 3)


# ---- normalisation and decoders ------------------------------------------------------------------
def test_unit_cube_to_grid_puts_minus_one_one_at_the_corner_cell_centres_by_hand():
    # (X, Y, Z) = (4, 8, 2) cells over [-0.5, 0.5]^3: cell edges 1/4, 1/8, 1/2, corner centres ±(3/8, 7/16, 1/4)
    corners = torch.tensor([[-3 / 8, -7 / 16, -1 / 4], [3 / 8, 7 / 16, 1 / 4]], dtype=f64)
    torch.testing.assert_close(unit_cube_to_grid(corners, (4, 8, 2)), torch.tensor([[-1.0] * 3, [1.0] * 3], dtype=f64))
    torch.testing.assert_close(unit_cube_to_grid(torch.zeros(1, 3, dtype=f64), (4, 8, 2)), torch.zeros(1, 3, dtype=f64))
    with pytest.raises(InputError, match="grid_shape"):
        unit_cube_to_grid(corners, (4, 1, 2))


def test_the_field_reads_a_densified_feature_back_at_its_cell_centre():
    """densify writes a point's feature into its cell; the field's lookup returns it at the cell's centre."""
    grid_shape = (4, 3, 2)  # (X, Y, Z)
    centres = grid_voxel_centres(grid_shape, dtype=f64).reshape(-1, 3)  # (24, 3)
    feats = torch.randn(len(centres), 2, dtype=f64)
    jitter = (torch.rand_like(centres) - 0.5) * 0.2 * torch.tensor([1 / 4, 1 / 3, 1 / 2], dtype=f64)  # inside each cell
    vol = densify(feats, centres + jitter, torch.zeros(len(centres), dtype=torch.long), 1, grid_shape)  # (1, 2, 2, 3, 4)
    field = VolumeSDFField(SDFFieldConfig(volume_channels=2, hidden=4, geometry_feature_dim=1, semantic_dim=0)).to(f64)
    _, looked_up = field.lookup(vol, centres[None])  # (1, 24, 2)
    torch.testing.assert_close(looked_up[0], feats)
    torch.testing.assert_close(trilinear_lookup(vol, unit_cube_to_grid(centres, grid_shape)[None], "zeros")[0], feats)


def test_decoders_have_the_official_widths_and_layers():
    sdf = SDFDecoder()
    assert [l.in_features for l in sdf.lins] == [128, 128] and sdf.lins[-1].out_features == 65
    assert [l.in_features for l in sdf.fc_c] == [64, 64] and sdf.fc_p is None  # points_factor 0
    rgb, sem = RGBDecoder(), SemanticDecoder()
    assert len(rgb.lins) == 1 and rgb.fc_c[0].in_features == 134 and rgb.lins[0].out_features == 3
    assert len(sem.lins) == 1 and sem.fc_c[0].in_features == 131 and sem.lins[0].out_features == 512
    field = VolumeSDFField()
    assert field.rgb_decoder.fc_c[0].in_features == 134 and field.semantic_decoder.fc_c[0].in_features == 131
    x = torch.rand(2, 5, 134)
    out = rgb(torch.rand(2, 5, 3), x)
    assert out.shape == (2, 5, 3) and (out > 0).all() and (out < 1).all()


def test_ifnet_decoder_matches_its_formula_by_hand():
    torch.manual_seed(0)
    dec = IFNetDecoder(4, 2, hidden=5, n_blocks=1, points_factor=0.5, activation=nn.Softplus(beta=100)).to(f64)
    p, f = torch.rand(7, 3, dtype=f64), torch.rand(7, 4, dtype=f64)
    act = nn.Softplus(beta=100)
    x = dec.fc_p(p) * 0.5
    x = act(dec.lins[0](x + dec.fc_c[0](f)))
    x = dec.lins[1](x + dec.fc_c[1](f))
    torch.testing.assert_close(dec(p, f), x)


def test_field_splits_geometry_and_appearance_halves():
    """The SDF depends on the first half of the channels only; the colour on both."""
    torch.manual_seed(0)
    field = VolumeSDFField(SDFFieldConfig(volume_channels=8, hidden=8, geometry_feature_dim=4, semantic_dim=6)).to(f64)
    vol = torch.randn(2, 8, 4, 5, 6, dtype=f64)
    pts, dirs = torch.rand(2, 3, 4, 3, dtype=f64) - 0.5, torch.nn.functional.normalize(torch.randn(2, 3, 4, 3, dtype=f64), dim=-1)
    out = field(vol, pts, dirs)
    assert out.sdf.shape == (2, 3, 4) and out.gradients.shape == (2, 3, 4, 3)
    assert out.rgb.shape == (2, 3, 4, 3) and out.semantic.shape == (2, 3, 4, 6)
    vol2 = vol.clone()
    vol2[:, 4:] += 1.0  # appearance half only
    out2 = field(vol2, pts, dirs)
    torch.testing.assert_close(out2.sdf, out.sdf)
    assert not torch.allclose(out2.rgb, out.rgb)
    # scenes are independent: scene 1's volume does not reach scene 0's points
    vol3 = vol.clone()
    vol3[1] += 1.0
    torch.testing.assert_close(field(vol3, pts, dirs).sdf[0], out.sdf[0])


def test_bad_inputs_name_the_argument():
    field = identity_field()
    with pytest.raises(InputError, match="volume"):
        field.bind(torch.zeros(1, 3, 4, 4, 4, dtype=f64))
    bound = field.bind(torch.zeros(2, 4, 4, 4, 4, dtype=f64))
    with pytest.raises(InputError, match="multiple"):
        bound.sdf(torch.zeros(3, 5, 3, dtype=f64))


# ---- gradients -----------------------------------------------------------------------------------
def test_gradient_matches_finite_differences_and_reaches_the_volume_twice():
    torch.manual_seed(0)
    field = VolumeSDFField(SDFFieldConfig(volume_channels=6, hidden=8, geometry_feature_dim=3, semantic_dim=0)).to(f64)
    vol = torch.randn(1, 6, 5, 6, 7, dtype=f64, requires_grad=True)
    pts = (torch.rand(1, 4, 3, 3, dtype=f64) - 0.5) * 0.9
    dirs = torch.nn.functional.normalize(torch.randn_like(pts), dim=-1)
    out = field(vol, pts, dirs)
    eps = 1e-6
    for axis in range(3):
        step = torch.zeros(3, dtype=f64)
        step[axis] = eps
        fd = (field(vol, pts + step, dirs).sdf - field(vol, pts - step, dirs).sdf) / (2 * eps)
        torch.testing.assert_close(out.gradients[..., axis], fd, atol=1e-6, rtol=1e-5)
    # second derivatives: the eikonal loss back-propagates into the volume and the SDF decoder
    eikonal_loss(out.gradients.reshape(-1, 3, 3)).backward()
    assert vol.grad is not None and vol.grad[:, :3].abs().sum() > 0
    assert field.sdf_decoder.lins[0].weight.grad.abs().sum() > 0


def test_gradgradcheck_of_the_sdf_through_the_lookup_and_decoder():
    torch.manual_seed(1)
    field = VolumeSDFField(SDFFieldConfig(volume_channels=4, hidden=4, geometry_feature_dim=2, semantic_dim=0)).to(f64)
    vol = torch.randn(1, 4, 3, 4, 5, dtype=f64)
    pts = ((torch.rand(1, 5, 3, dtype=f64) - 0.5) * 0.9).requires_grad_(True)
    torch.autograd.gradgradcheck(lambda p: field.sdf_and_features(vol, p)[0], (pts,))


def test_eikonal_is_zero_for_a_plane_volume_and_small_for_a_sphere_volume():
    """An exact SDF written into the volume: a plane is linear, so trilinear interpolation is exact."""
    field = identity_field()
    normal = torch.nn.functional.normalize(torch.tensor([0.3, -0.5, 0.8], dtype=f64), dim=0)
    plane = sdf_volume(lambda p: (p * normal).sum(-1) - 0.05)
    pts = (torch.rand(1, 20, 8, 3, dtype=f64) - 0.5) * 0.95  # within the corner cells' centres (zeros outside)
    dirs = torch.nn.functional.normalize(torch.randn_like(pts), dim=-1)
    out = field(plane, pts, dirs)
    torch.testing.assert_close(out.gradients, normal.expand_as(out.gradients))
    assert eikonal_loss(out.gradients.reshape(-1, 8, 3)) < 1e-20
    sphere = sdf_volume(sphere_sdf)
    shell = CENTRE + torch.nn.functional.normalize(torch.randn(1, 20, 8, 3, dtype=f64), dim=-1) * RADIUS
    assert eikonal_loss(field(sphere, shell, dirs).gradients.reshape(-1, 8, 3)) < 1e-2


# ---- rendering with the NeuS renderer ------------------------------------------------------------
def test_sphere_volume_renders_the_analytic_depth_from_a_camera_outside():
    """Sphere SDF in channel 0 -> identity decoder -> render_neus (96 + 36 samples, 1 up-sample step):
    the rendered distance matches the analytic ray-sphere hit (median error < 1% of the radius)."""
    field = identity_field(semantic_dim=5)
    vol = sdf_volume(sphere_sdf)
    eye = torch.tensor([0.45, -0.48, 0.40], dtype=f64)  # inside the cube, outside the sphere
    o, d = camera_rays(eye, CENTRE)
    truth = ray_sphere(o, d)
    hit = ~truth.isnan()
    assert hit.sum() > 50
    o, d, truth = o[hit], d[hit], truth[hit]
    near, far = ray_box(o, d)
    out = render_neus(o, d, near, far, field.bind(vol), n_samples=96, n_importance=36, up_sample_steps=1,
                      variance=4000.0)
    err = (out.depth_normalized - truth).abs()
    assert err.median() < 0.01 * RADIUS
    assert (out.accumulation > 0.99).all()
    rgb, sem = field.split_features(out.features)
    assert rgb.shape == (len(truth), 3) and sem.shape == (len(truth), 5)


def test_two_scenes_render_scene_major():
    """Rays of scene b are rows b·R:(b+1)·R: scene 1 (empty) renders nothing, scene 0 the sphere."""
    field = identity_field()
    vol = torch.cat([sdf_volume(sphere_sdf), sdf_volume(lambda p: torch.ones_like(p[..., 0]))], dim=0)
    eye = torch.tensor([0.45, -0.48, 0.40], dtype=f64)
    o, d = camera_rays(eye, CENTRE, size=6)
    hit = ~ray_sphere(o, d).isnan()
    o, d = o[hit][:8], d[hit][:8]
    o2, d2 = torch.cat([o, o]), torch.cat([d, d])
    # inside the volume's corner cell centres: beyond them the zero padding ramps the empty scene's sdf 1 -> 0,
    # a surface-like fall the sharp s = 4000 would render
    near, far = ray_box(o2, d2, -0.48, 0.48)
    out = render_neus(o2, d2, near, far, field.bind(vol), variance=4000.0)
    assert (out.accumulation[:8] > 0.99).all() and (out.accumulation[8:] < 0.01).all()


def test_up_sampler_reads_the_same_normalised_volume_as_the_renderer():
    """PonderV2 bug (1) guard: the sampler's sdf is the renderer's sdf at the same unit-cube points,
    so the importance samples land on the analytic surface."""
    field = identity_field()
    vol = sdf_volume(sphere_sdf)
    bound = field.bind(vol)
    pts = (torch.rand(4, 7, 3, dtype=f64) - 0.5) * 0.95  # within the corner cells' centres (zeros outside)
    dirs = torch.nn.functional.normalize(torch.randn_like(pts), dim=-1)
    torch.testing.assert_close(bound.sdf(pts), bound(pts, dirs).sdf)
    torch.testing.assert_close(sampling_sdf(bound, None)(pts, dirs), sphere_sdf(pts), atol=2e-3, rtol=0)
    eye = torch.tensor([0.45, -0.48, 0.40], dtype=f64)
    o, d = camera_rays(eye, CENTRE, size=6)
    truth = ray_sphere(o, d)
    hit = ~truth.isnan()
    o, d, truth = o[hit], d[hit], truth[hit]
    near, far = ray_box(o, d)
    def near_surface(sdf_at):  # samples (R,) within 0.01 of the hit; coarse spacing is 0.013-0.017 here
        z = neus_sample(o, d, near, far, sdf_at, 96, 36, 1)
        return ((z - truth[:, None]).abs() < 0.01).sum(-1)

    assert (near_surface(sampling_sdf(bound, None)) >= 6).all()
    # PonderV2's sampler: un-normalised points fed to pts * 2 - 1, read about 0.5 off and 10% stretched: ~1.1 (p - 0.5)
    assert near_surface(lambda p, dirs: bound.sdf(1.1 * (p - 0.5))).float().mean() < 3
