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


def _snapshot(module):
    return {k: (v.dtype, v.detach().clone()) for k, v in module.state_dict().items()}


def _assert_same(before, module):
    after = module.state_dict()
    assert set(after) == set(before)
    for k, (dtype, v) in before.items():
        assert after[k].dtype == dtype, k
        assert torch.equal(after[k].view(torch.uint8), v.view(torch.uint8)), k  # bit-identical, fp8 included


def test_wrapping_never_casts_a_trunk_with_layerwise_casting_and_its_output_survives_unwrapping():
    from diffusers.hooks import apply_layerwise_casting

    from tests.helpers import tiny_inputs, tiny_trunk

    trunk = tiny_trunk()
    apply_layerwise_casting(trunk, storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    inputs = tiny_inputs()
    with torch.no_grad():
        ref = trunk(**inputs, return_dict=False)[0]
    before = _snapshot(trunk)
    assert torch.float8_e4m3fn in {d for d, _ in before.values()} and torch.float32 in {d for d, _ in before.values()}
    model = MultiPatchFlux(trunk, adapter=AdapterSettings(rank=4))
    _assert_same(before, trunk)
    assert model.dtype == torch.float32
    assert {p.dtype for p in model.adapter_parameters()} == {torch.float32}  # new layers: the compute dtype
    with torch.no_grad():
        for k in model.sizes:  # every size runs on the fp8-stored trunk
            out = model(**inputs, size=k, grid=(8, 8))
            assert out.shape == ref.shape and torch.isfinite(out).all()
        torch.testing.assert_close(model(**inputs, size=1, grid=(8, 8)), ref, rtol=0, atol=0)
    assert model.unwrap() is trunk
    _assert_same(before, trunk)
    with torch.no_grad():
        torch.testing.assert_close(trunk(**inputs, return_dict=False)[0], ref, rtol=0, atol=0)


def test_wrapping_keeps_a_mixed_dtype_trunk_as_it_is():
    from tests.helpers import tiny_trunk

    trunk = tiny_trunk()
    trunk.transformer_blocks.to(torch.bfloat16)  # the rest stays float32
    before = _snapshot(trunk)
    model = MultiPatchFlux(trunk, adapter=AdapterSettings(rank=4))
    _assert_same(before, trunk)
    assert {p.dtype for p in model.adapter_parameters()} == {model.dtype}
    model.unwrap()
    _assert_same(before, trunk)


def test_save_pretrained_of_a_wrapped_pipeline_loads_back_wrapped_and_the_trunk_loads_plain(tmp_path):
    import json

    from diffusers import FluxPipeline, FluxTransformer2DModel

    from ddit_export.errors import ConfigError

    pipe = tiny_flux_pipeline()
    model = MultiPatchFlux(pipe.transformer, adapter=AdapterSettings(rank=4))
    with torch.no_grad():  # adapters that differ from their initialisation, so a dropped file would show
        for p in model.adapter_parameters():
            p.add_(0.01 * torch.randn_like(p))
    pipe.transformer = DDiTTransformer(model, ScheduleSettings(tau=10.0))
    ref = _call(pipe)
    ref_sizes = pipe.transformer.trace.sizes
    assert 4 in ref_sizes
    pipe.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["transformer"] == [
        "ddit_export.runtime.pipeline", "DDiTTransformer"]
    assert (tmp_path / "transformer" / "ddit_adapters.safetensors").is_file()

    back = FluxPipeline.from_pretrained(tmp_path, local_files_only=True)
    back.set_progress_bar_config(disable=True)
    assert isinstance(back.transformer, DDiTTransformer) and back.transformer.schedule.tau == 10.0
    out = _call(back)
    assert back.transformer.trace.sizes == ref_sizes
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)

    # the trunk is a normal diffusers transformer: the folder also loads as a plain FluxPipeline
    plain = FluxTransformer2DModel.from_pretrained(tmp_path / "transformer")
    _assert_same(_snapshot(model.trunk), plain)

    custom = DDiTTransformer(model, policy_factory=lambda grid, sizes: None)
    with pytest.raises(ConfigError, match="policy_factory"):
        custom.save_pretrained(tmp_path / "custom")
    assert not (tmp_path / "custom").exists()


