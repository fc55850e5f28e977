"""GMAE (Gaussian Masked Autoencoder): an MAE whose decoder emits 3D Gaussians that are splatted.

As the paper describes: a ViT encoder on the visible patches (mask ratio 0.75); the decoder input is the
encoder latents projected to the decoder width, concatenated with k learnable query tokens (k = 512 at
paper scale); the decoder predicts one 14-d Gaussian per query (the predictions on latent tokens are
discarded): centre (3), scale (3), quaternion (4), colour (3), opacity (1), with xyz = tanh, scale =
c * sigmoid, quaternion = sigmoid (then normalised by the renderer), colour and opacity = sigmoid; the
Gaussians are rendered with a fixed camera through ``render.splat`` and the loss is the MSE on the
originally masked pixels. ``loss: all`` (every pixel) and ``loss: masked_norm`` (per-patch normalised)
are the paper's ablation (its Table 5c: masked 83.2 > all 81.8 > masked-norm 76.9 fine-tuning top-1).

Our choices where the paper is silent (docs/references.md, GMAE, lists what is unconfirmed):
- Camera (``camera``): ``orthographic`` (default) or ``pinhole``, at the origin looking along +z
  (OpenCV axes: x right, y down). Depth: camera z = ``camera_distance`` (2.0) + tanh z, i.e. in [1, 3],
  always in front of the near plane. Orthographic: the visible image spans x, y in
  [-``view_extent``, ``view_extent``] (0.8) at every depth, so tanh's range [-1, 1] reaches 25% past the
  border and Gaussians can sit on the image edge without saturating tanh; a Gaussian's screen size does
  not depend on its depth and z only orders the layers. Pinhole: the focal length f = W d / (2 extent)
  makes the image span [-extent, extent] on the plane z = d = ``camera_distance`` (horizontal field of
  view 2 atan(0.8 / 2) = 43.6 degrees), so a Gaussian's screen size scales with 1 / z (3x larger at
  z = 1 than at z = 3); at z = 1 the view spans [-0.4, 0.4], at z = 3 [-1.2, 1.2], where tanh's range
  no longer reaches the border.
- Which camera the paper's layering argument needs: the paper explains its zero-shot layers with
  Gaussians "closer to the camera" covering more pixels: "At the start, some Gaussians will be closer
  to the camera, influencing more pixels, therefore representing low-frequency regions. Our layering
  results are the outcome of this property." (its Sec. 4.4, "Size vs Depth"). That holds under
  perspective projection (``pinhole``). Under our orthographic default it does not: depth changes no
  Gaussian's footprint, so nearness alone gives no Gaussian more pixels; only compositing order
  (front Gaussians occlude the ones behind) ties depth to the image, and any size-depth correlation
  (the paper's Fig. 11) must be learned rather than come from the projection. The paper does not say
  which projection it used; the unofficial reimplementation uses an orthographic camera.
- Scale cap: ``max_scale`` c = 0.2 world units (a quarter of the visible half-width): scale =
  c * sigmoid(s). The paper's c values (0.5, 1, 2; best 1.0) are in units it does not define; the
  unofficial reimplementation uses 0.15 with a similar camera.
- Background: white (1, 1, 1), configurable (the unofficial reimplementation's choice).
- Decoder: MAE's lightweight decoder (512-d, 8 blocks, 16 heads at paper scale); the latent tokens get
  the decoder's fixed sin-cos position of their patch (class token: the zero slot), as MAE's decoder
  does; query tokens are learned embeddings with no position, initialised N(0, 0.02).
- ``masked_norm`` normalises both the rendered and the target patch (mean/std per patch); normalising
  only the target (MAE's norm_pix) asks a [0, 1] rendering to match values outside [0, 1].
- The output layer is initialised so the initial Gaussians are mid-range (zero bias, small weights).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..data.masking import mask_to_pixels, patchify, random_masking
from ..errors import InputError
from ..geometry import Cameras, intrinsics_matrix
from ..models.encoders.vit import ViTConfig, VisionTransformer
from ..models.heads.mae_decoder import DecoderTrunk
from ..render.splat import Gaussians, rasterize
from .base import Method, MethodOutput, StepContext

LOSSES = ("masked", "all", "masked_norm")
CAMERAS = ("orthographic", "pinhole")
GAUSSIAN_DIM = 14  # xyz 3, scale 3, quaternion 4, rgb 3, opacity 1


@dataclass
class GMAEConfig:
    encoder: ViTConfig = field(default_factory=ViTConfig)
    mask_ratio: float = 0.75
    num_gaussians: int = 512  # k query tokens
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    max_scale: float = 0.2  # c in scale = c * sigmoid(s), world units
    view_extent: float = 0.8  # the image shows x, y in [-extent, extent]
    camera_distance: float = 2.0  # camera z of a Gaussian = distance + tanh(z)
    camera: str = "orthographic"  # orthographic | pinhole (see fixed_camera)
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    loss: str = "masked"  # masked | all | masked_norm
    render_backend: str = "auto"  # compiled CPU kernel when it builds, gsplat on CUDA, else tiles

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise InputError(f"gmae.loss: {self.loss!r} is not one of {list(LOSSES)}")
        if self.camera not in CAMERAS:
            raise InputError(f"gmae.camera: {self.camera!r} is not one of {list(CAMERAS)}")
        if self.num_gaussians < 1 or self.max_scale <= 0 or self.view_extent <= 0 or self.camera_distance <= 1.0:
            raise InputError("gmae: num_gaussians >= 1, max_scale > 0, view_extent > 0 and camera_distance > 1 are required")


def gaussians_from_params(raw: Tensor, max_scale: float, camera_distance: float) -> Gaussians:
    """(B, k, 14) decoder outputs -> activated Gaussians in the camera frame (world = camera)."""
    xyz, s, q, rgb, o = raw.split([3, 3, 4, 3, 1], dim=-1)
    means = torch.tanh(xyz) + raw.new_tensor([0.0, 0.0, camera_distance])  # (B, k, 3), z in [d - 1, d + 1]
    return Gaussians(
        means=means,
        quats=torch.sigmoid(q),
        scales=max_scale * torch.sigmoid(s),
        opacities=torch.sigmoid(o).squeeze(-1),
        colors=torch.sigmoid(rgb),
    )


def fixed_camera(
    width: int, height: int, view_extent: float, batch: int, device, dtype=torch.float32,
    camera: str = "orthographic", camera_distance: float = 2.0,
) -> Cameras:
    """The fixed camera at the origin looking along +z, for a batch of B scenes x 1 view.

    ``orthographic``: the image spans x in [-extent, extent] at every depth (f = W / (2 extent) pixels
    per world unit). ``pinhole``: the image spans x in [-extent, extent] on the plane z =
    ``camera_distance`` (f = W d / (2 extent) pixels, horizontal field of view 2 atan(extent / d),
    43.6 degrees for 0.8 and 2.0); nearer planes show less, farther planes more. Square pixels, so y
    spans [-extent H / W, extent H / W] on that plane; principal point at the image centre.
    """
    if camera not in CAMERAS:
        raise InputError(f"gmae.camera: {camera!r} is not one of {list(CAMERAS)}")
    f = 0.5 * width / view_extent * (camera_distance if camera == "pinhole" else 1.0)
    K = intrinsics_matrix(f, f, width / 2, height / 2, dtype=dtype).to(device)
    c2w = torch.eye(4, dtype=dtype, device=device)
    model = "pinhole" if camera == "pinhole" else "ortho"
    return Cameras(K.expand(batch, 1, 3, 3), c2w.expand(batch, 1, 4, 4), width, height, model=model)


class GMAE(Method):
    config_class = GMAEConfig

    def __init__(self, config: GMAEConfig):
        super().__init__()
        self.config = config
        enc = config.encoder
        self.encoder = VisionTransformer(enc)
        self.decoder = DecoderTrunk(enc.embed_dim, config.decoder_embed_dim, config.decoder_depth, config.decoder_num_heads, enc.grid_size)
        self.query_tokens = nn.Parameter(torch.randn(1, config.num_gaussians, config.decoder_embed_dim) * 0.02)
        self.gaussian_pred = nn.Linear(config.decoder_embed_dim, GAUSSIAN_DIM)
        nn.init.normal_(self.gaussian_pred.weight, std=0.02)
        nn.init.zeros_(self.gaussian_pred.bias)
        self.register_buffer("background", torch.tensor(config.background, dtype=torch.float32), persistent=False)

    def no_weight_decay(self) -> set[str]:
        return {"encoder.cls_token", "encoder.pos_embed", "query_tokens", "decoder.decoder_pos_embed"}


    # ---- the model -----------------------------------------------------------------------------
    def forward_encoder(self, images: Tensor, generator: torch.Generator | None, mask_ratio: float):
        tokens = self.encoder.embed_patches(images)  # (B, L, D)
        mask = random_masking(tokens.shape[0], tokens.shape[1], mask_ratio, generator, tokens.device)
        return self.encoder.forward_tokens(mask.gather_visible(tokens)), mask

    def forward_decoder(self, latent: Tensor, ids_keep: Tensor, grid: tuple[int, int]) -> Tensor:
        """(B, 1 + n, D) visible latents -> (B, k, 14) raw Gaussian parameters."""
        x = self.decoder.embed_visible(latent, ids_keep, grid)  # (B, 1 + n, Dd)
        queries = self.query_tokens.expand(x.shape[0], -1, -1)  # (B, k, Dd)
        x = self.decoder.run_blocks(torch.cat([x, queries], dim=1))
        return self.gaussian_pred(x[:, -self.config.num_gaussians:])  # discard the latent tokens' outputs

    def predict_gaussians(self, images: Tensor, generator: torch.Generator | None = None, mask_ratio: float | None = None):
        """-> (Gaussians (B, k), PatchMask, fixed camera). ``mask_ratio=0`` encodes the whole image."""
        ratio = self.config.mask_ratio if mask_ratio is None else mask_ratio
        grid = self.encoder.grid_for(images)
        latent, mask = self.forward_encoder(images, generator, ratio)
        raw = self.forward_decoder(latent, mask.ids_keep, grid)
        gaussians = gaussians_from_params(raw, self.config.max_scale, self.config.camera_distance)
        camera = fixed_camera(images.shape[-1], images.shape[-2], self.config.view_extent, images.shape[0], images.device,
                              images.dtype, camera=self.config.camera, camera_distance=self.config.camera_distance)
        return gaussians, mask, camera

    def render(self, gaussians: Gaussians, camera: Cameras):
        return rasterize(gaussians, camera, background=self.background.to(gaussians.means), backend=self.config.render_backend)

    # ---- the loss ------------------------------------------------------------------------------
    def forward_loss(self, images: Tensor, rendered: Tensor, pixel_mask: Tensor) -> Tensor:
        """MSE between the rendering and the image (B, 3, H, W) as configured."""
        if self.config.loss == "all":
            return ((rendered - images) ** 2).mean()
        if self.config.loss == "masked":
            per_pixel = ((rendered - images) ** 2).mean(dim=1, keepdim=True)  # (B, 1, H, W)
            return (per_pixel * pixel_mask).sum() / pixel_mask.sum().clamp(min=1)
        p = self.config.encoder.patch_size
        pred, target = patchify(rendered, p), patchify(images, p)  # (B, L, p*p*3)

        def normalise(t: Tensor) -> Tensor:
            return (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + 1e-6) ** 0.5

        per_patch = ((normalise(pred) - normalise(target)) ** 2).mean(-1)  # (B, L)
        patch_mask = pixel_mask[:, 0, ::p, ::p].reshape(per_patch.shape)
        return (per_patch * patch_mask).sum() / patch_mask.sum().clamp(min=1)

    def forward(self, batch: dict, ctx: StepContext = StepContext()) -> MethodOutput:
        images = batch["image"]  # (B, 3, H, W)
        gaussians, mask, camera = self.predict_gaussians(images, ctx.generator)
        out = self.render(gaussians, camera)
        rendered = out.color[:, 0]  # (B, 3, H, W)
        pixel_mask = mask_to_pixels(mask.mask, self.config.encoder.patch_size, self.encoder.grid_for(images))
        loss = self.forward_loss(images, rendered, pixel_mask)
        with torch.no_grad():
            terms = {f"mse_{self.config.loss}": loss.detach(), "mean_opacity": gaussians.opacities.mean(),
                     "mean_scale": gaussians.scales.mean()}
            renders = {
                "input": images, "masked": images * (1 - pixel_mask) + pixel_mask * 0.5,
                "rendering": rendered.clamp(0, 1), "depth": out.depth[:, 0], "alpha": out.alpha[:, 0],
            }
        return MethodOutput(loss, terms, renders, extras={"gaussians": gaussians, "camera": camera},
                            rendered_pixels=rendered.shape[0] * rendered.shape[-2] * rendered.shape[-1])

    def preview_panels(self, batch: dict, output: MethodOutput) -> list[tuple[str, Tensor]]:
        """Input, masked input, reconstruction, Gaussian centres, depth layers (front/back halves)."""
        from ..viz import colorize_depth

        gaussians, camera = output.extras["gaussians"], output.extras["camera"]
        g0 = Gaussians(*(t[:1].detach() for t in (gaussians.means, gaussians.quats, gaussians.scales, gaussians.opacities, gaussians.colors)))
        panels = [(name, output.renders[name][0]) for name in ("input", "masked", "rendering")]
        panels.append(("gaussian centres", self.centres_image(g0, camera[:1])))
        alpha = output.renders["alpha"][0]
        panels.append(("depth", colorize_depth(output.renders["depth"][0] * (alpha > 0.5))))
        order = torch.argsort(g0.means[0, :, 2])
        half = order.numel() // 2
        for name, keep in (("front half", order[:half]), ("back half", order[half:])):
            opac = torch.zeros_like(g0.opacities)
            opac[0, keep] = g0.opacities[0, keep]
            layer = Gaussians(g0.means, g0.quats, g0.scales, opac, g0.colors)
            panels.append((name, self.render(layer, camera[:1]).color[0, 0].clamp(0, 1)))
        return panels

    @staticmethod
    def centres_image(gaussians: Gaussians, camera: Cameras) -> Tensor:
        """(3, H, W): each Gaussian's centre as a dot coloured by its depth (front red, back blue)."""
        uv, z = camera.project(gaussians.means[:, None])  # (1, 1, k, 2), (1, 1, k)
        H, W = camera.height, camera.width
        img = torch.ones(3, H, W)
        u = uv[0, 0, :, 0].long().clamp(0, W - 1)
        v = uv[0, 0, :, 1].long().clamp(0, H - 1)
        t = ((z[0, 0] - z.min()) / (z.max() - z.min()).clamp(min=1e-6)).cpu()
        img[:, v.cpu(), u.cpu()] = torch.stack([1 - t, torch.zeros_like(t), t])
        return img
