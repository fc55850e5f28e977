"""Process group set-up from torchrun's environment, and the few collectives the trainer needs.

Choices:
- ``init_distributed`` reads ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; without them (or with a world
  of 1) it starts no process group. Backend ``nccl`` when the device is CUDA, ``gloo`` otherwise.
- Device ``auto`` is the local rank's GPU when CUDA is available, else the CPU; ``cuda`` means
  ``cuda:LOCAL_RANK``.
- ``cleanup`` does ``barrier()`` then ``destroy_process_group()``: a process that exits with a live
  group (or before its peers are done with it) makes torchrun report a failure. It only tears down a
  group that ``init_distributed`` created (``DistContext.owns_group``), never a caller's.
- The collectives are no-ops in a single process, so callers need no branches.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import InputError


@dataclass
class DistContext:
    world: int = 1
    rank: int = 0
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # whether init_distributed started the process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` -> a torch device (``cuda`` = this local rank's GPU)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"train.device={name}: CUDA is not available on this machine (use cpu or auto)")
        return torch.device(f"cuda:{local_rank}") if name == "cuda" else torch.device(name)
    raise InputError(f"train.device={name!r}: expected auto, cpu, cuda or cuda:N")


def _env_int(key: str, default: int) -> int:
    raw = os.environ.get(key)
    try:
        return default if raw in (None, "") else int(raw)
    except ValueError:
        raise InputError(f"environment variable {key}={raw!r} is not an integer") from None


def launcher_rank() -> int:
    """This process's rank as torchrun set it (0 when not launched by torchrun); valid before and after
    the process group exists, unlike ``dist.get_rank``."""
    return _env_int("RANK", 0)


def init_distributed(device: str = "auto") -> DistContext:
    """Join the process group torchrun describes (if any) and pick this process's device."""
    world, local_rank = _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0)
    where = resolve_device(device, local_rank)
    if where.type == "cuda":
        torch.cuda.set_device(where)
    if world <= 1:
        return DistContext(1, 0, 0, where, owns_group=False)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if where.type == "cuda" else "gloo"
        extra = {"device_id": where} if where.type == "cuda" else {}
        dist.init_process_group(backend=backend, **extra)
        owns = True
    return DistContext(dist.get_world_size(), dist.get_rank(), local_rank, where, owns_group=owns)


def cleanup(ctx: DistContext | None = None, barrier: bool = True) -> None:
    """``barrier()`` then ``destroy_process_group()`` (only for a group ``init_distributed`` started)."""
    if not dist.is_initialized() or (ctx is not None and not ctx.owns_group):
        return
    if barrier:
        dist.barrier()
    dist.destroy_process_group()


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main() -> bool:
    """True on rank 0 and in a single process."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over processes (a new tensor; the input is untouched)."""
    out = tensor.detach().clone()
    if is_dist():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over processes (a new tensor; the input is untouched)."""
    out = all_reduce_sum(tensor)
    return out / dist.get_world_size() if is_dist() else out


def all_gather_objects(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` (pickled; for small things such as RNG states)."""
    if not is_dist():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if is_dist():
        dist.barrier()
