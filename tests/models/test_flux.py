import pytest
import torch

from ddit_export.errors import ConfigError, WeightsError
from ddit_export.models.flux import MultiPatchFlux
from ddit_export.settings import AdapterSettings
from tests.helpers import tiny_inputs, tiny_trunk


def _call(model, inp, size, grid=(8, 8), guidance=None):
    return model(inp["hidden_states"], inp["encoder_hidden_states"], inp["pooled_projections"], inp["timestep"],
                 inp["img_ids"], inp["txt_ids"], guidance, size=size, grid=grid)


@pytest.mark.parametrize("guidance", [False, True])
def test_size_one_is_the_untouched_diffusers_model(guidance):
    trunk = tiny_trunk(guidance=guidance)
    inp = tiny_inputs(batch=2)
    g = torch.full((2,), 3.5) if guidance else None
    with torch.no_grad():
        ref = trunk(**inp, guidance=g, return_dict=False)[0]
        model = MultiPatchFlux(trunk, adapter=AdapterSettings(rank=4))
        for p in model.adapter_parameters():  # adapters must not leak into size 1, even when trained
            p.add_(torch.randn_like(p))
        out = _call(model, inp, 1, guidance=g)
    assert (out - ref).abs().max().item() <= 1e-6


def test_trunk_body_replicates_diffusers_forward():
    """The coarse path re-runs diffusers' forward between x_embedder and proj_out; with the fine stem and head
    plugged in it must give diffusers' output, or a diffusers update changed the forward under us."""
    trunk = tiny_trunk()
    model = MultiPatchFlux(trunk, adapter=AdapterSettings(rank=4))
    inp = tiny_inputs()
    with torch.no_grad():
        ref = trunk(**inp, return_dict=False)[0]
        h = model._trunk_body(trunk.x_embedder(inp["hidden_states"]), inp["encoder_hidden_states"],
                              inp["pooled_projections"], inp["timestep"], inp["img_ids"], inp["txt_ids"], None, 1)
        out = trunk.proj_out(h)
    assert (out - ref).abs().max().item() <= 1e-6


@pytest.mark.parametrize("k", [2, 4])
def test_coarse_sizes_keep_the_fine_token_contract(k):
    model = MultiPatchFlux(tiny_trunk(), adapter=AdapterSettings(rank=4))
    inp = tiny_inputs(batch=2)
    with torch.no_grad():
        out = _call(model, inp, k)
    assert out.shape == inp["hidden_states"].shape
    assert torch.isfinite(out).all()


def test_coarse_output_is_constant_inside_each_patch_with_tile_init():
    """Tile init copies the head's output to every merged token (the residual starts at zero)."""
    model = MultiPatchFlux(tiny_trunk(), adapter=AdapterSettings(rank=4, init="tile"))
    with torch.no_grad():
        out = _call(model, tiny_inputs(), 2).reshape(1, 4, 2, 4, 2, 12)
    torch.testing.assert_close(out[:, :, 0, :, 0], out[:, :, 1, :, 1])


def test_lora_is_active_only_at_its_size():
    trunk = tiny_trunk()
    model = MultiPatchFlux(trunk, adapter=AdapterSettings(rank=4))
    inp = tiny_inputs()
    with torch.no_grad():
        before = {k: _call(model, inp, k) for k in (1, 2, 4)}
        for p in model.loras["2"].parameters():
            p.add_(0.5 * torch.randn_like(p))
        after = {k: _call(model, inp, k) for k in (1, 2, 4)}
    assert torch.equal(before[1], after[1]) and torch.equal(before[4], after[4])
    assert not torch.allclose(before[2], after[2])


def test_trunk_is_shared_and_lora_targets_are_the_feed_forward_layers():
    trunk = tiny_trunk(layers=(2, 1))
    model = MultiPatchFlux(trunk, adapter=AdapterSettings(rank=4))
    assert model.trunk is trunk
    assert sorted(model.lora_targets) == sorted([
        "transformer_blocks.0.ff.net.0.proj", "transformer_blocks.0.ff.net.2",
        "transformer_blocks.1.ff.net.0.proj", "transformer_blocks.1.ff.net.2",
        "single_transformer_blocks.0.proj_mlp", "single_transformer_blocks.0.proj_out"])
    trunk_params = {id(p) for p in trunk.parameters()}
    assert not trunk_params & {id(p) for p in model.adapter_parameters()}
    assert set(trunk.state_dict()) == set(tiny_trunk(layers=(2, 1)).state_dict())  # hooks, no new trunk keys


