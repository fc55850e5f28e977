"""How many torch threads to run: chosen from the cores this process may use and the load on them, and
re-chosen while training as the load changes.

Why: torch's intra-op threads meet at a barrier at the end of every parallel region, so a step runs at
the pace of its slowest thread. When another process holds one of two cores, one of two torch threads
waits for its time slice at every barrier: a ``renderssl demo`` pretraining step took 2.2 s with two
threads against 0.68 s idle (issue 14 saw 4-12 s under other loads), and one thread ran it in 1.06 s.

Where the count comes from, first match wins (:meth:`ThreadGovernor.from_sources`):

1. ``--threads N`` on the command line (N >= 1; 0 means "not given");
2. the environment variable ``RENDERSSL_THREADS`` (an integer, or ``auto``);
3. ``OMP_NUM_THREADS`` (torch reads it too; torchrun sets it to 1 per process unless it is set);
4. ``auto``: :func:`auto_thread_count` of the usable cores and the other processes' load.

A fixed count is applied once. ``auto`` samples the load for a moment at start, then
:meth:`ThreadGovernor.update` (called by the trainer after every step) re-samples it every
``interval`` seconds over the whole interval and changes the count when the load has changed; each
choice and change is logged with its reason.

The policy (:func:`auto_thread_count`), and what we measured to set it:

- usable cores: the CPUs of this process's affinity (``os.sched_getaffinity``), capped by a cgroup v2
  CPU quota where one is set (:mod:`renderssl.bench.machine`);
- load: the cores' worth of CPU time other processes used over the window (the usable CPUs' busy
  jiffies of ``/proc/stat`` minus this process's own, its DataLoader workers included; its own
  threads' spinning does not count);
- threads = max(1, min(floor(usable), floor(usable - busy + SLACK))): a core counts as free while other
  processes use less than ``1 - SLACK`` of it. SLACK = 0.5 comes from the demo's step times under a competing process that
  keeps one core busy a given fraction of the time (docs/results/2026-11-30-speed.md): two threads were
  faster up to a competitor at 50% of a core, one thread from 75%.
- Under torchrun (``LOCAL_WORLD_SIZE`` > 1) the ranks on a machine share it: each takes
  floor(usable / local ranks) threads, fixed, since every rank would count the others' threads as load.

Where ``/proc`` cannot be read (not Linux) ``auto`` uses every usable core and does not adapt.

DataLoader workers (``data.workers: auto``, :func:`resolve_workers`): none on one core, else one per 4
usable cores (per local rank under torchrun), at least 1 and at most 8, fixed for the run. On this
2-core machine one worker made the demo's step 6% faster idle (0.638 against 0.678 s, 2 threads) and 11%
faster with a competing process (0.939 against 1.058 s, 1 thread): the synthetic scenes are generated
while the step runs. Above 2 cores the rule is our choice, not measured. A worker costs a few seconds
to start and stop (a short test run of 20 steps took ~3 s longer), so ``RENDERSSL_WORKERS=N`` sets what
``auto`` means (the test suite uses 0).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from .bench.machine import cgroup_cpu_quota, cpu_snapshot, others_busy, usable_cpus
from .errors import InputError

ENV_VAR = "RENDERSSL_THREADS"
WORKERS_ENV_VAR = "RENDERSSL_WORKERS"  # data.workers=auto's count where set (tests: 0)
SLACK = 0.5  # a core counts as free while other processes use less than 1 - SLACK of it (measured, see above)
INTERVAL_SECONDS = 5.0  # auto: how often the load is re-sampled while training
START_WINDOW_SECONDS = 0.25  # auto: the load sample taken before the first step


def usable_cores() -> float:
    """Cores this process may use: its affinity, capped by a cgroup CPU quota (may be fractional)."""
    cores = float(len(usable_cpus()))
    quota = cgroup_cpu_quota()
    return min(cores, quota) if quota is not None else cores


def auto_thread_count(cores: float, busy_cores: float, slack: float = SLACK) -> int:
    """Threads for ``cores`` usable cores of which other processes keep ``busy_cores`` busy."""
    return max(1, min(math.floor(cores), math.floor(cores - busy_cores + slack)))


def auto_worker_count(cores: float) -> int:
    """DataLoader workers for ``cores`` usable cores (see the module docstring)."""
    return 0 if cores < 2 else min(8, max(1, math.floor(cores / 4)))


def _local_ranks(environ: Mapping[str, str]) -> int:
    return max(1, int(environ.get("LOCAL_WORLD_SIZE", "1") or 1))


def resolve_workers(workers: int | str, environ: Mapping[str, str] = os.environ) -> int:
    """``data.workers``: a count as it is; ``auto``: ``RENDERSSL_WORKERS`` when set, else from the usable cores
    shared by the local ranks."""
    if workers != "auto":
        return int(workers)
    if environ.get(WORKERS_ENV_VAR, "").strip():
        raw = environ[WORKERS_ENV_VAR]
        if not raw.strip().isdigit():
            raise InputError(f"{WORKERS_ENV_VAR}={raw!r}: expected a worker count >= 0")
        return int(raw)
    return auto_worker_count(usable_cores() / _local_ranks(environ))


@dataclass(frozen=True)
class ThreadRequest:
    """A fixed count (``threads``) or ``auto`` (``threads`` None), and where it came from."""

    threads: int | None
    source: str  # "--threads", ENV_VAR, "OMP_NUM_THREADS" or "auto"


def _parse_count(raw: str, where: str) -> int | None:
    """An integer >= 1, or None for ``auto``."""
    if raw.strip().lower() == "auto":
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise InputError(f"{where}={raw!r}: expected a thread count >= 1 or 'auto'")
    return value


def resolve_request(cli_threads: int = 0, environ: Mapping[str, str] = os.environ) -> ThreadRequest:
    """The thread request of ``--threads`` (0: not given), ``RENDERSSL_THREADS`` and ``OMP_NUM_THREADS``."""
    if cli_threads < 0:
        raise InputError(f"--threads must be >= 1 (or 0 to choose from the load), got {cli_threads}")
    if cli_threads:
        return ThreadRequest(cli_threads, "--threads")
    for name in (ENV_VAR, "OMP_NUM_THREADS"):
        if environ.get(name, "").strip():
            count = _parse_count(environ[name], name)
            return ThreadRequest(count, name) if count is not None else ThreadRequest(None, "auto")
    return ThreadRequest(None, "auto")


class ThreadGovernor:
    """Sets torch's intra-op thread count from a :class:`ThreadRequest` and, for ``auto``, keeps it fitted
    to the load (see the module docstring). ``start()`` once, then ``update()`` after every step."""

    def __init__(self, request: ThreadRequest, interval: float = INTERVAL_SECONDS, log: Callable[[str], None] = print,
                 environ: Mapping[str, str] = os.environ):
        self.request = request
        self.interval = interval
        self.log = log
        self.local_ranks = _local_ranks(environ)
        self.cores = usable_cores()
        self.adaptive = request.threads is None and self.local_ranks == 1 and self.cores >= 2
        self._snapshot = None

    @classmethod
    def from_sources(cls, cli_threads: int = 0, environ: Mapping[str, str] = os.environ, **kwargs) -> "ThreadGovernor":
        return cls(resolve_request(cli_threads, environ), environ=environ, **kwargs)

    @property
    def threads(self) -> int:
        return torch.get_num_threads()

    def start(self, window: float = START_WINDOW_SECONDS) -> int:
        """Choose and set the count; log it with its reason. Returns the count."""
        req = self.request
        if req.threads is not None:
            self._set(req.threads, f"from {req.source}")
        elif self.local_ranks > 1:
            self._set(max(1, math.floor(self.cores / self.local_ranks)),
                      f"auto: {self.cores:g} usable cores shared by {self.local_ranks} local ranks (torchrun)")
        elif not self.adaptive:
            self._set(max(1, math.floor(self.cores)), f"auto: {self.cores:g} usable core")
        else:
            before = cpu_snapshot()
            time.sleep(window)
            self._choose(before, cpu_snapshot(), always_log=True)
        return self.threads

    def update(self) -> None:
        """Re-choose the count from the load since the last sample, at most every ``interval`` seconds."""
        if not self.adaptive:
            return
        now = time.perf_counter()
        if self._snapshot is not None and now - self._snapshot.wall < self.interval:
            return
        self._choose(self._snapshot, cpu_snapshot(), always_log=False)

    def _choose(self, before, after, always_log: bool) -> None:
        self._snapshot = after
        shares = None if before is None or after is None else others_busy(before, after)
        if shares is None:
            if after is None:  # no /proc: every usable core, no adaptation
                self.adaptive = False
                self._set(max(1, math.floor(self.cores)), "auto: load unreadable here, every usable core")
            return
        busy = shares[0] * len(usable_cpus())
        count = auto_thread_count(self.cores, busy)
        if always_log or count != self.threads:
            self._set(count, f"auto: other processes keep {busy:.2f} of {self.cores:g} usable cores busy")

    def _set(self, count: int, reason: str) -> None:
        before = torch.get_num_threads()
        torch.set_num_threads(count)
        change = f"{before} -> {count}" if before != count else f"{count}"
        self.log(f"threads: {change} torch thread{'s' if count != 1 else ''} ({reason}; --threads or {ENV_VAR} to set)")


__all__ = ["ENV_VAR", "ThreadGovernor", "ThreadRequest", "auto_thread_count", "auto_worker_count", "resolve_request",
           "resolve_workers", "usable_cores"]
