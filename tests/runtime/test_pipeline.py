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
