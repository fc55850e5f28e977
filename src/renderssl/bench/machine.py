"""What a benchmark figure ran under: torch threads, usable cores, load, other processes' CPU use.

On a shared machine a figure means little without the load it ran under (on a loaded 2-core machine a
step with 2 torch threads ran 3.6-4.5x slower than with 1), so every ``renderssl bench`` prints
:func:`describe_machine` in its first lines and :func:`describe_load_since` after its figures.

Choices:

- Usable cores: ``os.sched_getaffinity(0)`` (the CPUs this process may be scheduled on; a container
  or ``taskset`` narrows it); where it does not exist (macOS, Windows), all ``os.cpu_count()`` CPUs.
  A cgroup v2 CPU quota (``/sys/fs/cgroup/cpu.max``), when one is set, is printed next to it: it caps
  the CPU time whatever the affinity says.
- Load average: ``os.getloadavg()`` (1, 5, 15 min; runnable + uninterruptible tasks of the whole
  machine, this process included; "n/a" where unavailable).
- Other processes' busy fraction: over a sampling window (0.5 s by default), the non-idle jiffies of
  the usable CPUs' lines of ``/proc/stat`` (user + nice + system + irq + softirq + steal; guest time is
  already inside user) minus this process's own (utime + stime of ``/proc/self/stat``, all its
  threads, + cutime + cstime, its finished child processes, + the same of its running children such as
  DataLoader workers), divided by all the jiffies of those CPUs. 1.0 means the other processes kept every usable
  core busy. While :func:`describe_machine` samples, this process sleeps, so the figure is the load the
  bench is about to meet. Jiffies are 10 ms, so a 0.5 s window on 2 cores resolves 1%. Linux only;
  elsewhere the line says "n/a".
- A warning line is added when torch's intra-op threads exceed the cores the other processes leave
  idle (usable cores x (1 - busy fraction), at least 1): each step then waits on the slowest thread.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

_PROC_STAT = Path("/proc/stat")
_PROC_SELF_STAT = Path("/proc/self/stat")
_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)  # user nice system irq softirq steal (idle = 3, iowait = 4)


@dataclass(frozen=True)
class CpuSnapshot:
    """Jiffies at one instant: (busy, total) summed over the usable CPUs, and this process's own."""

    busy: int
    total: int
    own: int
    wall: float


def usable_cpus() -> list[int]:
    """CPU ids this process may run on (sorted)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def cgroup_cpu_quota(path: Path = _CPU_MAX) -> float | None:
    """CPUs' worth of time the cgroup v2 quota allows (``"200000 100000"`` -> 2.0), None if unlimited."""
    try:
        quota, period = path.read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def parse_proc_stat(text: str, cpus: list[int]) -> tuple[int, int]:
    """(busy, total) jiffies summed over the ``cpuN`` lines of ``/proc/stat`` text for N in ``cpus``."""
    wanted = {f"cpu{c}" for c in cpus}
    busy = total = 0
    for line in text.splitlines():
        name, *fields = line.split()
        if name not in wanted:
            continue
        values = [int(v) for v in fields[:8]]  # guest / guest_nice (fields 9, 10) are inside user / nice
        busy += sum(values[i] for i in _BUSY_FIELDS if i < len(values))
        total += sum(values)
    return busy, total


def parse_self_stat(text: str) -> int:
    """utime + stime + cutime + cstime jiffies of ``/proc/<pid>/stat`` text (fields 14-17; comm may hold
    spaces): the process and its finished children, so a bench that measures in child processes
    (``bench data``, ``bench memory``) counts their work as its own, not as other processes' load."""
    rest = text[text.rindex(")") + 2:].split()  # rest[0] is field 3 (state)
    return sum(int(v) for v in rest[11:15])


def cpu_snapshot(cpus: list[int] | None = None) -> CpuSnapshot | None:
    """Jiffies now, or None where /proc is unreadable (not Linux)."""
    try:
        busy, total = parse_proc_stat(_PROC_STAT.read_text(), usable_cpus() if cpus is None else cpus)
        own = parse_self_stat(_PROC_SELF_STAT.read_text()) + live_children_jiffies()
    except (OSError, ValueError, IndexError):
        return None
    return CpuSnapshot(busy, total, own, time.perf_counter())


