"""LPIPS (VGG variant, v0.1) from local weight files only; nothing is ever downloaded.

Distance between images ``x``, ``y`` (B, 3, H, W) in [0, 1] (H, W >= 16):

1. map to [-1, 1] (``2x - 1``, the ``normalize=True`` of the ``lpips`` package), then the LPIPS
   scaling layer ``(x - shift) / scale`` with shift (-.030, -.088, -.188), scale (.458, .448, .450);
2. VGG16 ``features`` (torchvision layout), tapped after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3;
3. per tap: unit-normalise over channels ``f / (||f||_2 + 1e-10)``, squared difference, the learned
   1x1 conv head ``lin{l}`` (no bias), mean over pixels; sum over the five taps. Returns (B,).

Weights: ``LPIPS.from_files(vgg_path, lin_path)`` where ``vgg_path`` is a torchvision vgg16 state dict
(.pth/.pt via ``torch.load(weights_only=True)``, or .safetensors if the ``safetensors`` package is
installed; only ``features.*`` keys are used) and ``lin_path`` is the ``lpips`` package's
``weights/v0.1/vgg.pth`` (keys ``lin0.model.1.weight`` ... ``lin4.model.1.weight``). The module's own
``state_dict`` uses exactly those names. ``try_load_lpips`` turns missing files into one warning and
``None`` so evaluation can skip the metric.

The module is frozen (parameters do not require grad, always in eval mode). ``forward`` runs under
``torch.no_grad`` unless ``grad=True``, which keeps the graph to the inputs for use as a training
loss (GS³: MSE + 0.05 LPIPS). The channel norm uses ``torch.linalg.vector_norm``, whose gradient is
defined (0) where a feature vector is all zero, so the loss never yields NaN gradients there.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

from ..errors import InputError


@dataclass
class LPIPSWeights:
    """Local LPIPS-VGG weight files, the config section a recipe names them in (nothing is downloaded)."""

    vgg_path: str | None = None  # a torchvision vgg16 state dict (.pth or .safetensors)
    lin_path: str | None = None  # the lpips package's weights/v0.1/vgg.pth

# torchvision vgg16 `features`: numbers are conv output channels, "M" a 2x2 max-pool.
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
# index in `features` of the ReLU after which each tap is taken: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
TAP_RELU_INDICES = (3, 8, 15, 22, 29)
TAP_CHANNELS = (64, 128, 256, 512, 512)
SCALING_SHIFT = (-0.030, -0.088, -0.188)
SCALING_SCALE = (0.458, 0.448, 0.450)
NORM_EPS = 1e-10
MIN_SIZE = 16  # four 2x2 pools before the last tap

_HOW_TO_PROVIDE = {
    "vgg_path": "a torchvision vgg16 state dict (e.g. vgg16-397923af.pth or a .safetensors export)",
    "lin_path": "the lpips package's weights/v0.1/vgg.pth",
}


class MissingWeightsError(InputError):
    """A weight file LPIPS needs is not configured or does not exist."""


class MissingWeightsWarning(UserWarning):
    """Issued by :func:`try_load_lpips` when LPIPS is skipped for lack of weights."""


def build_vgg16_features() -> nn.Sequential:
    """VGG16 conv trunk with torchvision's module indices, up to relu5_3 (the final pool is unused)."""
    layers: list[nn.Module] = []
    c_in = 3
    for v in VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(c_in, v, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            c_in = v
    return nn.Sequential(*layers)  # indices 0..29


class LinHead(nn.Module):
    """LPIPS 1x1 head; ``model.0`` stands where the lpips package has Dropout (inactive at evaluation)."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class LPIPS(nn.Module):
    """Learned perceptual distance (VGG, v0.1). Build with :meth:`from_files`; call ``lpips(x, y)`` -> (B,)."""

    def __init__(self):
        super().__init__()
        self.features = build_vgg16_features()
        for i, c in enumerate(TAP_CHANNELS):
            self.add_module(f"lin{i}", LinHead(c))
        self.register_buffer("shift", torch.tensor(SCALING_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALING_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "LPIPS":
        """LPIPS is a fixed metric: it stays in eval mode whatever the parent module does."""
        return super().train(False)

    @classmethod
    def from_files(cls, vgg_path: str | os.PathLike | None, lin_path: str | os.PathLike | None) -> "LPIPS":
        """Load weights from local files (see module docstring). Raises :class:`MissingWeightsError`."""
        _require_files(vgg_path=vgg_path, lin_path=lin_path)
        vgg = _load_state_dict(vgg_path)
        lin = _load_state_dict(lin_path)
        model = cls()
        feats = {k: v for k, v in vgg.items() if k.startswith("features.")}
        _load_part(model, feats, "features.", vgg_path)
        lins = {k: v for k, v in lin.items() if k.startswith("lin")}
        _load_part(model, lins, "lin", lin_path)
        return model

    def preprocess(self, x: Tensor) -> Tensor:
        """[0, 1] -> [-1, 1] -> LPIPS scaling layer. (B, 3, H, W) -> (B, 3, H, W)."""
        return (2.0 * x - 1.0 - self.shift) / self.scale

    def taps(self, x: Tensor) -> list[Tensor]:
        """Five VGG activations (relu1_2 ... relu5_3) of a preprocessed batch."""
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in TAP_RELU_INDICES:
                out.append(x)  # (B, C_l, H / 2^l, W / 2^l)
        return out

    def distance(self, x: Tensor, y: Tensor) -> Tensor:
        """Differentiable LPIPS distance. (B, 3, H, W) x2 -> (B,)."""
        _check_inputs(x, y)
        n = x.shape[0]
        feats = self.taps(self.preprocess(torch.cat([x, y], dim=0)))  # one pass for both images
        total = x.new_zeros(n)
        for l, f in enumerate(feats):
            fx, fy = _unit_normalize(f[:n]), _unit_normalize(f[n:])  # (B, C_l, h, w)
            d = getattr(self, f"lin{l}")((fx - fy).square())  # (B, 1, h, w)
            total = total + d.mean(dim=(1, 2, 3))
        return total

    def forward(self, x: Tensor, y: Tensor, grad: bool = False) -> Tensor:
        """LPIPS(x, y) per image (B,). No autograd graph unless ``grad=True`` (training loss)."""
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            return self.distance(x, y)


def _unit_normalize(f: Tensor) -> Tensor:
    """Divide each pixel's feature vector by its L2 norm (+eps). (B, C, h, w) -> same."""
    return f / (torch.linalg.vector_norm(f, dim=1, keepdim=True) + NORM_EPS)


def _check_inputs(x: Tensor, y: Tensor) -> None:
    if x.ndim != 4 or x.shape != y.shape or x.shape[1] != 3:
        raise InputError(f"lpips: expected two (B, 3, H, W) images of equal shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if min(x.shape[-2:]) < MIN_SIZE:
        raise InputError(f"lpips: images must be at least {MIN_SIZE}x{MIN_SIZE}, got {tuple(x.shape[-2:])}")


# ----------------------------------------------------------------------------- weight files


def missing_weights_message(**paths) -> str | None:
    """One message naming every LPIPS weight file that is unset or absent; None if all exist."""
    problems = []
    for name, path in paths.items():
        if path is None or str(path) == "":
            problems.append(f"{name} is not set")
        elif not os.path.isfile(path):
            problems.append(f"{name} file not found: {os.fspath(path)}")
    if not problems:
        return None
    how = "; ".join(f"{name} = {_HOW_TO_PROVIDE[name]}" for name in paths)
    return (
        "LPIPS weights missing (" + "; ".join(problems) + "). Nothing is downloaded: copy the files to this "
        f"machine and pass their local paths ({how})."
    )


def _require_files(**paths) -> None:
    msg = missing_weights_message(**paths)
    if msg is not None:
        raise MissingWeightsError(msg)


def _load_state_dict(path) -> dict:
    """Tensors of a .safetensors file or a torch-saved state dict (weights_only). Keys -> tensors."""
    path = os.fspath(path)
    try:
        if path.endswith(".safetensors"):
            try:
                from safetensors.torch import load_file
            except ImportError as e:
                raise InputError(f"{path}: reading .safetensors needs the 'safetensors' package (pip install safetensors), or pass a .pth") from e
            sd = load_file(path, device="cpu")
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except InputError:
        raise
    except Exception as e:  # corrupt file, pickle with code, wrong format
        raise InputError(f"{path}: could not read a weight file ({type(e).__name__}: {e})") from e
    if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping):
        raise InputError(f"{path}: expected a state dict (name -> tensor), got {type(sd).__name__}")
    return dict(sd)


def _load_part(model: LPIPS, sd: dict, prefix: str, path) -> None:
    """Copy ``sd`` into the parameters of ``model`` whose names start with ``prefix``; exact keys and shapes."""
    own = {k: v for k, v in model.state_dict().items() if k.startswith(prefix)}
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    bad = sorted(k for k in set(own) & set(sd) if tuple(sd[k].shape) != tuple(own[k].shape))
    if missing or unexpected or bad:
        details = []
        if missing:
            details.append(f"missing keys {missing[:6]}{'...' if len(missing) > 6 else ''}")
        if unexpected:
            details.append(f"unexpected keys {unexpected[:6]}{'...' if len(unexpected) > 6 else ''}")
        for k in bad[:6]:
            details.append(f"{k}: shape {tuple(sd[k].shape)}, expected {tuple(own[k].shape)}")
        raise InputError(f"{os.fspath(path)}: not LPIPS-VGG weights ({'; '.join(details)})")
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(sd[k].to(v.dtype))


def try_load_lpips(cfg_paths) -> LPIPS | None:
    """LPIPS from ``cfg_paths`` (a mapping or object with ``vgg_path`` and ``lin_path``; may be None).

    If a file is unset or missing, issue one :class:`MissingWeightsWarning` with the message of
    :class:`MissingWeightsError` and return None, so the caller skips the metric. Files that exist but
    are not LPIPS-VGG weights still raise :class:`InputError`.
    """
    vgg_path, lin_path = _get_path(cfg_paths, "vgg_path"), _get_path(cfg_paths, "lin_path")
    try:
        return LPIPS.from_files(vgg_path, lin_path)
    except MissingWeightsError as e:
        warnings.warn(str(e), MissingWeightsWarning, stacklevel=2)
        return None


def _get_path(cfg, name: str):
    if cfg is None:
        return None
    if isinstance(cfg, Mapping):
        return cfg.get(name)
    return getattr(cfg, name, None)
