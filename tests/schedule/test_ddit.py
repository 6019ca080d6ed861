import numpy as np
import pytest

from ddit_export.errors import ConfigError
from ddit_export.schedule import DDiTPolicy, StaticSchedule, make_policy, patch_std, sigma_at, third_difference
from ddit_export.settings import GenerateSettings, ScheduleSettings

GRID = (8, 8)
rng = np.random.default_rng(0)


def ints(*shape):
    return rng.integers(-50, 50, size=shape).astype(np.float32)


def test_constant_velocity_and_acceleration_give_exactly_zero():
    a, b, c = ints(1, 64, 12), ints(1, 64, 12), ints(1, 64, 12)
    lin = [a + b * n for n in range(4)]
    quad = [a + b * n + c * n * n for n in range(4)]
    assert np.array_equal(third_difference(lin), np.zeros_like(a))
    assert np.array_equal(third_difference(quad), np.zeros_like(a))


def test_cubic_gives_six_times_its_leading_coefficient():
    a, d = ints(1, 64, 12), ints(1, 64, 12)
    cubic = [a + d * n**3 for n in range(7)]
    assert np.array_equal(third_difference(cubic[:4]), 6 * d)
    assert np.array_equal(third_difference(cubic), 6 * d)  # only the last four count


def _history(d3):
    """Four latents whose third difference is exactly d3."""
    z = np.zeros_like(d3)
    return [z, z, z, d3]


