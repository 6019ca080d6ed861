import json
import math

import pytest
import torch

from ddit_export.api import build_settings
from ddit_export.errors import ConfigError
from ddit_export.runtime.backends.torch import TorchBackend
from ddit_export.runtime.cache import StepCache, make_cache
from ddit_export.runtime.generate import generate
from ddit_export.schedule.trace import Trace
from ddit_export.settings import CacheSettings


def _run(cache: StepCache, sigmas, velocity, sizes=None):
    """Drive the cache like the loop does; returns the kinds and the velocities it used. With ``sizes`` (the
    policy's patch size per step) the cache is told each step's size and ``velocity`` takes (σ, size)."""
    kinds, used = [], []
    for i, s in enumerate(sigmas):
        k = None if sizes is None else sizes[i]
        if cache.should_compute(i, s, k):
            v = velocity(s) if sizes is None else velocity(s, k)
            cache.update(i, s, v, k)
            kinds.append("m")
        else:
            v = cache.predict(s)
            kinds.append("c")
        used.append(v)
    return "".join(kinds), used


SIGMAS = [1 - i / 12 for i in range(12)]
SWITCH_SIZES = [1, 1, 1, 2, 2, 2, 2, 1, 1, 1, 1, 1]  # a ladder's sizes: switches at steps 3 and 7


def test_interval_warmup_and_tail_decide_which_steps_run():
    kinds, _ = _run(StepCache(CacheSettings("taylor", interval=3, warmup=2, tail=2), 12), SIGMAS,
                    lambda s: torch.full((1, 4, 2), s))
    assert kinds == "mmccmccmccmm"


@pytest.mark.parametrize("order,velocity", [(1, lambda s: 2.0 * s - 1.0 + torch.zeros(1, 4, 2)),
                                            (2, lambda s: 3.0 * s * s - s + torch.arange(8.0).view(1, 4, 2))])
def test_extrapolation_is_exact_on_polynomials_of_its_order(order, velocity):
    kinds, used = _run(StepCache(CacheSettings("taylor", interval=4, order=order, warmup=3, tail=1), 12), SIGMAS,
                       velocity)
    assert "c" in kinds
    for s, v in zip(SIGMAS, used):
        torch.testing.assert_close(v, velocity(s), atol=1e-4, rtol=1e-4)


def test_order_zero_reuses_the_last_velocity():
    kinds, used = _run(StepCache(CacheSettings("taylor", interval=4, order=0, warmup=1, tail=0), 12), SIGMAS,
                       lambda s: torch.full((1, 2, 2), s))
    assert kinds == "mcccmcccmccc"
    assert float(used[3][0, 0, 0]) == pytest.approx(SIGMAS[0])


def test_threshold_computes_early_when_the_velocity_bends():
    """A velocity linear in σ extrapolates exactly (no early steps); a curved one exceeds the threshold."""
    st = CacheSettings("taylor", interval=6, order=1, warmup=3, tail=0, threshold=1e-3)
    straight, _ = _run(StepCache(st, 12), SIGMAS, lambda s: (1 + s) * torch.ones(1, 2, 2))
    curved, _ = _run(StepCache(st, 12), SIGMAS, lambda s: math.exp(8 * s) * torch.ones(1, 2, 2))
    assert straight == "mmmcccccmccc"
    assert curved.count("m") > straight.count("m")


def test_interval_one_or_off_is_no_cache():
    assert make_cache(CacheSettings(), 28) is None
    assert make_cache(CacheSettings("taylor", interval=1), 28) is None
    assert make_cache(CacheSettings("taylor", interval=2), 28) is not None


@pytest.mark.parametrize("bad", [dict(mode="teacache"), dict(interval=0), dict(order=3), dict(warmup=0),
                                 dict(threshold=0.0), dict(mode="plan"), dict(mode="plan", plan=(0, 1)),
                                 dict(plan=(1, 0)), dict(mode="plan", plan=(1, 0), switch=True)])
def test_bad_cache_settings_are_config_errors(bad):
    with pytest.raises(ConfigError):
        CacheSettings(**bad)


