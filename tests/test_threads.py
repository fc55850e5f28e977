import pytest
import torch

from renderssl import threads as threads_mod
from renderssl.bench.machine import CpuSnapshot
from renderssl.cli import parse_args
from renderssl.errors import InputError
from renderssl.threads import (ThreadGovernor, ThreadRequest, auto_thread_count, auto_worker_count, resolve_request,
                               resolve_workers)


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("cores, busy, expected", [
    (2, 0.0, 2), (2, 0.45, 2), (2, 0.5, 2), (2, 0.51, 1), (2, 1.0, 1), (2, 2.0, 1),  # a core is free below 50% use
    (16, 3.0, 13), (16, 3.6, 12), (1, 0.0, 1), (2.5, 0.0, 2),  # a fractional cgroup quota rounds down
])
def test_auto_thread_count_by_hand(cores, busy, expected):
    assert auto_thread_count(cores, busy) == expected


def test_request_precedence_and_errors():
    env = {"RENDERSSL_THREADS": "3", "OMP_NUM_THREADS": "5"}
    assert resolve_request(2, env) == ThreadRequest(2, "--threads")
    assert resolve_request(0, env) == ThreadRequest(3, "RENDERSSL_THREADS")
    assert resolve_request(0, {"OMP_NUM_THREADS": "5"}) == ThreadRequest(5, "OMP_NUM_THREADS")
    assert resolve_request(0, {"RENDERSSL_THREADS": "auto", "OMP_NUM_THREADS": "5"}) == ThreadRequest(None, "auto")
    assert resolve_request(0, {}) == ThreadRequest(None, "auto")
    for bad in ("0", "-2", "two"):
        with pytest.raises(InputError, match="RENDERSSL_THREADS"):
            resolve_request(0, {"RENDERSSL_THREADS": bad})
    with pytest.raises(InputError, match="--threads"):
        resolve_request(-1, {})


def _governor(monkeypatch, cores=2, **kwargs):
    monkeypatch.setattr(threads_mod, "usable_cores", lambda: float(cores))
    monkeypatch.setattr(threads_mod, "usable_cpus", lambda: list(range(cores)))
    lines = []
    gov = ThreadGovernor(ThreadRequest(None, "auto"), log=lines.append, environ={}, **kwargs)
    return gov, lines


def _snap(other_jiffies: int, total: int, wall: float) -> CpuSnapshot:
    return CpuSnapshot(busy=other_jiffies, total=total, own=0, wall=wall)


def test_governor_follows_the_load(monkeypatch, restore_threads):
    """A competitor taking one of two cores -> 1 thread; gone -> 2 again; each change logged once."""
    gov, lines = _governor(monkeypatch, interval=0.0)
    gov._choose(_snap(0, 0, 0.0), _snap(100, 200, 1.0), always_log=True)  # 100 of 200 jiffies: 1 core busy
    assert torch.get_num_threads() == 1 and "1.00 of 2" in lines[-1]
    snaps = iter([_snap(195, 400, 2.0), _snap(200, 600, 3.0), _snap(210, 800, 4.0)])
    monkeypatch.setattr(threads_mod, "cpu_snapshot", lambda: next(snaps))
    gov.update()  # 95 / 200 still busy: no change, no line
    assert torch.get_num_threads() == 1 and len(lines) == 1
    gov.update()  # 5 / 200: the competitor stopped
    assert torch.get_num_threads() == 2 and lines[-1].startswith("threads: 1 -> 2")
    gov.update()
    assert len(lines) == 2


def test_governor_waits_for_its_interval(monkeypatch, restore_threads):
    gov, _ = _governor(monkeypatch, interval=3600.0)
    gov._choose(_snap(0, 0, 0.0), _snap(0, 200, threads_mod.time.perf_counter()), always_log=True)
    monkeypatch.setattr(threads_mod, "cpu_snapshot", lambda: pytest.fail("sampled before the interval passed"))
    gov.update()


def test_fixed_and_torchrun_counts(monkeypatch, restore_threads):
    monkeypatch.setattr(threads_mod, "usable_cores", lambda: 16.0)
    lines = []
    gov = ThreadGovernor(ThreadRequest(None, "auto"), log=lines.append, environ={"LOCAL_WORLD_SIZE": "4"})
    assert gov.start() == 4 and not gov.adaptive and "4 local ranks" in lines[-1]
    gov = ThreadGovernor.from_sources(3, {}, log=lines.append)
    monkeypatch.setattr(threads_mod, "cpu_snapshot", lambda: pytest.fail("a fixed count samples no load"))
    assert gov.start() == 3
    gov.update()
    assert "from --threads" in lines[-1]


def test_compute_verbs_take_threads():
    assert parse_args(["pretrain", "gmae_tiny", "--threads", "1", "train.steps=2"]).threads == 1
    assert parse_args(["demo"]).threads == 0
    assert not hasattr(parse_args(["config", "gmae_tiny"]), "threads")


def test_trainer_refits_the_threads_after_every_step(tmp_path):
    import _train_fixture as fx

    from renderssl.train import Trainer

    class Counting:
        calls = 0

        def update(self):
            self.calls += 1

    train, optim, cfg = fx.parse(tmp_path, ["steps=5", "batch_size=4"])
    gov = Counting()
    Trainer(fx.RegressionMethod(cfg), fx.RegressionData(cfg), train, optim, threads=gov).fit()
    assert gov.calls == 5


@pytest.mark.parametrize("cores, expected", [(1, 0), (1.5, 0), (2, 1), (4, 1), (8, 2), (16, 4), (64, 8)])
def test_auto_worker_count_by_hand(cores, expected):
    assert auto_worker_count(cores) == expected


def test_data_workers_auto_resolves_per_local_rank(monkeypatch):
    from renderssl.train.config import DataConfig, from_dict

    monkeypatch.setattr(threads_mod, "usable_cores", lambda: 16.0)
    assert resolve_workers(3) == 3
    assert resolve_workers("auto", {}) == 4
    assert resolve_workers("auto", {"LOCAL_WORLD_SIZE": "2"}) == 2
    assert resolve_workers("auto", {"RENDERSSL_WORKERS": "0"}) == 0 and resolve_workers(2, {"RENDERSSL_WORKERS": "0"}) == 2
    with pytest.raises(InputError, match="RENDERSSL_WORKERS"):
        resolve_workers("auto", {"RENDERSSL_WORKERS": "-1"})
    assert DataConfig().workers == "auto" and from_dict(DataConfig, {"workers": 2}).workers == 2
    for bad in (-1, "many"):
        with pytest.raises(InputError):
            from_dict(DataConfig, {"workers": bad})


def test_live_children_count_as_this_process(tmp_path):
    """A busy child (a DataLoader worker, say) is this process's CPU time, not other processes' load."""
    import subprocess
    import sys
    import time

    from renderssl.bench.machine import live_children_jiffies

    child = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 5: pass"])
    try:
        time.sleep(1.0)
        assert live_children_jiffies() >= 40  # >= 0.4 s of its ~1 s busy (10 ms jiffies), whatever else runs
    finally:
        child.kill()
        child.wait()