def _tiny_lora(trunk, seed=3):
    """A tiny LoRA in diffusers' format on attention and a feed-forward layer of both kinds of block."""
    g = torch.Generator().manual_seed(seed)
    mods = dict(trunk.named_modules())
    sd = {}
    for name in ["transformer_blocks.0.attn.to_q", "transformer_blocks.0.ff.net.2",
                 "single_transformer_blocks.0.attn.to_k"]:
        m = mods[name]
        sd[f"transformer.{name}.lora_A.weight"] = torch.randn(2, m.in_features, generator=g) * 0.3
        sd[f"transformer.{name}.lora_B.weight"] = torch.randn(m.out_features, 2, generator=g) * 0.3
    return sd


def test_load_lora_weights_after_wrapping_reaches_the_trunk_at_every_size():
    pytest.importorskip("peft")
    from tests.helpers import tiny_inputs

    plain = tiny_flux_pipeline()
    wrapped = tiny_flux_pipeline()
    trunk = wrapped.transformer
    model = MultiPatchFlux(trunk, adapter=AdapterSettings(rank=4))
    inputs = dict(tiny_inputs(channels=16), guidance=torch.full((1,), 3.5))
    with torch.no_grad():
        coarse_before = model(**inputs, size=4, grid=(8, 8))
    plain.load_lora_weights(_tiny_lora(plain.transformer), adapter_name="tiny")
    wrapped.transformer = DDiTTransformer(model, ScheduleSettings(tau=1e-12))
    wrapped.load_lora_weights(_tiny_lora(trunk), adapter_name="tiny")  # through the wrapper
    assert "tiny" in wrapped.transformer.peft_config and wrapped.transformer.peft_config is trunk.peft_config
    torch.testing.assert_close(_call(wrapped), _call(plain), rtol=0, atol=1e-6)  # all fine: exactly the plain LoRA
    assert wrapped.transformer.trace.sizes == [1] * 8
    with torch.no_grad():
        coarse_after = model(**inputs, size=4, grid=(8, 8))
    assert not torch.allclose(coarse_after, coarse_before, atol=1e-4)  # the coarse sizes run the LoRA too
    wrapped.unload_lora_weights()
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs, size=4, grid=(8, 8)), coarse_before, rtol=0, atol=1e-6)


def test_ip_adapter_attribute_is_the_trunks_and_ip_adapter_embeddings_are_refused_loudly():
    from ddit_export.errors import ConfigError
    from tests.helpers import tiny_inputs, tiny_trunk

    trunk = tiny_trunk()
    wrapper = DDiTTransformer(MultiPatchFlux(trunk, sizes=(1, 2)))
    assert not hasattr(wrapper, "encoder_hid_proj")  # as the trunk: none until an IP-Adapter is loaded
    trunk.encoder_hid_proj = torch.nn.Identity()  # what _load_ip_adapter_weights sets on the trunk
    assert wrapper.encoder_hid_proj is trunk.encoder_hid_proj
    assert wrapper._load_ip_adapter_weights.__self__ is trunk
    with pytest.raises(AttributeError):
        wrapper.no_such_attribute
    with pytest.raises(ConfigError, match="IP-Adapter"):
        wrapper(**tiny_inputs(), joint_attention_kwargs={"ip_adapter_image_embeds": [torch.zeros(1)]})


