"""GNT's source-view sampler and NPS's hardness-aware curriculum (renderssl.data.views, issue 13).

References: hand values of the schedule; a brute-force twin of GNT's sampler (python sorting of distances,
the same generator calls); exhaustive small cases for never-the-target / no-duplicate; statistics on a line
of cameras (mean distance) and on a large scene (chi-square of frequencies)."""

import math

import pytest
import torch

from renderssl.data.views import (
    SourceViewCurriculum, SourceViewPolicy, curriculum_at, curriculum_hardness, draw_view_count, select_source_views,
    select_target_and_sources, step_view_count, views_by_distance,
)
from renderssl.errors import InputError

T = 1000  # total steps in the schedule tests
ALL_ON = dict(fewer_views=True, farther_views=True, uniform_sampling=True)


def cameras(positions) -> torch.Tensor:
    """(F, 4, 4) identity rotations at the given (F, 3) centres."""
    positions = torch.as_tensor(positions, dtype=torch.float64)
    c2w = torch.eye(4, dtype=torch.float64).repeat(len(positions), 1, 1)  # (F, 4, 4)
    c2w[:, :3, 3] = positions
    return c2w


def random_cameras(F: int, seed: int = 0) -> torch.Tensor:
    return cameras(torch.randn(F, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))


def line_cameras(F: int) -> torch.Tensor:
    return cameras([[float(i), 0.0, 0.0] for i in range(F)])


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- schedule ------------------------------------------------------------------------------------------
def test_hardness_hand_values():
    for schedule, quarter, half in (("linear", 0.25, 0.5), ("cosine", (1 - math.cos(math.pi / 4)) / 2, 0.5),
                                    ("step", 1 / 3, 2 / 3)):
        cfg = SourceViewCurriculum(schedule=schedule, warmup=0.2, ramp=0.6)
        assert curriculum_hardness(cfg, 0.0) == 0.0
        assert curriculum_hardness(cfg, 0.1) == 0.0  # warm-up
        assert curriculum_hardness(cfg, 0.2) == 0.0  # t = 0
        assert curriculum_hardness(cfg, 0.35) == pytest.approx(quarter)  # t = 0.25
        assert curriculum_hardness(cfg, 0.5) == pytest.approx(half)  # t = 0.5
        assert curriculum_hardness(cfg, 0.8) == pytest.approx(1.0)
        assert curriculum_hardness(cfg, 1.0) == 1.0
    step = SourceViewCurriculum(schedule="step")  # stages 4 over the whole run: 0 | 1/3 | 2/3 | 1
    assert [curriculum_hardness(step, p) for p in (0.0, 0.24, 0.25, 0.5, 0.74, 0.75, 1.0)] == \
        pytest.approx([0, 0, 1 / 3, 2 / 3, 2 / 3, 1, 1])
    assert curriculum_hardness(SourceViewCurriculum(warmup=0.5, ramp=0.0), 0.49) == 0.0
    assert curriculum_hardness(SourceViewCurriculum(warmup=0.5, ramp=0.0), 0.5) == 1.0


