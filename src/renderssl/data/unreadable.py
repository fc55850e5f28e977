"""Samples that cannot be read are skipped and counted, so one bad file found hours into a run does not
end it, and a run whose data is broadly unreadable stops with the files named.

With lazily read data a corrupt image, a missing depth file or a bad pose surfaces when its sample is
read. :class:`SkipUnreadable` wraps a Dataset: when reading index ``i`` raises an
:class:`~renderssl.errors.InputError` (the readers' error, which names the file and the problem), the
sample is replaced by the next readable one (``i + 1``, ``i + 2``, ... wrapping around), so a batch
keeps its size and a run stays a pure function of its seed; each item is ``(sample, [problems])``.
:class:`SkippingCollate` batches such items into ``(batch, [problems])``. An index may come as ``(epoch,
index)`` (:class:`EpochIndices`): a Dataset with ``set_epoch`` (samples that draw new views each epoch)
is told the epoch in whichever process reads it, so persistent DataLoader workers follow the epochs. The trainer collects the
problems (every rank's), writes each new one to the log once, lists them in the run summary, and stops
when the distinct unreadable samples exceed ``data.max_bad_fraction`` of the dataset.
"""

from __future__ import annotations

from collections.abc import Callable

from torch.utils.data import Dataset, Sampler, default_collate

from ..errors import InputError

MAX_CONSECUTIVE = 64  # unreadable samples in a row before a read gives up


class UnreadableDataError(InputError):
    """Too many samples could not be read; the message names them."""


class SkipUnreadable(Dataset):
    """``dataset`` whose items are ``(sample, problems)``: unreadable samples replaced by the next one."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]):
        epoch, idx = key if isinstance(key, tuple) else (None, key)
        if epoch is not None and hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        problems: list[str] = []
        n = len(self.dataset)
        for k in range(min(n, MAX_CONSECUTIVE)):
            try:
                return self.dataset[(idx + k) % n], problems
            except InputError as err:
                problems.append(str(err))
        raise UnreadableDataError(f"{len(problems)} samples in a row from index {idx} cannot be read: " + "; ".join(problems[:5]))


class EpochIndices(Sampler):
    """``sampler``'s indices as ``(sampler.epoch, index)`` pairs."""

    def __init__(self, sampler):
        self.sampler = sampler

    def __iter__(self):
        epoch = self.sampler.epoch
        return ((epoch, i) for i in self.sampler)

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
