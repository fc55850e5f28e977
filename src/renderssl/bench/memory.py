"""Peak memory of a block of work, on CPU and CUDA, and the device synchronisation timings need.

CUDA: ``torch.cuda`` peak allocated bytes. CPU: the process's resident-set high-water mark (VmHWM),
reset through /proc/self/clear_refs before the block, minus the resident size at its start. glibc's
malloc is asked to serve large blocks by mmap (a fixed 1 MiB threshold) so freed tensors leave the
resident set at once and the figure is the block's own peak. Linux only; elsewhere CPU peaks read None.
"""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

import torch

_M_MMAP_THRESHOLD = -3
def status_kib(field: str, pid: int | str = "self") -> int | None:
    """A kB field (VmRSS, VmHWM, ...) of process ``pid``'s /proc status; None where unreadable."""
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work (no-op on CPU) so a wall-clock timer measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def use_mmap_for_large_blocks(threshold: int = 1 << 20) -> bool:
    """Serve allocations >= ``threshold`` bytes by mmap so that they are returned to the OS on free."""
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False


class PeakMemory:
    """``with PeakMemory(device) as peak: ...``; afterwards ``peak.bytes`` (None if unmeasurable)."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.bytes: int | None = None

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            except OSError:
                self._start = None
                return self
            self._start = status_kib("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self._start
        elif self._start is not None:
            peak = status_kib("VmHWM")
            self.bytes = None if peak is None else max(0, peak - self._start) * 1024

