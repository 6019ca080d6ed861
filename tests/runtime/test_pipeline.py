import pytest
import torch

from ddit_export.models.flux import MultiPatchFlux
from ddit_export.runtime.pipeline import DDiTTransformer
from ddit_export.settings import AdapterSettings, ScheduleSettings
from tests.helpers import tiny_flux_pipeline


@pytest.fixture(scope="module")
def pipe():
    return tiny_flux_pipeline()


def _call(pipe, steps=8):
    return pipe("a red cat", height=64, width=64, num_inference_steps=steps, output_type="latent",
                generator=torch.Generator().manual_seed(0)).images


def test_drop_in_is_exact_when_it_stays_fine_and_switches_sizes_otherwise(pipe):
    original = pipe.transformer
    ref = _call(pipe)
    model = MultiPatchFlux(original, adapter=AdapterSettings(rank=4))
    try:
        pipe.transformer = DDiTTransformer(model, ScheduleSettings(tau=1e-12))
        same = _call(pipe)
        assert pipe.transformer.trace.sizes == [1] * 8
        torch.testing.assert_close(same, ref, rtol=0, atol=1e-6)

        pipe.transformer = DDiTTransformer(model, ScheduleSettings(tau=10.0))
        out = _call(pipe)
        sizes = pipe.transformer.trace.sizes
        assert sizes[:3] == [1, 1, 1] and set(sizes[3:]) == {4}
        assert not torch.allclose(out, ref)
        _call(pipe, steps=6)  # a second generation starts a fresh history and trace
        assert len(pipe.transformer.trace.steps) == 6
    finally:
        pipe.transformer = original


def test_drop_in_refuses_a_policy_it_would_silently_ignore():
    import pytest

    from ddit_export.errors import ConfigError
    from ddit_export.runtime.pipeline import DDiTTransformer
    from ddit_export.settings import ScheduleSettings

    with pytest.raises(ConfigError, match="ladder"):
        DDiTTransformer(None, ScheduleSettings(policy="ladder", n4=4, tail=4))


# ---- issue 10: ControlNet, attention kwargs, Kontext/Fill latents, size warning, new generations -------------------
def _controlnet(trunk):
    from diffusers import FluxControlNetModel

    torch.manual_seed(3)
    cn = FluxControlNetModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                             num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                             guidance_embeds=trunk.config.guidance_embeds, axes_dims_rope=(4, 6, 6))
    with torch.no_grad():  # diffusers zero-initialises the output projections: make the residuals non-zero
        for p in list(cn.controlnet_blocks.parameters()) + list(cn.controlnet_single_blocks.parameters()):
            p.normal_(0, 0.5)
        for p in cn.controlnet_x_embedder.parameters():
            p.normal_(0, 0.5)
    return cn.eval()


def test_controlnet_residuals_are_honoured_and_their_steps_run_fine(pipe):
    from diffusers import FluxControlNetPipeline

    cn = _controlnet(pipe.transformer)
    cpipe = FluxControlNetPipeline(**{k: v for k, v in pipe.components.items()}, controlnet=cn)
    cpipe.set_progress_bar_config(disable=True)
    control = torch.rand(1, 3, 64, 64)

    def call(scale):
        return cpipe("a red cat", control_image=control, controlnet_conditioning_scale=scale, height=64, width=64,
                     num_inference_steps=6, output_type="latent", generator=torch.Generator().manual_seed(0)).images

    original = cpipe.transformer
    ref, ref_off = call(1.0), call(0.0)
    assert not torch.allclose(ref, ref_off)  # the residuals matter, so dropping them would show
    try:
        cpipe.transformer = DDiTTransformer(MultiPatchFlux(original, adapter=AdapterSettings(rank=4)),
                                            ScheduleSettings(tau=10.0))
        out = call(1.0)
        steps = cpipe.transformer.trace.steps
        assert [s.size for s in steps] == [1] * 6
        assert [s.reason for s in steps][3:] == ["controlnet"] * 3  # the rule wanted a coarse size
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    finally:
        cpipe.transformer = original


def test_a_coarse_size_refuses_controlnet_residuals():
    from ddit_export.errors import ConfigError
    from tests.helpers import tiny_inputs, tiny_trunk

    model = MultiPatchFlux(tiny_trunk(), sizes=(1, 2))
    inp = tiny_inputs()
    with pytest.raises(ConfigError, match="ControlNet"):
        model(**inp, size=2, grid=(8, 8), controlnet_block_samples=[torch.zeros(1, 64, 32)])