def _gen(model, backend, **kw):
    return generate(model, backend, build_settings(model, prompts=("a red circle",), steps=12, **kw),
                    progress=False, decode=False)


def test_cached_steps_count_zero_flops_and_show_in_the_trace(tiny_model, tmp_path):
    with TorchBackend(tiny_model.transformer) as be:
        r = _gen(tiny_model, be, static=(1,) * 12, cache=dict(mode="taylor", interval=3, warmup=2, tail=1))
    kinds = r.trace.kinds
    assert "".join("c" if k == "cached" else "m" for k in kinds) == "mmccmccmccmm"
    assert all(s.flops == 0 for s in r.trace.steps if s.kind == "cached")
    assert r.trace.flops_ratio == pytest.approx(kinds.count("model") / 12)
    back = Trace.load(r.trace.save(tmp_path / "t.json"))
    assert back.kinds == kinds and back.flops_ratio == pytest.approx(r.trace.flops_ratio)
    d = json.loads((tmp_path / "t.json").read_text())
    for s in d["steps"]:
        del s["kind"]  # a trace written before step kinds existed still reads, every step a model step
    (tmp_path / "old.json").write_text(json.dumps(d))
    assert set(Trace.load(tmp_path / "old.json").kinds) == {"model"}


def test_interval_one_equals_no_cache_exactly(tiny_model):
    with TorchBackend(tiny_model.transformer) as be:
        plain = _gen(tiny_model, be)
        one = _gen(tiny_model, be, cache=dict(mode="taylor", interval=1))
    assert torch.equal(plain.latents, one.latents)
    assert plain.trace.sizes == one.trace.sizes


def test_cache_composes_with_size_switching(tiny_model):
    """Velocities of coarse steps come back in fine-token form; the static schedule stays aligned to the step
    index on cached steps; the computed steps run the schedule's size."""
    static = (1, 1, 1, 4, 4, 2, 2, 2, 2, 1, 1, 1)
    with TorchBackend(tiny_model.transformer) as be:
        r = _gen(tiny_model, be, static=static, cache=dict(mode="taylor", interval=2, warmup=3, tail=2))
    assert r.trace.sizes == list(static)
    assert "cached" in r.trace.kinds
    assert r.latents.shape[1] == tiny_model.geometry().tokens(1)  # fine-token form
    assert torch.isfinite(r.latents).all()
    fl = [s.flops for s in r.trace.steps]
    model_steps = [s for s in r.trace.steps if s.kind == "model"]
    assert {s.size for s in model_steps} >= {1, 2, 4}
    assert fl[0] > max(s.flops for s in model_steps if s.size == 4) > 0


def test_rule_sees_every_step_with_the_cache(tiny_model):
    """The DDiT rule decides on every step (cached ones too) from the loop's own latents."""
    with TorchBackend(tiny_model.transformer) as be:
        r = _gen(tiny_model, be, tau=10.0, cache=dict(mode="taylor", interval=3))
    assert [s.reason for s in r.trace.steps[:3]] == ["warmup"] * 3
    assert all(s.reason == "rule" and s.sigmas for s in r.trace.steps[3:])
    assert "cached" in r.trace.kinds


def test_plan_replays_kinds(tiny_model):
    plan = (1, 1, 0, 1, 0, 0, 1, 1, 0, 1, 1, 1)
    with TorchBackend(tiny_model.transformer) as be:
        r = _gen(tiny_model, be, cache=CacheSettings("plan", plan=plan))
    assert [int(k == "model") for k in r.trace.kinds] == list(plan)


def test_cache_gives_the_same_result_on_torch_and_the_ort_bundle(tiny_bundle, tiny_model):
    from ddit_export.runtime.bundle_model import open_bundle

    cache = dict(mode="taylor", interval=3, order=1)
    static = (1, 1, 1, 2, 2, 4, 4, 2, 2, 1, 1, 1)
    bm, backend = open_bundle(tiny_bundle)
    with backend:
        ort = _gen(bm, backend, static=static, cache=cache)
    with TorchBackend(tiny_model.transformer) as be:
        tor = _gen(tiny_model, be, static=static, cache=cache)
    assert ort.trace.kinds == tor.trace.kinds and "cached" in tor.trace.kinds
    torch.testing.assert_close(ort.latents.float(), tor.latents.float(), atol=1e-3, rtol=1e-3)


