"""Argument checks shared by the volume-rendering modules: every bad input is an ``InputError`` that names
the function and the argument."""

from __future__ import annotations

from torch import Tensor

from ...errors import InputError, check_finite, check_shape


def check_tensor(name: str, x, *shape) -> None:
    """Exact rank, trailing sizes (None = any) and finiteness of a tensor argument."""
    if not isinstance(x, Tensor):
        raise InputError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != len(shape):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise InputError(f"{name}: expected a {len(shape)}-d tensor {want}, got shape {tuple(x.shape)}")
    check_shape(name, x, *shape)
    check_finite(name, x)


def check_count(name: str, n, minimum: int = 1) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < minimum:
        raise InputError(f"{name}: expected an int >= {minimum}, got {n!r}")


def check_sorted(name: str, t: Tensor) -> None:
    if t.shape[-1] > 1 and not bool((t[..., 1:] >= t[..., :-1]).all()):
        raise InputError(f"{name}: t values must be sorted (non-decreasing) along each ray")


def ray_bounds(fn: str, near: Tensor, far: Tensor) -> tuple[Tensor, Tensor]:
    """near, far (R,) or (R, 1) -> (R, 1), (R, 1), checked finite with far > near."""
    for name, v in (("near", near), ("far", far)):
        if not isinstance(v, Tensor):
            raise InputError(f"{fn}: {name} must be a tensor of shape (R,) or (R, 1), got {type(v).__name__}")
        if not (v.dim() == 1 or (v.dim() == 2 and v.shape[1] == 1)):
            raise InputError(f"{fn}: {name} must have shape (R,) or (R, 1), got {tuple(v.shape)}")
        check_finite(f"{fn}: {name}", v)
    near, far = near.reshape(-1, 1), far.reshape(-1, 1)
    if near.shape != far.shape:
        raise InputError(f"{fn}: near has {near.shape[0]} rays but far has {far.shape[0]}")
    if not near.dtype.is_floating_point or near.dtype != far.dtype:
        raise InputError(f"{fn}: near/far must share one float dtype, got {near.dtype} and {far.dtype}")
    bad = int((far <= near).sum())
    if bad:
        raise InputError(f"{fn}: far must exceed near on every ray ({bad} ray(s) have far <= near)")
    return near, far


def check_rays(fn: str, rays_o: Tensor, rays_d: Tensor, unit: bool) -> None:
    check_tensor(f"{fn}: rays_o", rays_o, None, 3)
    check_tensor(f"{fn}: rays_d", rays_d, rays_o.shape[0], 3)
    if unit:
        err = float((rays_d.norm(dim=-1) - 1.0).abs().max()) if rays_d.shape[0] else 0.0
        if err > 1e-3:
            raise InputError(f"{fn}: rays_d must be unit vectors (|d| - 1 up to {err:.3g}); use Cameras.rays(normalize=True)")
