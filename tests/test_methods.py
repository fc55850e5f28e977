"""MAE and GMAE: masking, patchify, activation ranges, the fixed camera, losses, and learning."""

import pytest
import torch

from renderssl.methods.base import StepContext

from renderssl.data.masking import mask_to_pixels, patchify, random_masking, unpatchify, unshuffle
from renderssl.methods.gmae import GMAE, GMAEConfig, fixed_camera
from renderssl.methods.mae import MAE, MAEConfig, norm_pix_target
from renderssl.models.encoders import ViTConfig

ENC = dict(preset=None, embed_dim=48, depth=2, num_heads=3, img_size=32, patch_size=8)


def tiny_mae(**kw):
    return MAE(MAEConfig(encoder=ViTConfig(**ENC), decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2, **kw))


def tiny_gmae(**kw):
    return GMAE(GMAEConfig(encoder=ViTConfig(**ENC), decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2, num_gaussians=64, **kw))


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.75, 0.9])
def test_masking_keeps_the_fraction_and_unshuffles(ratio):
    B, L, D = 4, 49, 5
    mask = random_masking(B, L, ratio, torch.Generator().manual_seed(0))
    n_keep = int(L * (1 - ratio))
    assert mask.ids_keep.shape == (B, n_keep)
    assert torch.equal(mask.mask.sum(1), torch.full((B,), float(L - n_keep)))
    tokens = torch.randn(B, L, D)
    visible = mask.gather_visible(tokens)
    filler = torch.full((B, L - n_keep, D), 7.0)
    restored = unshuffle(torch.cat([visible, filler], 1), mask.ids_restore)
    kept = mask.mask == 0
    assert torch.equal(restored[kept], tokens[kept])  # visible tokens back in place
    assert bool((restored[~kept] == 7.0).all())  # fillers exactly where the mask says removed
    # Each kept index is marked visible in the mask.
    assert bool((torch.gather(mask.mask, 1, mask.ids_keep) == 0).all())


def test_masking_is_a_function_of_the_generator():
    a = random_masking(2, 16, 0.75, torch.Generator().manual_seed(3))
    b = random_masking(2, 16, 0.75, torch.Generator().manual_seed(3))
    c = random_masking(2, 16, 0.75, torch.Generator().manual_seed(4))
    assert torch.equal(a.mask, b.mask) and not torch.equal(a.mask, c.mask)


def test_patchify_layout_and_round_trip():
    x = torch.rand(2, 3, 16, 24)
    p = patchify(x, 8)
    assert p.shape == (2, 6, 192)
    # Patch (row 1, col 2) flattened as (p, p, C): element (i, j, c) at (i * 8 + j) * 3 + c.
    torch.testing.assert_close(p[1, 1 * 3 + 2].reshape(8, 8, 3), x[1, :, 8:16, 16:24].permute(1, 2, 0))
    torch.testing.assert_close(unpatchify(p, 8, (2, 3)), x)
    m = torch.tensor([[0.0, 1, 0, 0, 0, 1]])
    pix = mask_to_pixels(m, 8, (2, 3))
    assert pix[0, 0, :8, 8:16].eq(1).all() and pix[0, 0, :8, :8].eq(0).all() and pix.sum() == 128


def test_norm_pix_target_hand_case():
    t = torch.tensor([[[1.0, 2.0, 3.0]]])
    torch.testing.assert_close(norm_pix_target(t), torch.tensor([[[-1.0, 0.0, 1.0]]]) / (1 + 1e-6) ** 0.5)


def test_gmae_gaussians_respect_activation_ranges():
    torch.manual_seed(0)
    model = tiny_gmae()
    with torch.no_grad():
        model.gaussian_pred.weight.mul_(200)  # push pre-activations far into the tails
        g, mask, cam = model.predict_gaussians(torch.rand(3, 3, 32, 32), torch.Generator().manual_seed(0))
    c, d = model.config.max_scale, model.config.camera_distance
    assert g.means.shape == (3, 64, 3) and g.colors.shape == (3, 64, 3)
    assert bool((g.means[..., :2].abs() <= 1).all()) and bool(((g.means[..., 2] >= d - 1) & (g.means[..., 2] <= d + 1)).all())
    assert bool(((g.scales >= 0) & (g.scales <= c)).all()) and g.scales.max() > 0.9 * c
    for t in (g.quats, g.colors, g.opacities):
        assert bool(((t >= 0) & (t <= 1)).all())
    assert cam.model == "ortho" and cam.batch_shape == (3, 1)


def test_fixed_camera_maps_view_extent_to_the_image_border():
    cam = fixed_camera(32, 16, 0.8, 1, "cpu")
    uv, z = cam.project(torch.tensor([[[[-0.8, 0.0, 2.0], [0.8, 0.4, 1.5]]]]))
    torch.testing.assert_close(uv[0, 0], torch.tensor([[0.0, 8.0], [32.0, 16.0]]))
    torch.testing.assert_close(z[0, 0], torch.tensor([2.0, 1.5]))


def _one_gaussian(x: float, z: float, scale: float = 0.05):
    from renderssl.render.splat import Gaussians

    return Gaussians(torch.tensor([[[x, 0.0, z]]]), torch.tensor([[[1.0, 0.0, 0.0, 0.0]]]), torch.full((1, 1, 3), scale),
                     torch.tensor([[0.9]]), torch.ones(1, 1, 3))