def test_torch_compile_of_the_wrapper_compiles_once_per_size_not_once_per_step(pipe):
    import torch._dynamo
    from torch._dynamo.utils import counters

    original = pipe.transformer
    wrapper = DDiTTransformer(MultiPatchFlux(original, adapter=AdapterSettings(rank=4)), ScheduleSettings(tau=10.0))
    try:
        pipe.transformer = wrapper
        ref = _call(pipe)
        torch._dynamo.reset()
        counters.clear()
        pipe.transformer = torch.compile(wrapper, backend="eager")  # dynamo's guards and graphs, no codegen: fast
        out = _call(pipe)
        assert wrapper.trace.sizes == [1, 1, 1, 4, 4, 4, 4, 4]
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
        _call(pipe)
        graphs = counters["stats"]["unique_graphs"]
        assert 0 < graphs <= 2 * 2  # at most a couple of graphs per size used (1 and 4), not one per step
        _call(pipe, steps=12)  # a longer generation with the same sizes compiles nothing new
        assert set(wrapper.trace.sizes) == {1, 4} and len(wrapper.trace.steps) == 12
        assert counters["stats"]["unique_graphs"] == graphs
    finally:
        pipe.transformer = original
        wrapper.model.unwrap()
        torch._dynamo.reset()


def test_compile_repeated_blocks_of_the_trunk_serves_every_size_without_per_step_recompiles():
    import torch._dynamo
    from torch._dynamo.utils import counters

    pipe = tiny_flux_pipeline()
    wrapper = DDiTTransformer(MultiPatchFlux(pipe.transformer, adapter=AdapterSettings(rank=4)),
                              ScheduleSettings(tau=10.0))
    pipe.transformer = wrapper
    ref = _call(pipe)
    torch._dynamo.reset()
    counters.clear()
    try:
        wrapper.model.trunk.compile_repeated_blocks(backend="eager")  # the documented pattern
        torch.testing.assert_close(_call(pipe), ref, rtol=0, atol=1e-6)
        graphs = counters["stats"]["unique_graphs"]
        assert 0 < graphs <= 2 * 2  # two block classes x two token counts (sizes 1 and 4)
        _call(pipe, steps=12)
        assert counters["stats"]["unique_graphs"] == graphs
    finally:
        torch._dynamo.reset()


def test_diffusers_first_block_cache_through_the_wrapper_is_exact_when_fine_and_restarts_at_a_size_switch():
    from diffusers import FirstBlockCacheConfig

    plain = tiny_flux_pipeline()
    plain.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.5))
    ref = _call(plain)

    pipe = tiny_flux_pipeline()
    model = MultiPatchFlux(pipe.transformer, adapter=AdapterSettings(rank=4))
    pipe.transformer = DDiTTransformer(model, ScheduleSettings(tau=10.0))
    no_cache = _call(pipe)
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.5))  # reaches the trunk
    assert model.trunk.is_cache_enabled
    cached = _call(pipe)  # switches 1 -> 4 at step 3: the cache restarts instead of mixing token counts
    assert pipe.transformer.trace.sizes == [1, 1, 1, 4, 4, 4, 4, 4]
    assert torch.isfinite(cached).all() and not torch.allclose(cached, no_cache)  # the cache skipped coarse work

    pipe.transformer = DDiTTransformer(model, ScheduleSettings(tau=1e-12))
    torch.testing.assert_close(_call(pipe), ref, rtol=0, atol=1e-6)  # all fine: exactly diffusers' own FBC
    pipe.transformer.disable_cache()
    assert not model.trunk.is_cache_enabled


def test_pyramid_attention_broadcast_survives_a_switch_inside_its_window_and_untested_caches_are_refused():
    from diffusers import PyramidAttentionBroadcastConfig, TaylorSeerCacheConfig

    from ddit_export.errors import ConfigError

    pipe = tiny_flux_pipeline()
    model = MultiPatchFlux(pipe.transformer, adapter=AdapterSettings(rank=4))
    pipe.transformer = DDiTTransformer(model, ScheduleSettings(tau=10.0))
    pipe.transformer.enable_cache(PyramidAttentionBroadcastConfig(
        spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(-1, 1001),
        current_timestep_callback=lambda: pipe.current_timestep))
    out = _call(pipe)  # the switch at step 3 falls inside the skip window
    assert pipe.transformer.trace.sizes == [1, 1, 1, 4, 4, 4, 4, 4] and torch.isfinite(out).all()
    pipe.transformer.disable_cache()

    pipe.transformer.enable_cache(TaylorSeerCacheConfig())
    with pytest.raises(ConfigError, match="taylorseer_cache.*not supported"):
        _call(pipe)


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
