"""Training checkpoints: atomic writes, safe loads, a rolling window of step files, RNG states.

Choices:
- ``save_checkpoint`` writes to a temporary file in the target's directory, fsyncs it, then
  ``os.replace``s it over the target: a crash or a failed ``torch.save`` leaves the previous file whole
  and no temporary file behind.
- ``load_checkpoint`` uses ``torch.load(weights_only=True)`` only, so a checkpoint holds tensors, numbers,
  strings, lists, tuples and dicts. RNG states of Python's ``random`` and NumPy are stored as tensors
  and plain values (``rng_state`` / ``set_rng_state``).
- A run directory keeps ``last.pt`` (what ``resume`` reads) plus the newest ``keep`` ``step_NNNNNN.pt``.
  ``last.pt`` is written first and the step file is a hard link to it (a copy where links fail), so a
  step file never exists without a ``last.pt`` at least as new.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError

LAST = "last.pt"
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


def step_filename(step: int) -> str:
    return f"step_{step:06d}.pt"


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not supported (e.g. some platforms); the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: Path, write) -> Path:
    """Run ``write(tmp_path)`` then move the temporary file over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def save_checkpoint(path, state: dict) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file + ``os.replace``)."""

    def write(tmp: Path):
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())

    return _atomic_write(Path(path), write)


def load_checkpoint(path, map_location="cpu") -> dict:
    """Read a checkpoint with ``torch.load(weights_only=True)``; InputError names a missing or bad file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, pickle errors, objects weights_only refuses
        raise InputError(f"{path}: cannot read checkpoint (corrupt, truncated or not a weights-only torch file): {err}") from None
    if not isinstance(state, dict):
        raise InputError(f"{path}: expected a dict checkpoint, got {type(state).__name__}")
    return state


# ---- a run's checkpoint directory ----------------------------------------------------------------


def step_checkpoints(directory) -> list[tuple[int, Path]]:
    """``(step, path)`` of the ``step_NNNNNN.pt`` files in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _STEP_FILE.match(p.name))]
    return sorted(found)


def _link_or_copy(source: Path, target: Path) -> None:
    def write(tmp: Path):
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)

    _atomic_write(target, write)


def save_run_checkpoint(directory, step: int, state: dict, keep: int) -> Path:
    """Write ``last.pt`` and ``step_NNNNNN.pt`` for ``step``; keep the newest ``keep`` step files. Returns last.pt."""
    directory = Path(directory)
    last = save_checkpoint(directory / LAST, state)
    if keep > 0:
        _link_or_copy(last, directory / step_filename(step))
    files = step_checkpoints(directory)
    for _, old in files[: max(0, len(files) - keep)]:
        old.unlink(missing_ok=True)
    return last


def remove_temp_files(directory) -> list[Path]:
    """Delete temporary files that a process killed mid-write left in ``directory``."""
    directory = Path(directory)
    stale = sorted(directory.glob(".*.tmp")) if directory.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def clear_run_checkpoints(directory) -> list[Path]:
    """Delete ``last.pt`` and the step files of an earlier run in ``directory``; returns what was deleted."""
    directory = Path(directory)
    gone = [p for _, p in step_checkpoints(directory)] + ([directory / LAST] if (directory / LAST).exists() else [])
    for p in gone:
        p.unlink(missing_ok=True)
    return gone


# ---- random number generator states as weights-only values -----------------------------------------


def rng_state() -> dict:
    """This process's RNG states (torch CPU, CUDA if initialised, Python ``random``, NumPy) as tensors and plain values."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` captured."""
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["internal"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"][: torch.cuda.device_count()]
        for index, cuda_state in enumerate(cuda_states):
            torch.cuda.set_rng_state(cuda_state, index)
