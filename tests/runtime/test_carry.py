"""Detail carry (runtime/carry.py): the block mean against the pixel picture, what a carried step keeps, and the
loop's use of it (generate and the serving loop)."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from ddit_export.api import build_settings
from ddit_export.errors import ConfigError
from ddit_export.images import pack
from ddit_export.runtime.backends.torch import TorchBackend
from ddit_export.runtime.carry import DetailCarry, block_mean, carry_detail, make_carry
from ddit_export.runtime.generate import generate, initial_noise, model_geometry, model_timesteps
from ddit_export.settings import ScheduleSettings, parse_policy, policy_spec
from ddit_export.shapes import TokenGeometry, VideoGeometry


def _image_geom():
    return TokenGeometry(height=32, width=64, vae_scale=1, latent_channels=3)


def _pixels_block_mean(img, k):
    """(B, C, H, W) latent pixels: the mean over each (2k x 2k)-pixel block, broadcast back."""
    m = F.avg_pool2d(img, 2 * k)
    return F.interpolate(m, scale_factor=2 * k, mode="nearest")


@pytest.mark.parametrize("k", [2, 4])
def test_block_mean_is_the_pixel_block_mean_for_flux_packing(k):
    geom = _image_geom()
    img = torch.randn(2, 3, 32, 64, generator=torch.Generator().manual_seed(k))
    v = pack(img, geom)
    got = block_mean(v, geom.grid, k, sub=4, channels_first=True)
    torch.testing.assert_close(got, pack(_pixels_block_mean(img, k), geom))


def test_block_mean_is_per_frame_pixel_block_mean_for_wan_packing():
    from ddit_export.models.wan import pack_video, unpack_video

    geom = VideoGeometry(frames=3, height=16, width=32, vae_scale=1, vae_temporal=1, patch=(1, 2, 2),
                         latent_channels=4)
    clip = torch.randn(1, 4, 3, 16, 32, generator=torch.Generator().manual_seed(0))
    v = pack_video(clip, geom.patch)
    got = unpack_video(carry_detail(v, torch.zeros_like(v), geom, 2), (3, 16, 32), geom.patch)  # = blockmean(v)
    want = torch.stack([_pixels_block_mean(clip[:, :, f], 2) for f in range(3)], dim=2)
    torch.testing.assert_close(got, want)


def test_a_carried_step_keeps_the_coarse_block_means_and_the_fine_detail():
    geom = _image_geom()
    g = torch.Generator().manual_seed(3)
    v, last = torch.randn(1, geom.tokens(1), 12, generator=g), torch.randn(1, geom.tokens(1), 12, generator=g)
    out = carry_detail(v, last, geom, 4)
    bm = lambda t: block_mean(t, geom.grid, 4, 4, True)  # noqa: E731
    torch.testing.assert_close(bm(out), bm(v))
    torch.testing.assert_close(out - bm(out), last - bm(last))
    assert not torch.allclose(out, v)


def test_detail_carry_state():
    geom = _image_geom()
    c = DetailCarry(geom)
    v2 = torch.randn(1, geom.tokens(1), 12)
    assert c.apply(2, v2) is v2  # no fine step yet: nothing to carry
    v1 = torch.randn(1, geom.tokens(1), 12)
    assert c.apply(1, v1) is v1
    v1.add_(1.0)  # the backend reusing its output buffer must not change what was kept
    torch.testing.assert_close(c.apply(2, v2), carry_detail(v2, v1 - 1.0, geom, 2))
    assert make_carry(ScheduleSettings(), geom) is None
    assert isinstance(make_carry(ScheduleSettings(carry="fine"), geom), DetailCarry)


def test_carry_setting_and_spec():
    with pytest.raises(ConfigError, match="carry must be one of off, fine"):
        ScheduleSettings(carry="on")
    s = parse_policy("ladder:head=1,n4=8,tail=6,carry=fine")
    assert s.carry == "fine" and policy_spec(s) == "ladder:head=1,n4=8,tail=6,carry=fine"
    assert policy_spec(dataclasses.replace(s, carry="off")) == "ladder:head=1,n4=8,tail=6"


class _Recording:
    """A backend that records what it returned per step, around the tiny model's torch backend."""

    def __init__(self, inner):
        self.inner, self.out, self.sizes = inner, [], inner.sizes

    def run(self, k, x, cond, t, g, grid):
        v = self.inner.run(k, x, cond, t, g, grid)
        self.out.append((k, v.clone()))
        return v


