"""Samples that cannot be read are skipped and counted, so one bad file found hours into a run does not
end it, and a run whose data is broadly unreadable stops with the files named.

With lazily read data a corrupt image, a missing depth file or a bad pose surfaces when its sample is
read. :class:`SkipUnreadable` wraps a Dataset: when reading index ``i`` raises an
:class:`~renderssl.errors.InputError` (the readers' error, which names the file and the problem), the
sample is replaced by the next readable one (``i + 1``, ``i + 2``, ... wrapping around), so a batch
keeps its size and a run stays a pure function of its seed; each item is ``(sample, [problems])``.
:class:`SkippingCollate` batches such items into ``(batch, [problems])``. An index may come as a
:class:`SampleKey` ``(epoch, index, step, total_steps)`` (:class:`EpochIndices`): a Dataset with
``set_epoch`` (samples that draw new views each epoch) is told the epoch, and one with ``set_step`` the
training step that will consume the sample (a curriculum over training, such as NPS's source views), in
whichever process reads it, so persistent DataLoader workers follow both. The trainer collects the
problems (every rank's), writes each new one to the log once, lists them in the run summary, and stops
when the distinct unreadable samples exceed ``data.max_bad_fraction`` of the dataset.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from torch.utils.data import Dataset, Sampler, default_collate

from ..errors import InputError

MAX_CONSECUTIVE = 64  # unreadable samples in a row before a read gives up


class UnreadableDataError(InputError):
    """Too many samples could not be read; the message names them."""


class SampleKey(NamedTuple):
    """A sample's index with the epoch it is read in and the training step (1-based, of ``total_steps``)
    that consumes it; step and total_steps are None where no training step applies."""

    epoch: int | None
    index: int
    step: int | None = None
    total_steps: int | None = None


class SkipUnreadable(Dataset):
    """``dataset`` whose items are ``(sample, problems)``: unreadable samples replaced by the next one."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple):
        key = SampleKey(*key) if isinstance(key, tuple) else SampleKey(None, key)
        idx = key.index
        if key.epoch is not None and hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(key.epoch)
        if key.step is not None and hasattr(self.dataset, "set_step"):
            self.dataset.set_step(key.step, key.total_steps)
        problems: list[str] = []
        n = len(self.dataset)
        for k in range(min(n, MAX_CONSECUTIVE)):
            try:
                return self.dataset[(idx + k) % n], problems
            except InputError as err:
                problems.append(str(err))
        raise UnreadableDataError(f"{len(problems)} samples in a row from index {idx} cannot be read: " + "; ".join(problems[:5]))


class EpochIndices(Sampler):
    """``sampler``'s indices as :class:`SampleKey`s: the epoch, and the step that consumes each sample.

    The DataLoader groups the indices into micro-batches of ``batch_size`` (the last incomplete one of an
    epoch dropped) and a step takes ``accumulate`` micro-batches, so the k-th index of an epoch that starts
    after ``m`` consumed micro-batches belongs to step ``(m + k // batch_size) // accumulate + 1``.
    ``micro_batches_done``: those consumed before the first epoch read (a resumed run's steps x accumulate).
    The count lives in the process that iterates the sampler (the DataLoader's main process)."""

    def __init__(self, sampler, batch_size: int = 1, accumulate: int = 1, micro_batches_done: int = 0,
                 total_steps: int | None = None):
        self.sampler, self.batch_size, self.accumulate = sampler, int(batch_size), int(accumulate)
        self.micro_batches, self.total_steps = int(micro_batches_done), total_steps

    def __iter__(self):
        epoch, start, size = self.sampler.epoch, self.micro_batches, self.batch_size
        self.micro_batches = start + len(self.sampler) // size  # the full micro-batches of this epoch
        return (SampleKey(epoch, i, (start + k // size) // self.accumulate + 1, self.total_steps)
                for k, i in enumerate(self.sampler))

    def __len__(self) -> int:
        return len(self.sampler)


class SkippingCollate:
    """Collate ``(sample, problems)`` items into ``(batch, problems of the whole batch)``."""

    def __init__(self, collate: Callable | None = None):
        self.collate = collate or default_collate

    def __call__(self, items: list):
        samples = [sample for sample, _ in items]
        return self.collate(samples), [p for _, problems in items for p in problems]


def check_unreadable(problems: set[str], dataset_size: int, max_fraction: float) -> None:
    """Raise :class:`UnreadableDataError` naming the files when the distinct unreadable samples exceed
    ``max_fraction`` of the dataset."""
    if len(problems) > max_fraction * dataset_size:
        listed = sorted(problems)
        raise UnreadableDataError(
            f"{len(listed)} of {dataset_size} samples could not be read, more than data.max_bad_fraction="
            f"{max_fraction:g}; stopping. Unreadable: " + "; ".join(listed[:10]) + (" ..." if len(listed) > 10 else "")
        )