@pytest.mark.parametrize("camera", ["orthographic", "pinhole"])
def test_fixed_camera_renders_the_view_plane_centre_and_right_border(camera):
    from renderssl.geometry import Cameras
    from renderssl.render.splat import rasterize

    W, H, extent, d = 64, 32, 0.8, 2.0
    cam = fixed_camera(W, H, extent, 1, "cpu", camera=camera, camera_distance=d)
    assert cam.model == {"orthographic": "ortho", "pinhole": "pinhole"}[camera]
    # A Gaussian at (0, 0, d): its splat is point-symmetric about the image centre.
    centre = rasterize(_one_gaussian(0.0, d), cam, backend="dense").alpha[0, 0, 0]  # (H, W)
    assert centre.max() > 0.5
    torch.testing.assert_close(centre, centre.flip(0, 1))
    # A Gaussian at (extent, 0, d): seen through the same camera on an image twice as wide (same K), its
    # splat is mirror-symmetric about u = W, the right border of the W-wide image.
    wide = Cameras(cam.K, cam.c2w, 2 * W, H, cam.model)
    border = rasterize(_one_gaussian(extent, d), wide, backend="dense").alpha[0, 0, 0]  # (H, 2W)
    assert border.max() > 0.5 and int(border.sum(0).argmax()) in (W - 1, W)
    torch.testing.assert_close(border[:, W - 8:W], border[:, W:W + 8].flip(1))


def test_pinhole_footprint_grows_closer_to_the_camera_orthographic_does_not():
    from renderssl.render.splat import rasterize

    near_z, far_z = 1.5, 2.5
    footprint = {}
    for camera in ("orthographic", "pinhole"):
        cam = fixed_camera(64, 64, 0.8, 1, "cpu", camera=camera, camera_distance=2.0)
        alpha = {z: rasterize(_one_gaussian(0.0, z), cam, backend="dense").alpha[0, 0, 0] for z in (near_z, far_z)}
        footprint[camera] = {z: int((a > 0.3).sum()) for z, a in alpha.items()}
        if camera == "orthographic":
            assert torch.equal(alpha[near_z], alpha[far_z])  # depth changes nothing on screen
    assert footprint["orthographic"][near_z] == footprint["orthographic"][far_z] > 0
    # Pinhole: screen radius ~ 1 / z, area ~ 1 / z^2: (2.5 / 1.5)^2 = 2.8 (eps2d blur and pixels shave it).
    ratio = footprint["pinhole"][near_z] / footprint["pinhole"][far_z]
    assert 2.2 < ratio < 3.3, footprint


def test_gmae_pinhole_camera_trains_previews_and_layers():
    from renderssl.evaluate import gmae_edges, gmae_layer_pictures

    with pytest.raises(Exception, match="gmae.camera: 'fisheye' is not one of"):
        GMAEConfig(camera="fisheye")
    torch.manual_seed(0)
    model = tiny_gmae(camera="pinhole")
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    out = model({"image": images}, StepContext(torch.Generator().manual_seed(0)))
    out.loss.backward()
    assert out.extras["camera"].model == "pinhole" and torch.isfinite(out.loss)
    panels = model.preview_panels({"image": images}, out)
    assert [n for n, _ in panels][3:] == ["gaussian centres", "depth", "front half", "back half"]
    assert all(img.shape == (3, 32, 32) and torch.isfinite(img).all() for _, img in panels)
    model.eval()
    edges = gmae_edges(model, images, num_layers=4)
    assert edges.shape == (2, 32, 32) and bool(((edges >= 0) & (edges <= 1)).all())
    fronts, masks = gmae_layer_pictures(model, images, num_layers=4)
    assert len(fronts) == len(masks) == 2 and fronts[0].shape == masks[0].shape == (3, 32, 32)


def test_gmae_masked_loss_ignores_visible_pixels():
    model = tiny_gmae()
    images, rendered = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    pixel_mask = torch.zeros(2, 1, 32, 32)
    pixel_mask[:, :, :16] = 1
    changed = images.clone()
    changed[:, :, 16:] = 0.0  # visible half only
    a = model.forward_loss(images, rendered, pixel_mask)
    assert torch.equal(a, model.forward_loss(changed, rendered, pixel_mask))
    torch.testing.assert_close(a, ((rendered - images)[:, :, :16] ** 2).mean())
    model.config.loss = "all"
    torch.testing.assert_close(model.forward_loss(images, rendered, pixel_mask), ((rendered - images) ** 2).mean())


@pytest.mark.parametrize(
    "factory,ratio",
    [(tiny_mae, 0.6), (tiny_gmae, 0.6), (lambda: tiny_gmae(loss="masked_norm"), 0.85)],  # norm: harder (paper Table 5c)
    ids=["mae", "gmae", "gmae-masked-norm"],
)
def test_tiny_model_reduces_its_loss_on_a_fixed_batch(factory, ratio):
    torch.manual_seed(0)
    model = factory()
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    images = (images + images.roll(1, -1) + images.roll(1, -2)) / 3  # some spatial structure
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(40):
        out = model({"image": images}, StepContext(torch.Generator().manual_seed(0)))  # same mask every step
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < ratio * losses[0], losses[::8]
    names = [n for n, _ in model.preview_panels({"image": images}, out)]
    assert names[:3] == ["input", "masked", names[2]] and all(img.shape[0] == 3 for _, img in model.preview_panels({"image": images}, out))
