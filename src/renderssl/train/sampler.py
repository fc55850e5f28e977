"""Data order: one shuffled permutation per epoch, split across processes, resumable mid-epoch.

Choices:
- The permutation of epoch ``e`` comes from a ``torch.Generator`` seeded by ``derive_seed(seed, e)``;
  it does not depend on the number of processes, so the global order of samples is the same for any
  world size.
- Rank ``r`` of ``R`` takes ``perm[r::R]``. With a per-process batch ``b``, rank ``r``'s ``i``-th
  batch is ``perm[r + R * (i * b + j)]`` for ``j < b``, so the union over ranks of step ``i``'s batches
  is ``perm[i * R * b : (i + 1) * R * b]``: exactly the ``i``-th batch of a single process with batch
  ``R * b``. A 2-process run with batch ``b`` sees, step by step, what a 1-process run with ``2b`` sees.
- ``drop_last`` trims the permutation to a multiple of ``R`` (every rank gets as many samples); without
  it the permutation is padded by wrapping around, as torch's ``DistributedSampler`` does.
- The sampler does not count what it yields (a DataLoader prefetches ahead of training); the trainer
  calls ``advance(n)`` once a batch is consumed. ``state_dict`` stores the epoch and the global number of
  samples consumed, so a resumed run continues mid-epoch, even with another world size when the
  consumed count divides evenly.
"""

from __future__ import annotations

import torch
from torch.utils.data import Sampler

from ..errors import InputError

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that is a pure function of the integers ``parts`` (e.g. seed, step, rank)."""
    h = 0x6A09E667F3BCC908
    for part in parts:
        h = _splitmix64(h ^ (int(part) & _MASK64))
    return h & ((1 << 63) - 1)


class ResumableDistributedSampler(Sampler[int]):
    """Indices of this rank's share of a per-epoch permutation, from the current position on."""

    def __init__(self, length: int, num_replicas: int = 1, rank: int = 0, seed: int = 0, shuffle: bool = True, drop_last: bool = True):
        if length < 1:
            raise InputError(f"sampler: dataset length must be >= 1, got {length}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise InputError(f"sampler: rank {rank} is not in [0, {num_replicas})")
        self.length, self.num_replicas, self.rank = int(length), int(num_replicas), int(rank)
        self.seed, self.shuffle, self.drop_last = int(seed), bool(shuffle), bool(drop_last)
        self.epoch = 0
        self.position = 0  # samples of this rank's share already consumed in this epoch

    @property
    def num_samples(self) -> int:
        """Samples per rank per epoch."""
        if self.drop_last:
            return self.length // self.num_replicas
        return -(-self.length // self.num_replicas)

    def num_batches(self, batch_size: int) -> int:
        """Full batches of ``batch_size`` per rank per epoch (the DataLoader drops the last partial one)."""
        return self.num_samples // batch_size

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """(length,) the global order of epoch ``epoch``."""
        if not self.shuffle:
            return torch.arange(self.length)
        generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
        return torch.randperm(self.length, generator=generator)

    def rank_indices(self) -> list[int]:
        """This rank's whole share of the current epoch, from its first sample."""
        order = self.epoch_order(self.epoch)  # (length,)
        total = self.num_samples * self.num_replicas
        if total <= self.length:
            order = order[:total]
        else:  # pad by wrapping around
            order = torch.cat([order, order[: total - self.length]])
        return order[self.rank :: self.num_replicas].tolist()

    def __iter__(self):
        return iter(self.rank_indices()[self.position :])  # computed now, not lazily

    def __len__(self) -> int:
        return self.num_samples - self.position

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` from its beginning."""
        self.epoch, self.position = int(epoch), 0

    def advance(self, num_samples: int) -> None:
        """Record that this rank consumed ``num_samples`` more samples of the current epoch."""
        if self.position + num_samples > self.num_samples:
            raise InputError(f"sampler: advancing by {num_samples} passes the end of the epoch ({self.position}/{self.num_samples})")
        self.position += int(num_samples)

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "consumed": self.position * self.num_replicas,  # global samples consumed in this epoch
            "num_replicas": self.num_replicas,
            "length": self.length,
            "seed": self.seed,
            "shuffle": self.shuffle,
        }

    def load_state_dict(self, state: dict) -> None:
        for key in ("length", "seed", "shuffle"):
            if state[key] != getattr(self, key):
                raise InputError(f"sampler: checkpoint has {key}={state[key]!r}, this run has {getattr(self, key)!r}; the data order cannot be resumed")
        consumed = int(state["consumed"])
        if consumed % self.num_replicas:
            raise InputError(f"sampler: {consumed} consumed samples do not split over {self.num_replicas} processes")
        self.epoch, self.position = int(state["epoch"]), min(consumed // self.num_replicas, self.num_samples)