def test_switch_computes_the_first_step_of_each_size():
    """With ``switch`` the step after a patch-size change is computed; without it the interval alone decides."""
    st = CacheSettings("taylor", interval=6, warmup=3, tail=1)

    def run(settings):
        return _run(StepCache(settings, 12), SIGMAS, lambda s, k: torch.full((1, 2, 2), s), SWITCH_SIZES)[0]

    assert run(st) == "mmmcccccmccm"
    assert run(CacheSettings(**dict(st.__dict__, switch=True))) == "mmmmcccmcccm"  # steps 3 and 7 switch size


def test_switch_extrapolates_from_the_current_size_only():
    """After a switch the history restarts: a velocity that jumps with the size is extrapolated from the points of
    the size now running (exact for a linear one once two are in), never through the jump."""
    def velocity(s, k):
        return torch.full((1, 2, 2), s + (100.0 if k == 2 else 0.0))

    kinds, used = _run(StepCache(CacheSettings("taylor", interval=2, order=1, warmup=3, tail=1, switch=True), 12),
                       SIGMAS, velocity, SWITCH_SIZES)
    assert kinds == "mmmmcmcmcmcm"
    torch.testing.assert_close(used[6], velocity(SIGMAS[6], 2))  # steps 3 and 5, both size 2: linear, exact
    assert float((used[8] - velocity(SIGMAS[8], 1)).abs().max()) < 0.1  # step 7 alone (reuse), not through the jump
    torch.testing.assert_close(used[10], velocity(SIGMAS[10], 1))  # steps 7 and 9


def test_switch_refresh_in_generate_and_the_cli(tiny_model, tmp_path):
    """generate passes each step's size to the cache: a ladder's first coarse and first fine step are computed;
    ``--cache-switch`` reaches the trace's settings."""
    from click.testing import CliRunner

    from ddit_export.cli import main

    static = (1, 1, 1, 4, 4, 4, 4, 4, 1, 1, 1, 1)
    with TorchBackend(tiny_model.transformer) as be:
        plain = _gen(tiny_model, be, static=static, cache=dict(mode="taylor", interval=6, tail=1))
        sw = _gen(tiny_model, be, static=static, cache=dict(mode="taylor", interval=6, tail=1, switch=True))
    assert [i for i, k in enumerate(plain.trace.kinds) if k == "model"] == [0, 1, 2, 8, 11]
    assert [i for i, k in enumerate(sw.trace.kinds) if k == "model"] == [0, 1, 2, 3, 8, 11]
    assert not torch.equal(plain.latents, sw.latents)
    out = tmp_path / "t.json"
    r = CliRunner().invoke(main, ["generate", "--model", "tiny", "--steps", "12", "--schedule",
                                  ",".join(map(str, static)), "--cache-interval", "6", "--cache-tail", "1",
                                  "--cache-switch", "--out", str(tmp_path / "img"), "--trace", str(out)])
    assert r.exit_code == 0, r.output
    d = json.loads(out.read_text())
    assert d["settings"]["generate"]["cache"]["switch"] is True
    assert [s["step"] for s in d["steps"] if s["kind"] == "model"] == [0, 1, 2, 3, 8, 11]


def test_bundle_manifest_carries_a_cache_profile(bundle_copy):
    from ddit_export.runtime.bundle_model import open_bundle

    m = json.loads((bundle_copy / "manifest.json").read_text())
    m["cache"] = {"mode": "taylor", "interval": 3}
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    bm, backend = open_bundle(bundle_copy, verify=False)
    with backend:
        gs = build_settings(bm, steps=12)
        assert gs.cache == CacheSettings("taylor", interval=3)
        assert build_settings(bm, steps=12, cache=dict(mode="off")).cache.mode == "off"


def test_a_cache_knob_alone_turns_the_cache_on(tiny_model):
    assert build_settings(tiny_model, cache=dict(interval=4)).cache == CacheSettings("taylor", interval=4)
    assert build_settings(tiny_model, cache=dict(mode=None, interval=None)).cache == CacheSettings()
