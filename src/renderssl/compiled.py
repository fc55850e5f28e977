"""Building renderssl's C++ extensions: on first use with ``torch.utils.cpp_extension.load`` (cached by
torch under ``TORCH_EXTENSIONS_DIR``, ~30 s each the first time), and None with one warning where they
cannot be built (no compiler, headers or permissions), so every caller falls back to its torch twin.

Builds for AVX-512 / AVX2 CPUs target that instruction-set level (:func:`build_flags`) and carry it in
the extension's name, so a build cache shared by different CPUs never runs one on a CPU without it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

# ATen CPU capability -> compiler flags of that instruction-set level (x86-64 psABI levels, GCC >= 11 / clang >= 12).
ISA_FLAGS = {
    "avx512": ["-march=x86-64-v4", "-mprefer-vector-width=512"],
    "avx2": ["-march=x86-64-v3"],
}


def cpu_capability() -> str:
    """ATen's CPU capability in lower case ('avx512', 'avx2', 'default', ...)."""
    try:
        return str(torch.backends.cpu.get_cpu_capability()).lower()
    except Exception:  # older torch or an unknown platform: the compiler's default target
        return "default"


def build_flags(capability: str | None = None) -> tuple[str, list[str]]:
    """(extension name suffix, extra compiler flags) for a CPU capability (default: this machine's)."""
    cap = cpu_capability() if capability is None else capability
    isa = ISA_FLAGS.get(cap, [])
    return (cap if isa else "default"), ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", *isa]


def load_extension(name: str, source: Path, what: str, fallback: str, extra_cflags: tuple[str, ...] = (),
                   isa: bool = True):
    """The built extension ``renderssl_<name>[_<isa>]`` from ``source``, or None after a warning naming
    ``what`` could not be built and the ``fallback`` used instead. ``isa``: build for this CPU's level."""
    try:
        from torch.utils.cpp_extension import load

        suffix, flags = build_flags() if isa else ("", ["-O3", "-fopenmp"])
        full = f"renderssl_{name}_{suffix}" if suffix else f"renderssl_{name}"
        return load(name=full, sources=[str(source)], extra_cflags=[*flags, *extra_cflags], extra_ldflags=["-fopenmp"],
                    verbose=False)
    except Exception as err:  # no compiler, headers or permissions: fall back, never fail the caller
        warnings.warn(f"renderssl: compiled {what} unavailable ({type(err).__name__}: {err}); using {fallback}",
                      RuntimeWarning, stacklevel=3)
        return None