class _Probe:
    """An attention processor that records the extra keyword it was given, then runs diffusers' own."""

    def __init__(self, seen):
        from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

        self.inner, self.seen = FluxAttnProcessor(), seen

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None,
                 probe=None):
        self.seen.append(probe)
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)


def test_joint_attention_kwargs_and_the_lora_scale_reach_every_size(monkeypatch):
    import diffusers.utils

    from tests.helpers import tiny_inputs, tiny_trunk

    trunk = tiny_trunk()
    seen: list = []
    trunk.set_attn_processor(_Probe(seen))
    model = MultiPatchFlux(trunk, sizes=(1, 2, 4))
    scaled = []
    with monkeypatch.context() as m:  # peft is not installed here: record what the coarse path asks diffusers for
        m.setattr(diffusers.utils, "USE_PEFT_BACKEND", True)
        m.setattr(diffusers.utils, "scale_lora_layers", lambda mod, s: scaled.append(("scale", mod, s)))
        m.setattr(diffusers.utils, "unscale_lora_layers", lambda mod, s: scaled.append(("unscale", mod, s)))
        for size in (2, 4):
            seen.clear()
            scaled.clear()
            model(**tiny_inputs(), size=size, grid=(8, 8), joint_attention_kwargs={"probe": size, "scale": 0.5})
            assert seen == [size, size]  # one joint and one single block, each got the keyword
            assert scaled == [("scale", trunk, 0.5), ("unscale", trunk, 0.5)]
    seen.clear()
    drop = DDiTTransformer(model, ScheduleSettings(tau=1e-12))
    drop(**tiny_inputs(), joint_attention_kwargs={"probe": "fine"})
    assert seen == ["fine", "fine"]


def test_the_drop_in_refuses_a_keyword_it_would_drop():
    from ddit_export.errors import ConfigError
    from tests.helpers import tiny_inputs, tiny_trunk

    drop = DDiTTransformer(MultiPatchFlux(tiny_trunk(), sizes=(1, 2)))
    with pytest.raises(ConfigError, match="attention_mask"):
        drop(**tiny_inputs(), attention_mask=torch.ones(1, 64))


def _run(drop, latents, extra=None, cond=None, steps=6, grid=(8, 8)):
    """Denoise-like calls: the latent drifts smoothly; extra tokens / channels stay constant."""
    from tests.helpers import tiny_inputs

    outs = []
    for i in range(steps):
        inp = tiny_inputs(grid=grid, channels=latents.shape[-1])
        t = 1.0 - i / steps
        x = latents * t + 0.1 * i
        hs, ids = x, inp["img_ids"]
        if cond is not None:
            hs = torch.cat([hs, cond], dim=-1)
        if extra is not None:
            hs = torch.cat([hs, extra[0]], dim=1)
            ids = torch.cat([ids, extra[1]], dim=0)
        inp.update(hidden_states=hs, img_ids=ids, timestep=torch.full((1,), t))
        outs.append(drop(**inp, return_dict=False)[0])
    return outs


def test_the_rule_reads_only_the_latent_tokens_and_channels():
    from ddit_export.models.patching import image_ids
    from tests.helpers import tiny_trunk

    latents = torch.randn(1, 64, 12, generator=torch.Generator().manual_seed(5))
    plain = DDiTTransformer(MultiPatchFlux(tiny_trunk(), sizes=(1, 2, 4)), ScheduleSettings(tau=10.0))
    _run(plain, latents)

    # Kontext-like: a 4x4 reference image appended with frame id 1
    ref_ids = image_ids((4, 4))
    ref_ids[:, 0] = 1
    ref = (torch.randn(1, 16, 12), ref_ids)
    kontext = DDiTTransformer(MultiPatchFlux(tiny_trunk(), sizes=(1, 2, 4)), ScheduleSettings(tau=10.0))
    outs = _run(kontext, latents, extra=ref)
    assert kontext.trace.grid == (8, 8)
    assert kontext.trace.sizes == plain.trace.sizes and 4 in kontext.trace.sizes
    assert [s.sigmas for s in kontext.trace.steps] == [s.sigmas for s in plain.trace.steps]
    assert all(o.shape == (1, 64 + 16, 12) for o in outs)

    # Fill/Control-like: the trunk takes 12 latent + 20 constant conditioning channels, returns 12
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    fill_trunk = FluxTransformer2DModel(patch_size=1, in_channels=32, out_channels=12, num_layers=1,
                                        num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                                        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 6, 6))
    fill = DDiTTransformer(MultiPatchFlux(fill_trunk, sizes=(1, 2, 4)), ScheduleSettings(tau=10.0))
    outs = _run(fill, latents, cond=torch.randn(1, 64, 20))
    assert [s.sigmas for s in fill.trace.steps] == [s.sigmas for s in plain.trace.steps]
    assert all(o.shape == (1, 64, 12) for o in outs)