def _checker(s=0.5, c=12):
    """Every token's channels alternate +s, -s: std s inside every patch of every size."""
    return np.tile(np.array([s, -s] * (c // 2)), (1, GRID[0] * GRID[1], 1))


def test_decision_flips_exactly_at_tau():
    d3 = _checker(0.5)
    assert sigma_at(d3, GRID, 2, 0.4)[0] == 0.5 and sigma_at(d3, GRID, 4, 0.4)[0] == 0.5
    at = DDiTPolicy(ScheduleSettings(tau=0.5), GRID, (1, 2, 4)).decide(5, _history(d3))
    above = DDiTPolicy(ScheduleSettings(tau=np.nextafter(0.5, 1)), GRID, (1, 2, 4)).decide(5, _history(d3))
    assert at.size == 1 and at.sigmas == {2: 0.5, 4: 0.5}
    assert above.size == 4


def test_largest_passing_size_wins():
    # constant inside each 2x2 token block (std 0 at size 2 apart from channels), varying between blocks
    blocks = rng.normal(size=(4, 4)) * 10
    fine = np.kron(blocks, np.ones((2, 2))).reshape(1, 64, 1) + _checker(0.5)
    pol = DDiTPolicy(ScheduleSettings(tau=0.6), GRID, (1, 2, 4))
    d = pol.decide(3, _history(fine))
    assert d.sigmas[2] == pytest.approx(0.5) and d.sigmas[4] > 1
    assert d.size == 2


@pytest.mark.parametrize("seed", range(5))
def test_large_third_difference_never_yields_a_coarse_size(seed):
    d3 = np.random.default_rng(seed).normal(size=(2, 64, 12)) * 10
    for tau in (1e-3, 0.1, 1.0, 5.0):
        assert DDiTPolicy(ScheduleSettings(tau=tau), GRID, (1, 2, 4)).decide(9, _history(d3)).size == 1


def test_warmup_steps_run_fine_even_when_smooth():
    z = np.zeros((1, 64, 12))
    pol = DDiTPolicy(ScheduleSettings(tau=1.0, warmup=5), GRID, (1, 2, 4))
    assert [pol.decide(i, [z] * min(i + 1, 4)).size for i in range(7)] == [1, 1, 1, 1, 1, 4, 4]
    assert pol.decide(2, [z] * 3).reason == "warmup"


def test_batch_takes_the_most_cautious_sample():
    smooth, rough = _checker(0.001), np.random.default_rng(1).normal(size=(1, 64, 12))
    pol = DDiTPolicy(ScheduleSettings(tau=0.01), GRID, (1, 2, 4))
    assert pol.decide(3, _history(smooth)).size == 4
    assert pol.decide(3, _history(np.concatenate([smooth, rough]))).size == 1


def test_sizes_that_do_not_divide_the_grid_are_never_candidates():
    pol = DDiTPolicy(ScheduleSettings(tau=1.0), (6, 6), (1, 2, 4))
    d = pol.decide(3, _history(np.zeros((1, 36, 12))))
    assert set(d.sigmas) == {2} and d.size == 2


def test_patch_std_matches_a_direct_computation():
    d = rng.normal(size=(1, 64, 3))
    direct = d.reshape(8, 8, 3)[0:2, 2:4].std()
    assert patch_std(d, GRID, 2)[0, 1] == pytest.approx(direct)


def test_static_and_coarse_first_policies():
    s = make_policy(GenerateSettings(steps=4, static=(4, 2, 1, 1)), GRID, (1, 2, 4))
    assert [s.decide(i, []).size for i in range(4)] == [4, 2, 1, 1]
    cf = make_policy(GenerateSettings(steps=5, coarse_first=(2, 4)), GRID, (1, 2, 4))
    assert [cf.decide(i, []).size for i in range(5)] == [4, 4, 1, 1, 1]
    with pytest.raises(ConfigError, match="not available"):
        StaticSchedule((1, 4), (6, 6), (1, 2, 4))


def test_same_size_window_holds_until_the_window_is_homogeneous():
    smooth = _history(_checker(0.001))
    rough = _history(np.random.default_rng(2).normal(size=(1, 64, 12)))
    paper = DDiTPolicy(ScheduleSettings(tau=0.01), GRID, (1, 2, 4))
    held = DDiTPolicy(ScheduleSettings(tau=0.01, window="same-size"), GRID, (1, 2, 4))
    seq = [smooth] * 3 + [smooth, rough, rough, rough, rough, smooth, smooth]
    assert [paper.decide(i, h).size for i, h in enumerate(seq)] == [1, 1, 1, 4, 1, 1, 1, 1, 4, 4]
    got = [held.decide(i, h) for i, h in enumerate(seq)]
    # step 3 decides (three fine steps behind it); steps 4-5 hold 4 although their window is rough; step 6 sees
    # three coarse steps and decides again (rough -> fine); steps 7-8 hold fine; step 9 decides (smooth -> 4)
    assert [d.size for d in got] == [1, 1, 1, 4, 4, 4, 1, 1, 1, 4]
    assert [d.reason for d in got][3:] == ["rule", "hold", "hold", "rule", "hold", "hold", "rule"]
    with pytest.raises(ConfigError):
        ScheduleSettings(window="sometimes")


def test_size_four_can_have_its_own_threshold():
    d3 = _checker(0.5)  # std 0.5 at sizes 2 and 4
    both = ScheduleSettings(tau=0.6)
    strict4 = ScheduleSettings(tau=0.6, tau4=0.4)
    loose4 = ScheduleSettings(tau=0.4, tau4=0.6)
    assert DDiTPolicy(both, GRID, (1, 2, 4)).decide(5, _history(d3)).size == 4
    assert DDiTPolicy(strict4, GRID, (1, 2, 4)).decide(5, _history(d3)).size == 2  # 4 refused, 2 passes
    assert DDiTPolicy(loose4, GRID, (1, 2, 4)).decide(5, _history(d3)).size == 4  # 2 refused, 4 passes
    with pytest.raises(ConfigError, match="tau4"):
        ScheduleSettings(tau4=-1.0)


def test_fine_window_decides_on_fine_steps_holds_then_probes():
    smooth = _history(_checker(0.001))
    pol = DDiTPolicy(ScheduleSettings(tau=0.01, window="fine", hold=3), GRID, (1, 2, 4))
    got = [pol.decide(i, smooth) for i in range(14)]
    # warm-up 3 fine; rule -> 4; held to 3 steps at 4; 3 fine probe steps; rule again on a fine window
    assert [d.size for d in got] == [1, 1, 1, 4, 4, 4, 1, 1, 1, 4, 4, 4, 1, 1]
    assert [d.reason for d in got][3:10] == ["rule", "hold", "hold", "probe", "probe", "probe", "rule"]
    rough = _history(np.random.default_rng(2).normal(size=(1, 64, 12)))
    fine = DDiTPolicy(ScheduleSettings(tau=0.01, window="fine"), GRID, (1, 2, 4))
    assert [fine.decide(i, rough).reason for i in range(6)] == ["warmup"] * 3 + ["rule"] * 3  # fine: decide every step


def test_x0_signal_takes_the_difference_of_the_predicted_clean_sample():
    """signal x0: the rule reads x̂0 = x - σ v of the last four steps (observe), not the latents it is given."""
    rng2 = np.random.default_rng(3)
    xs = [rng2.normal(size=(1, 64, 12)) for _ in range(6)]
    vs = [rng2.normal(size=(1, 64, 12)) for _ in range(6)]
    sig = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5]
    pol = DDiTPolicy(ScheduleSettings(tau=1e9, signal="x0"), GRID, (1, 2, 4))
    assert not pol.needs_history
    decided = []
    for i in range(6):
        decided.append(pol.decide(i, []))  # the latent history is not read
        pol.observe(i, xs[i], vs[i], sig[i], 0.0)
    x0 = [x - s * v for x, s, v in zip(xs, sig, vs)]
    assert [d.reason for d in decided] == ["warmup"] * 4 + ["rule"] * 2  # four x̂0 exist after step 3
    want = sigma_at(third_difference(x0[1:5]), GRID, 2, 0.4)[0]
    assert decided[5].sigmas[2] == pytest.approx(want, rel=1e-12)
    assert decided[5].size == 4


def test_rule_variants_stay_out_of_specs_and_manifests_at_their_defaults():
    from ddit_export.export.build import _schedule_entry
    from ddit_export.settings import parse_policy, policy_spec

    plain = ScheduleSettings(tau=0.002)
    assert policy_spec(plain) == "ddit:tau=0.002,eps=0.4,warmup=3,window=any"
    assert set(_schedule_entry(plain, video=False)) & {"tau4", "signal", "hold"} == set()
    var = parse_policy("ddit:tau=0.002,tau4=0.001,signal=x0,window=fine,hold=5")
    assert (var.tau4, var.signal, var.window, var.hold) == (0.001, "x0", "fine", 5)
    assert parse_policy(policy_spec(var)) == var
    assert _schedule_entry(var, video=False)["signal"] == "x0"