def live_children_jiffies(pid: int | None = None) -> int:
    """utime + stime (+ their finished children's) of the running child processes of ``pid`` (this process),
    e.g. DataLoader workers, listed by ``/proc/<pid>/task/<tid>/children``; 0 where that is unreadable. A
    child that exits between two snapshots moves into the parent's cutime only once it is reaped."""
    pid = os.getpid() if pid is None else pid
    total = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return 0
    for task in tasks:
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            try:
                total += parse_self_stat(Path(f"/proc/{child}/stat").read_text())
            except (OSError, ValueError, IndexError):
                continue  # exited meanwhile
    return total


def others_busy(before: CpuSnapshot, after: CpuSnapshot) -> tuple[float, float] | None:
    """(other processes' busy fraction, this process's) of the usable cores between two snapshots,
    each in [0, 1]; None when no jiffy passed."""
    total = after.total - before.total
    if total <= 0:
        return None
    own = after.own - before.own
    other = (after.busy - before.busy) - own
    return min(max(other / total, 0.0), 1.0), min(max(own / total, 0.0), 1.0)


def describe_machine(window: float = 0.5) -> str:
    """Lines naming the torch threads, usable cores, load average and the CPU share other processes
    use over ``window`` seconds (this call sleeps that long). See the module docstring."""
    cpus = usable_cpus()
    threads = torch.get_num_threads()
    quota = cgroup_cpu_quota()
    cores = f"{len(cpus)} of {os.cpu_count()} (affinity {_ranges(cpus)})"
    if quota is not None:
        cores += f", cgroup quota {quota:g} CPUs"
    try:
        load = "load average {:.2f} {:.2f} {:.2f} (1/5/15 min)".format(*os.getloadavg())
    except (AttributeError, OSError):
        load = "load average n/a"
    before = cpu_snapshot(cpus)
    time.sleep(window)
    after = cpu_snapshot(cpus)
    shares = None if before is None or after is None else others_busy(before, after)
    if shares is None:
        busy = "other processes' CPU use n/a (no /proc/stat)"
    else:
        busy = f"other processes keep {100 * shares[0]:.0f}% of the usable cores busy (sampled over {window:g} s)"
    lines = [
        f"machine: torch {torch.__version__}, {threads} torch thread{'s' if threads != 1 else ''} "
        f"(inter-op {torch.get_num_interop_threads()}), usable cores {cores}",
        f"machine: {load}; {busy}",
    ]
    if shares is not None:
        idle = max(1, round(len(cpus) * (1.0 - shares[0])))
        if threads > idle:
            lines.append(f"machine: warning: {threads} torch threads but only about {idle} idle core(s): times are "
                         f"slower and noisier than on an idle machine (try --threads {idle})")
    return "\n".join(lines)


def describe_load_since(before: CpuSnapshot | None) -> str:
    """One line: the CPU share other processes and this one used since ``before`` (a :func:`cpu_snapshot`
    taken when the bench started), i.e. the contention the figures above ran under."""
    after = cpu_snapshot()
    shares = None if before is None or after is None else others_busy(before, after)
    if shares is None:
        return "machine during the bench: n/a (no /proc/stat)"
    return (f"machine during the bench ({after.wall - before.wall:.1f} s): other processes kept "
            f"{100 * shares[0]:.0f}% of the usable cores busy, this process {100 * shares[1]:.0f}%")


def _ranges(ids: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'."""
    parts, start = [], None
    for i, c in enumerate(ids):
        if start is None:
            start = c
        if i + 1 == len(ids) or ids[i + 1] != c + 1:
            parts.append(f"{start}" if start == c else f"{start}-{c}")
            start = None
    return ",".join(parts) or "none"


__all__ = ["CpuSnapshot", "cpu_snapshot", "describe_load_since", "describe_machine", "others_busy", "usable_cpus"]
