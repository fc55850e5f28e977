"""Named presets of encoder configs: a preset fills the fields a config leaves at None."""

from __future__ import annotations

from ...errors import InputError


def apply_preset(config, presets: dict[str, dict], where: str, required: tuple[str, ...]) -> None:
    """Fill ``config``'s fields left at None from ``presets[config.preset]`` (if a preset is named), then
    raise :class:`InputError` naming every ``required`` field still None."""
    if config.preset is not None:
        if config.preset not in presets:
            raise InputError(f"{where}.preset: unknown preset {config.preset!r}; expected one of {list(presets)}")
        for key, value in presets[config.preset].items():
            if getattr(config, key) is None:
                setattr(config, key, value)
    missing = [k for k in required if getattr(config, k) is None]
    if missing:
        raise InputError(f"{where}: {missing} must be set when no preset is given")