def test_a_size_that_cannot_divide_the_grid_is_named_once_per_generation(caplog):
    from tests.helpers import tiny_trunk

    drop = DDiTTransformer(MultiPatchFlux(tiny_trunk(), sizes=(1, 2, 4)), ScheduleSettings(tau=10.0))
    latents = torch.randn(1, 8 * 10, 12)
    with caplog.at_level("WARNING", logger="ddit_export"):
        _run(drop, latents, grid=(8, 10))
    lines = [r.getMessage() for r in caplog.records if r.name == "ddit_export"]
    assert len(lines) == 1 and "[4]" in lines[0] and "8x10" in lines[0] and "[1, 2]" in lines[0]
    assert 4 not in drop.trace.sizes and 2 in drop.trace.sizes
    caplog.clear()
    with caplog.at_level("WARNING", logger="ddit_export"):
        _run(DDiTTransformer(drop.model, ScheduleSettings(tau=10.0)), torch.randn(1, 64, 12))
    assert not [r for r in caplog.records if r.name == "ddit_export"]


def test_a_new_generation_is_detected_from_the_scheduler_not_the_timestep():
    from diffusers import FlowMatchEulerDiscreteScheduler

    from tests.helpers import tiny_inputs, tiny_trunk

    sched = FlowMatchEulerDiscreteScheduler()
    drop = DDiTTransformer(MultiPatchFlux(tiny_trunk(), sizes=(1, 2)), ScheduleSettings(tau=10.0), scheduler=sched)
    x = torch.randn(1, 64, 12, generator=torch.Generator().manual_seed(2))

    def generation(sigmas, cfg=False):
        nonlocal x
        sched.set_timesteps(sigmas=sigmas)
        for t in sched.timesteps:
            inp = tiny_inputs()
            inp.update(hidden_states=x, timestep=(t / 1000).reshape(1))
            v = drop(**inp, return_dict=False)[0]
            if cfg:  # true CFG: a second call at the same step
                drop(**inp, return_dict=False)
            x = sched.step(v, t, x, return_dict=False)[0]

    generation([1.0, 0.9, 0.8, 0.7], cfg=True)
    assert len(drop.trace.steps) == 4
    first = drop.trace
    generation([0.6, 0.5, 0.4])  # split sigmas: starts below where the previous call ended
    assert drop.trace is not first and len(drop.trace.steps) == 3
    assert drop.trace.steps[0].reason == "warmup"

    drop.reset()  # the explicit form, e.g. for a loop that does not use this scheduler
    inp = tiny_inputs()
    inp.update(hidden_states=x, timestep=torch.full((1,), 0.05))
    drop(**inp)
    assert len(drop.trace.steps) == 1


def test_split_sigmas_calls_of_a_real_pipeline_are_separate_generations(pipe):
    original = pipe.transformer
    try:
        pipe.transformer = DDiTTransformer(MultiPatchFlux(original, adapter=AdapterSettings(rank=4)),
                                           ScheduleSettings(tau=10.0), scheduler=pipe.scheduler)

        def call(sigmas):
            return pipe("a red cat", negative_prompt="blue", true_cfg_scale=2.0, height=64, width=64,
                        sigmas=sigmas, num_inference_steps=len(sigmas), output_type="latent",
                        generator=torch.Generator().manual_seed(0)).images

        call([1.0, 0.9, 0.8, 0.7, 0.6])
        first = pipe.transformer.trace
        assert len(first.steps) == 5 and first.sizes[:3] == [1, 1, 1]
        call([0.5, 0.4, 0.3])  # the second half of a split schedule: lower timesteps, still a new generation
        assert pipe.transformer.trace is not first and len(pipe.transformer.trace.steps) == 3
    finally:
        pipe.transformer = original
