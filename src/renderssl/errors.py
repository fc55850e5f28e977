"""Errors raised on bad input: each names the offending file or argument and the problem."""


class InputError(ValueError):
    """Bad user input (a file, a config value, a tensor handed to a public function)."""


def check_finite(name: str, tensor) -> None:
    """Raise :class:`InputError` if ``tensor`` holds NaN or Inf."""
    import torch

    if not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise InputError(f"{name}: {bad} non-finite value(s) (NaN or Inf) in a tensor of shape {tuple(tensor.shape)}")


def check_shape(name: str, tensor, *expected) -> None:
    """Check the trailing dims of ``tensor`` against ``expected`` (``None`` = any size)."""
    shape = tuple(tensor.shape)
    tail = shape[len(shape) - len(expected):] if len(shape) >= len(expected) else None
    ok = tail is not None and all(e is None or e == s for e, s in zip(expected, tail))
    if not ok:
        want = "(..., " + ", ".join("*" if e is None else str(e) for e in expected) + ")"
        raise InputError(f"{name}: expected shape {want}, got {shape}")