def test_unavailable_size_is_rejected():
    model = MultiPatchFlux(tiny_trunk(), sizes=(1, 2), adapter=AdapterSettings(rank=2))
    with pytest.raises(ConfigError):
        _call(model, tiny_inputs(), 4)
    with pytest.raises(ConfigError, match="does not divide"):
        _call(MultiPatchFlux(tiny_trunk(), adapter=AdapterSettings(rank=2)), tiny_inputs(grid=(6, 6)), 4, grid=(6, 6))


def test_adapters_roundtrip_through_safetensors(tmp_path):
    model = MultiPatchFlux(tiny_trunk(), sizes=(1, 2), adapter=AdapterSettings(rank=3, init="pi"))
    with torch.no_grad():
        for p in model.adapter_parameters():
            p.add_(torch.randn_like(p))
    path = model.save_adapters(tmp_path)
    assert path.name == "ddit_adapters.safetensors"
    assert path.read_bytes()[:8] != b"\x80\x02\x8a\n"  # not a pickle
    loaded = MultiPatchFlux.from_trunk_and_adapters(tiny_trunk(), path)
    assert loaded.sizes == (1, 2) and loaded.adapter_settings.rank == 3 and loaded.adapter_settings.init == "pi"
    inp = tiny_inputs()
    with torch.no_grad():
        torch.testing.assert_close(_call(loaded, inp, 2), _call(model, inp, 2), rtol=0, atol=0)


def test_corrupt_or_missing_adapters_raise_weights_error(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        MultiPatchFlux.from_trunk_and_adapters(tiny_trunk(), tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage" * 10)
    with pytest.raises(WeightsError, match="corrupt"):
        MultiPatchFlux.from_trunk_and_adapters(tiny_trunk(), bad)
    path = MultiPatchFlux(tiny_trunk(), adapter=AdapterSettings(rank=2)).save_adapters(tmp_path)
    with pytest.raises(WeightsError, match="shape|missing"):  # adapters of another trunk
        MultiPatchFlux.from_trunk_and_adapters(tiny_trunk(in_channels=16), path)


def test_sigma_residual_starts_neutral_scales_with_sigma_and_roundtrips(tmp_path):
    """residual="sigma": a zero-initialised second map on latent / sigma. Fresh, it changes nothing; trained, its
    share of the output grows as sigma falls; the adapters file records it (a "linear" file records nothing new)."""
    from safetensors import safe_open

    lin = MultiPatchFlux(tiny_trunk(), sizes=(1, 2), adapter=AdapterSettings(rank=3))
    sig = MultiPatchFlux(tiny_trunk(), sizes=(1, 2), adapter=AdapterSettings(rank=3, residual="sigma"))
    assert set(sig.adapter_state_dict()) - set(lin.adapter_state_dict()) == {"stems.2.residual_sigma.weight"}
    sig.load_adapter_state_dict({**lin.adapter_state_dict(),
                                 "stems.2.residual_sigma.weight": sig.adapter_state_dict()["stems.2.residual_sigma.weight"]})
    inp = tiny_inputs()
    with torch.no_grad():
        torch.testing.assert_close(_call(sig, inp, 2), _call(lin, inp, 2), rtol=0, atol=0)
        sig.stems["2"].residual_sigma.weight.normal_(std=0.1)
        gap = {}
        for s in (0.8, 0.2):
            at = dict(inp, timestep=torch.full((1,), s))
            gap[s] = float((_call(sig, at, 2) - _call(lin, at, 2)).abs().mean())
    assert gap[0.2] == pytest.approx(4 * gap[0.8], rel=1e-4)  # the extra term is W (x / sigma)
    lin_file, sig_file = lin.save_adapters(tmp_path / "lin"), sig.save_adapters(tmp_path / "sig")
    for path, want in ((lin_file, None), (sig_file, "sigma")):
        with safe_open(str(path), "pt") as f:
            assert (f.metadata() or {}).get("residual") == want
    back = MultiPatchFlux.from_trunk_and_adapters(tiny_trunk(), sig_file)
    assert back.adapter_settings.residual == "sigma"
    with torch.no_grad():
        torch.testing.assert_close(_call(back, inp, 2), _call(sig, inp, 2), rtol=0, atol=0)
    with pytest.raises(ConfigError, match="residual must be one of"):
        AdapterSettings(residual="cubic")
