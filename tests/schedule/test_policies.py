import numpy as np
import pytest

from ddit_export.errors import ConfigError
from ddit_export.schedule import Ladder, ladder_sizes, make_policy
from ddit_export.schedule.probe import ProbePolicy
from ddit_export.settings import GenerateSettings, ScheduleSettings, parse_policy, policy_spec

GRID = (8, 8)
SIZES = (1, 2, 4)


def _sizes(policy, steps):
    return [policy.decide(i, []).size for i in range(steps)]


def test_ladder_family_is_head_size4_size2_tail():
    assert ladder_sizes(10, 1, 2, 3) == (1, 4, 4, 2, 2, 2, 2, 1, 1, 1)
    assert ladder_sizes(5, 0, 0, 0) == (2,) * 5  # may start coarse at step 0
    with pytest.raises(ConfigError):
        ladder_sizes(5, 2, 2, 2)
    gs = GenerateSettings(steps=10, schedule=ScheduleSettings(policy="ladder", head=1, n4=2, tail=3))
    assert _sizes(make_policy(gs, GRID, SIZES), 10) == list(ladder_sizes(10, 1, 2, 3))
    with pytest.raises(ConfigError):  # size 4 does not divide a 6x6 grid
        Ladder(10, 0, 2, 3, (6, 6), SIZES)


def _probe(detail, steps=10, **kw):
    s = ScheduleSettings(policy="probe", head=1, n4=1, tail=2, extra=3, detail=detail, **kw)
    return ProbePolicy(s, steps, GRID, SIZES)


def _smooth_and_detailed():
    """x̂0 = x − σ·v with σ = 1: constant inside every 2x2 patch (std 0), or a ±0.5 checkerboard per patch."""
    smooth = np.ones((1, 64, 12))
    checker = np.tile(np.array([0.5, -0.5] * 6), (1, 64, 1))  # std 0.5 inside every patch
    return smooth, checker


@pytest.mark.parametrize("detailed", [False, True])
def test_probe_lengthens_the_fine_tail_only_for_a_detailed_prompt(detailed):
    smooth, checker = _smooth_and_detailed()
    p = _probe(detail=0.1)
    assert p.decide(0, []).size == 1 and p.decide(0, []).reason == "probe"
    x0 = checker if detailed else smooth
    p.observe(0, x0 + 2.0, np.full_like(x0, 2.0), 1.0, 0.9)  # x − σ v = x0
    assert p.signal == pytest.approx(0.5 if detailed else 0.0)
    got = [p.decide(i, []).size for i in range(1, 10)]
    tail = 5 if detailed else 2
    assert got == [4] + [2] * (8 - tail) + [1] * tail


def test_probe_reads_only_its_head_step_and_batch_takes_the_most_detailed_sample():
    smooth, checker = _smooth_and_detailed()
    p = _probe(detail=0.1)
    both = np.concatenate([smooth, checker])
    p.observe(0, both, np.zeros_like(both), 1.0, 0.9)
    p.observe(5, smooth[:1] * 0 + 9, np.zeros((1, 64, 12)), 0.5, 0.4)  # later (coarse) steps are not read
    assert p.signal == pytest.approx(0.5)


def test_probe_reads_its_first_step_when_it_has_no_head():
    smooth, checker = _smooth_and_detailed()
    p = ProbePolicy(ScheduleSettings(policy="probe", head=0, n4=2, tail=2, extra=3, detail=0.1), 10, GRID, SIZES)
    assert p.decide(0, []).size == 4  # coarse from step 0
    p.observe(0, checker, np.zeros_like(checker), 1.0, 0.9)
    assert [p.decide(i, []).size for i in range(1, 10)] == [4, 2, 2, 2, 1, 1, 1, 1, 1]
    q = ProbePolicy(p.s, 10, GRID, SIZES)
    q.decide(0, [])
    with pytest.raises(RuntimeError):  # a loop that never calls observe() is a bug, not a silent fallback
        q.decide(1, [])


def test_probe_validation():
    with pytest.raises(ConfigError):
        GenerateSettings(steps=6, schedule=ScheduleSettings(policy="probe", head=1, tail=3, extra=3))
    with pytest.raises(ConfigError):
        ScheduleSettings(policy="nope")


def test_policy_spec_round_trip_and_errors():
    s = parse_policy("ladder:n4=4,tail=8")
    assert (s.policy, s.head, s.n4, s.tail) == ("ladder", 0, 4, 8)
    assert parse_policy(policy_spec(s)) == s
    p = parse_policy("probe:detail=0.2,extra=3")
    assert parse_policy(policy_spec(p)) == p and p.detail == 0.2
    base = ScheduleSettings(tau=0.002)
    assert parse_policy("ddit:eps=0.3", base).tau == 0.002  # knobs not given come from the profile
    assert parse_policy("ladder:tail=9", base).tau == 0.002  # ... of whatever policy it names
    for bad in ("ladder:tail", "ladder:foo=1", "ladder:tail=x", "magic"):
        with pytest.raises(ConfigError):
            parse_policy(bad)