def test_schedule_first_and_last_step_per_strategy():
    off = SourceViewCurriculum()
    for step in (0, 1, T // 2, T):  # all off: GNT's setting at every step
        p = curriculum_at(off, step, T)
        assert (p.count_centre, p.count_jitter, p.offset_fraction, p.uniform_prob) == (10, 2, 0.0, 0.0)
        assert (p.views_start, p.max_candidates, p.factor_probs, p.include_target_prob) == (10, 22, (0.2, 0.45, 0.35), 0.0)

    fewer = SourceViewCurriculum(fewer_views=True)
    first, last = curriculum_at(fewer, 0, T), curriculum_at(fewer, T, T)
    assert (first.count_min, first.count_max, first.hardness) == (8, 12, 0.0)  # GNT's 10 +- 2
    assert (last.count_min, last.count_max, last.hardness) == (2, 2, 1.0)  # NPS's 2
    assert (curriculum_at(fewer, 1, T).count_min, curriculum_at(fewer, 1, T).count_max) == (8, 12)  # engine's first step
    assert (curriculum_at(fewer, T // 2, T).count_centre, curriculum_at(fewer, T // 2, T).count_jitter) == (6, 2)
    near_end = curriculum_at(fewer, 875, T)  # 10 - 8 * 0.875 = 3: jitter shrinks to 1 (never below 2)
    assert (near_end.count_min, near_end.count_max) == (2, 4)
    assert first.offset_fraction == last.offset_fraction == 0.0 and first.uniform_prob == last.uniform_prob == 0.0

    farther = SourceViewCurriculum(farther_views=True, max_offset_fraction=0.6)
    assert curriculum_at(farther, 0, T).offset_fraction == 0.0
    assert curriculum_at(farther, T, T).offset_fraction == pytest.approx(0.6)
    assert curriculum_at(farther, T, T).count_centre == 10 and curriculum_at(farther, T, T).uniform_prob == 0.0

    uniform = SourceViewCurriculum(uniform_sampling=True, uniform_prob_end=0.5)
    assert curriculum_at(uniform, 0, T).uniform_prob == 0.0
    assert curriculum_at(uniform, T, T).uniform_prob == pytest.approx(0.5)
    assert curriculum_at(uniform, T, T).offset_fraction == 0.0 and curriculum_at(uniform, T, T).count_centre == 10
    assert curriculum_at(uniform, 2 * T, T).progress == 1.0  # past the end: clamped


# ---- GNT's sampler -------------------------------------------------------------------------------------
def gnt_twin(c2w, target, seed):
    """GNT's sampler written the obvious way, with the generator calls in the implementation's order."""
    g = gen(seed)
    F = c2w.shape[0]
    c = c2w[:, :3, 3].tolist()
    dist = [(math.dist(c[i], c[target]), i) for i in range(F) if i != target]
    ranked = [i for _, i in sorted(dist)]  # nearest first, ties by index
    f = int(torch.multinomial(torch.tensor([0.2, 0.45, 0.35], dtype=torch.float64), 1, generator=g)) + 1
    n = int(torch.randint(8, 13, (1,), generator=g))  # 10 + U{-2..2}
    candidates = ranked[:min(10 * f, 22)]
    torch.rand((), generator=g, dtype=torch.float64)  # the uniform-sampling coin (probability 0 here)
    perm = torch.randperm(len(candidates), generator=g)
    return [candidates[int(k)] for k in perm[:min(n, len(candidates))]], f, n


def test_all_off_is_gnt_sampler():
    policy = curriculum_at(SourceViewCurriculum(), 0, T)
    policy_end = curriculum_at(SourceViewCurriculum(), T, T)
    factors, counts = set(), set()
    for F in (5, 14, 40):
        c2w = random_cameras(F, seed=F)
        for seed in range(60):
            target = seed % F
            want, f, n = gnt_twin(c2w, target, seed)
            got = select_source_views(policy, c2w, target, gen(seed))
            assert got.tolist() == want
            assert select_source_views(policy_end, c2w, target, gen(seed)).tolist() == want
            assert got.dtype == torch.int64 and 8 <= n <= 12 and len(got) == min(n, 10 * f, 22, F - 1)
            factors.add(f)
            counts.add(n)
    assert factors == {1, 2, 3} and counts == set(range(8, 13))


def test_views_by_distance_ties_by_index():
    c2w = cameras([[0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 2, 0], [0, 0, 1]])
    assert views_by_distance(c2w, 0).tolist() == [1, 2, 4, 3]


def test_gnt_count_distribution():
    policy = curriculum_at(SourceViewCurriculum(), 0, T)
    g = gen(0)
    counts = torch.tensor([draw_view_count(policy, g) for _ in range(5000)])
    freq = torch.bincount(counts, minlength=13)[8:13].double()
    assert counts.min() == 8 and counts.max() == 12
    assert ((freq - 1000).abs() < 120).all()  # uniform over 8..12 (sd about 28)


# ---- never the target, never a duplicate ---------------------------------------------------------------
def test_never_target_never_duplicate():
    configs = [SourceViewCurriculum(), SourceViewCurriculum(**ALL_ON, uniform_prob_end=1.0, max_offset_fraction=1.0),
               SourceViewCurriculum(**ALL_ON, schedule="step")]
    for F in (2, 3, 5, 12):
        c2w = random_cameras(F, seed=F)
        for cfg in configs:
            for step in (0, T // 2, T):
                policy = curriculum_at(cfg, step, T)
                for target in range(F):
                    for count in [None] + list(range(1, F)):
                        for seed in range(3):
                            got = select_source_views(policy, c2w, target, gen(seed), count)
                            ids = got.tolist()
                            assert target not in ids and len(set(ids)) == len(ids)
                            assert all(0 <= i < F for i in ids)
                            if count is None:
                                assert 1 <= len(ids) <= min(F - 1, policy.count_max)
                            else:
                                assert len(ids) == count


def test_count_above_available_views_raises_and_none_clamps():
    policy = curriculum_at(SourceViewCurriculum(), 0, T)
    c2w = random_cameras(3)
    with pytest.raises(InputError, match="count"):
        select_source_views(policy, c2w, 0, gen(0), count=3)
    for seed in range(20):  # drawn counts 8..12 clamp to the 2 other views
        assert sorted(select_source_views(policy, c2w, 0, gen(seed)).tolist()) == [1, 2]


def test_explicit_count_widens_short_window():
    c2w = line_cameras(30)
    policy = curriculum_at(SourceViewCurriculum(), 0, T)
    for seed in range(50):
        got = select_source_views(policy, c2w, 0, gen(seed), count=12)
        assert len(got) == 12 and got.max() <= 22  # within the nearest 22 even when f = 1 (window widened to 12)


def test_include_target_prob_swaps_target_in():
    policy = curriculum_at(SourceViewCurriculum(include_target_prob=1.0), 0, T)
    c2w = random_cameras(20)
    for seed in range(20):
        got = select_source_views(policy, c2w, 7, gen(seed), count=5).tolist()
        assert got.count(7) == 1 and len(set(got)) == 5


# ---- farther views and uniform sampling ----------------------------------------------------------------
def test_farther_views_mean_distance_grows():
    c2w = line_cameras(41)  # target 0: camera distance = index
    cfg = SourceViewCurriculum(farther_views=True, max_offset_fraction=0.5)
    means = []
    for step in (0, T // 4, T // 2, 3 * T // 4, T):
        policy = curriculum_at(cfg, step, T)
        picks = torch.cat([select_source_views(policy, c2w, 0, gen(s), count=4) for s in range(300)])
        means.append(picks.double().mean().item())
        if step == 0:
            assert picks.max() <= 22  # GNT's nearest candidates
    assert all(a < b for a, b in zip(means, means[1:])), means
    # last step: offset round(0.5 * 40) = 20 moved back to 40 - size: ranks [18, 40) for f = 3, [20, 40) for f = 2
    last = torch.cat([select_source_views(curriculum_at(cfg, T, T), c2w, 0, gen(s), count=4) for s in range(100)])
    assert last.min() >= 19  # rank 18 = view 19


def test_uniform_sampling_end_is_uniform_start_is_nearest():
    F, draws = 60, 6000
    c2w = random_cameras(F, seed=3)
    cfg = SourceViewCurriculum(uniform_sampling=True, uniform_prob_end=1.0)
    nearest22 = set(views_by_distance(c2w, 0)[:22].tolist())
    g = gen(1)
    start = torch.cat([select_source_views(curriculum_at(cfg, 0, T), c2w, 0, g, count=2) for _ in range(500)])
    assert set(start.tolist()) <= nearest22
    end = torch.cat([select_source_views(curriculum_at(cfg, T, T), c2w, 0, g, count=2) for _ in range(draws)])
    freq = torch.bincount(end, minlength=F).double()  # (F,)
    assert freq[0] == 0
    expected = 2 * draws / (F - 1)
    chi2 = ((freq[1:] - expected) ** 2 / expected).sum().item()
    assert chi2 < 110, chi2  # 58 degrees of freedom: mean 58, sd 10.8
    assert set(end.tolist()) == set(range(1, F))


# ---- counts per step, sample views, determinism, errors --------------------------------------------------
def test_step_view_count_is_per_step():
    cfg = SourceViewCurriculum(fewer_views=True)
    for step in (0, 100, 600):
        counts = {step_view_count(cfg, step, T, seed=5) for _ in range(3)}
        assert len(counts) == 1
        policy = curriculum_at(cfg, step, T)
        assert policy.count_min <= counts.pop() <= policy.count_max
    assert step_view_count(cfg, T, T, seed=5) == 2
    assert len({step_view_count(cfg, s, T, seed=0) for s in range(50)}) > 1


def test_select_target_and_sources():
    cfg = SourceViewCurriculum(**ALL_ON)
    c2w = random_cameras(25)
    for seed in range(30):
        ids = select_target_and_sources(cfg, c2w, seed * 30, T, gen(seed), count=3)
        assert len(ids) == 4 and ids[-1] not in ids[:-1].tolist() and len(set(ids.tolist())) == 4
    ids = select_target_and_sources(cfg, c2w, 0, T, gen(0), count=3, target=11)
    assert ids[-1] == 11


def test_determinism():
    cfg = SourceViewCurriculum(**ALL_ON, uniform_prob_end=0.7)
    c2w = random_cameras(50)
    for step in (0, 400, T):
        policy = curriculum_at(cfg, step, T)
        a = [select_source_views(policy, c2w, 3, gen(s)).tolist() for s in range(10)]
        b = [select_source_views(policy, c2w, 3, gen(s)).tolist() for s in range(10)]
        assert a == b
        assert len({tuple(x) for x in a}) > 1


def test_errors():
    for kwargs, name in ((dict(views_end=12), "views_end"), (dict(schedule="exp"), "schedule"),
                         (dict(warmup=0.5, ramp=0.6), "warmup"), (dict(factor_probs=(0.5, 0.4)), "factor_probs"),
                         (dict(uniform_prob_end=1.5), "uniform_prob_end"), (dict(stages=1), "stages"),
                         (dict(include_target_prob=-0.1), "include_target_prob"), (dict(fewer_views=1), "fewer_views")):
        with pytest.raises(InputError, match=name):
            SourceViewCurriculum(**kwargs)
    policy = curriculum_at(SourceViewCurriculum(), 0, T)
    with pytest.raises(InputError, match="c2w_all"):
        select_source_views(policy, torch.zeros(5, 3, 4), 0, gen(0))
    with pytest.raises(InputError, match="c2w_all"):
        select_source_views(policy, random_cameras(1), 0, gen(0))
    with pytest.raises(InputError, match="target"):
        select_source_views(policy, random_cameras(5), 5, gen(0))
    with pytest.raises(InputError, match="generator"):
        select_source_views(policy, random_cameras(5), 0, None)
    with pytest.raises(InputError, match="policy"):
        select_source_views(SourceViewCurriculum(), random_cameras(5), 0, gen(0))
    with pytest.raises(InputError, match="total_steps"):
        curriculum_at(SourceViewCurriculum(), 0, 0)
    assert isinstance(policy, SourceViewPolicy)
