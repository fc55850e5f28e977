"""Rank-0 training logs: a JSONL metrics file, TensorBoard scalars and a tqdm progress bar.

Choices:
- ``metrics.jsonl``: one JSON object per logged step (``step``, ``epoch``, ``loss``, each loss term,
  ``lr``, ``sec_per_step``, ``samples_per_s``, ``skipped_nonfinite``, ...), flushed at once so a killed run
  keeps what it logged. Non-finite values are written as ``null`` (strict JSON).
- On resume from step ``s`` the lines of steps after ``s`` (logged by the interrupted run after its last
  checkpoint, or cut short by the kill) are dropped, and TensorBoard purges its events after ``s``, so
  both read as one uninterrupted run.
- TensorBoard gets the same keys under ``train/`` (``train/loss``, ``train/lr``, ...) in ``out_dir/tb``.
  ``SummaryWriter`` is imported when a logger is made, so importing the package stays light.
- Every rank may build a logger; only the one built with ``enabled=True`` (rank 0) writes anything.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from tqdm import tqdm

METRICS = "metrics.jsonl"
TENSORBOARD = "tb"

log = logging.getLogger("renderssl.train")


def _plain(value):
    value = float(value) if not isinstance(value, (int, str)) else value
    return None if isinstance(value, float) and not math.isfinite(value) else value


def read_metrics(path) -> list[dict]:
    """The records of a ``metrics.jsonl`` (a torn last line from a killed writer is ignored)."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def trim_metrics(path, last_step: int) -> None:
    """Keep only the records of ``metrics.jsonl`` with ``step <= last_step``."""
    path = Path(path)
    if path.exists():
        kept = [r for r in read_metrics(path) if r.get("step", 0) <= last_step]
        path.write_text("".join(json.dumps(r) + "\n" for r in kept))


class TrainLogger:
    """Writes metrics of logged steps; drives the progress bar. Use as a context manager or ``close()``."""

    def __init__(self, out_dir, enabled: bool = True, start_step: int = 0, total_steps: int | None = None, progress: bool = True):
        self.enabled = enabled
        self.out_dir = Path(out_dir)
        self.metrics_path = self.out_dir / METRICS
        self._file = self._writer = self._bar = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.out_dir.mkdir(parents=True, exist_ok=True)
        tb_dir = self.out_dir / TENSORBOARD
        if start_step > 0:
            trim_metrics(self.metrics_path, start_step)
            self._file = open(self.metrics_path, "a")
        else:  # a fresh run: drop the logs of an earlier run in this directory
            self._file = open(self.metrics_path, "w")
            for old in tb_dir.glob("events.out.tfevents.*") if tb_dir.is_dir() else ():
                old.unlink()
        self._writer = SummaryWriter(str(tb_dir), purge_step=start_step + 1 if start_step > 0 else None)
        self._bar = tqdm(total=total_steps, initial=start_step, disable=not progress, dynamic_ncols=True, desc="train")

    def log(self, step: int, scalars: dict) -> dict:
        """Write ``{"step": step, **scalars}`` as a JSONL line and TensorBoard scalars; returns the record."""
        record = {"step": int(step), **{k: _plain(v) for k, v in scalars.items()}}
        if not self.enabled:
            return record
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                self._writer.add_scalar(f"train/{key}", value, step)
        self._writer.flush()
        if "loss" in record and "lr" in record:
            loss = "nan" if record["loss"] is None else f"{record['loss']:.4g}"
            self._bar.set_postfix(loss=loss, lr=f"{record['lr']:.3g}", refresh=False)
        return record

    def advance(self, steps: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(steps)

    def warning(self, message: str) -> None:
        """A warning through ``logging`` on the enabled (rank-0) logger, above the progress bar."""
        if not self.enabled:
            return
        if self._bar is not None and not self._bar.disable:
            self._bar.clear()
        log.warning(message)
        if self._bar is not None and not self._bar.disable:
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._writer is not None:
            self._writer.close()
        if self._file is not None:
            self._file.close()
        self._file = self._writer = self._bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