def test_generate_applies_carry_to_coarse_steps_after_a_fine_one(tiny_model):
    static = (2, 1, 2, 4, 1, 1)
    plain = build_settings(tiny_model, prompts=["a red circle"], steps=6, static=static)
    carried = build_settings(tiny_model, prompts=["a red circle"], steps=6, static=static, carry="fine")
    assert carried.schedule.carry == "fine" and plain.schedule.carry == "off"
    with TorchBackend(tiny_model.transformer) as be:
        a = generate(tiny_model, be, plain, progress=False, decode=False)
        rec = _Recording(be)
        b = generate(tiny_model, rec, carried, progress=False, decode=False)
    assert a.trace.sizes == b.trace.sizes == list(static)
    assert a.trace.flops_ratio == b.trace.flops_ratio  # carry costs no model call
    assert not torch.allclose(a.latents, b.latents)
    # replay the loop's arithmetic on what the backend returned: step 0 (coarse, nothing to carry) as it is,
    # steps 2 and 3 carried from step 1's fine velocity
    geom = model_geometry(tiny_model, carried)
    sched = model_timesteps(tiny_model.scheduler_config, 6, geom.tokens(1))
    x = initial_noise(geom, 1, 0)
    last = None
    for i, (k, v) in enumerate(rec.out):
        if k == 1:
            last = v
        elif last is not None:
            v = carry_detail(v, last, geom, k)
        x = sched.step(v.to(x.dtype), sched.timesteps[i], x, return_dict=False)[0]
    torch.testing.assert_close(x, b.latents)


def test_carry_off_all_fine_and_cached_steps(tiny_model):
    """All-fine: carry changes nothing. With the step cache, extrapolated steps are not carried again."""
    kw = dict(prompts=["a blue square"], steps=8)
    with TorchBackend(tiny_model.transformer) as be:
        a = generate(tiny_model, be, build_settings(tiny_model, static=(1,) * 8, **kw), progress=False, decode=False)
        b = generate(tiny_model, be, build_settings(tiny_model, static=(1,) * 8, carry="fine", **kw), progress=False,
                     decode=False)
        torch.testing.assert_close(a.latents, b.latents, rtol=0, atol=0)
        c = generate(tiny_model, be, build_settings(tiny_model, static=(1, 1, 1, 2, 2, 2, 2, 1), carry="fine",
                                                    cache={"interval": 2, "warmup": 3, "tail": 1}, **kw),
                     progress=False, decode=False)
    assert "cached" in c.trace.kinds and torch.isfinite(c.latents).all()


def test_the_profiles_carry_holds_for_its_own_policy_only(tiny_model):
    """A profile that carries: its policy (knobs changed or not) carries; the rule, a static or coarse-first
    schedule run without carry unless asked (the rule's τ was calibrated without it)."""
    saved = tiny_model.schedule_defaults
    tiny_model.schedule_defaults = dataclasses.replace(saved, policy="ladder", head=1, n4=2, tail=2, carry="fine")
    try:
        def carry(**kw):
            return build_settings(tiny_model, prompts=["a red circle"], steps=8, **kw).schedule.carry

        assert carry() == "fine" and carry(policy="ladder:n4=3") == "fine"
        assert carry(tau=0.01) == "off" and carry(policy="ddit") == "off" and carry(policy="fine") == "off"
        assert carry(static=(1, 2, 1, 2, 1, 2, 1, 1)) == "off" and carry(coarse_first=(2, 2)) == "off"
        assert carry(policy="ddit:carry=fine") == "fine" and carry(static=(1,) * 8, carry="fine") == "fine"
        assert carry(policy="ladder:n4=3", carry="off") == "off"
    finally:
        tiny_model.schedule_defaults = saved
