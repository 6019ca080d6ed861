"""MultiPatchWan: size 1 is diffusers' WanTransformer3DModel bit for bit; the coarse sizes, their RoPE, adapters and
loading (the tiny-wan preset, a pixel video folder, a local Wan 2.1 diffusers folder)."""
import pytest
import torch
from click.testing import CliRunner

from ddit_export.errors import ConfigError, WeightsError
from ddit_export.models.wan import MultiPatchWan, pack_video, rope_at, token_positions, unpack_video
from ddit_export.settings import AdapterSettings


def _trunk(patch):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    return WanTransformer3DModel(patch_size=patch, num_attention_heads=2, attention_head_dim=12, in_channels=3,
                                 out_channels=3, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2,
                                 rope_max_seq_len=32).eval()


@pytest.mark.parametrize("patch", [(1, 2, 2), (2, 4, 4)])
def test_size_one_is_diffusers_bit_exact_and_coarse_sizes_run(patch):
    trunk = _trunk(patch)
    mp = MultiPatchWan(trunk, adapter=AdapterSettings(rank=4)).eval()
    x5, t, e = torch.randn(2, 3, 4, 16, 16), torch.tensor([500.0, 200.0]), torch.randn(2, 5, 16)
    grid = (4 // patch[0], 16 // patch[1], 16 // patch[2])
    tokens = pack_video(x5, patch)
    assert torch.equal(unpack_video(tokens, (4, 16, 16), patch), x5)
    with torch.no_grad():
        ref = trunk(x5, t, e, return_dict=False)[0]
        fine = mp(tokens, t, e, size=1, grid=grid)
        assert torch.equal(unpack_video(fine, (4, 16, 16), patch), ref)
        for k in (2, 4):
            v = mp(tokens, t, e, size=k, grid=grid)
            assert v.shape == fine.shape and torch.isfinite(v).all()
            assert not torch.equal(v, fine)


def test_rope_at_integer_positions_is_the_trunks_own_and_centres_are_means():
    trunk = _trunk((1, 2, 2))
    x5 = torch.randn(1, 3, 3, 8, 12)
    cos, sin = trunk.rope(x5)
    c, s = rope_at(trunk.rope, token_positions((3, 4, 6), 1))
    assert torch.equal(cos, c) and torch.equal(sin, s)
    pos = token_positions((3, 4, 6), 2)
    assert pos.shape == (3 * 2 * 3, 3)
    assert pos[0].tolist() == [0.0, 0.5, 0.5] and pos[-1].tolist() == [2.0, 2.5, 4.5]


def test_adapters_round_trip_and_refuse_wrong_family(tmp_path, tiny_model):
    trunk = _trunk((1, 2, 2))
    mp = MultiPatchWan(trunk, adapter=AdapterSettings(rank=4))
    with torch.no_grad():
        for p in mp.adapter_parameters():
            p.add_(torch.randn_like(p) * 0.01)
    path = mp.save_adapters(tmp_path)
    back = MultiPatchWan.from_trunk_and_adapters(_trunk((1, 2, 2)), path)
    assert back.sizes == mp.sizes and back.adapter_settings.rank == 4
    for k, v in mp.adapter_state_dict().items():
        assert torch.equal(v, back.adapter_state_dict()[k])
    flux_path = tiny_model.transformer.save_adapters(tmp_path / "flux")
    with pytest.raises(WeightsError, match="FLUX adapters"):
        MultiPatchWan.from_trunk_and_adapters(_trunk((1, 2, 2)), flux_path)


def test_wrong_sizes_and_grids_are_config_errors():
    mp = MultiPatchWan(_trunk((1, 2, 2)), sizes=(1, 2), adapter=AdapterSettings(rank=0))
    x = torch.randn(1, 3 * 4 * 6, 12)
    with pytest.raises(ConfigError, match="not one of"):
        mp(x, torch.tensor([1.0]), torch.randn(1, 2, 16), size=4, grid=(3, 4, 6))
    with pytest.raises(ConfigError, match="frames, rows, columns"):
        mp(x, torch.tensor([1.0]), torch.randn(1, 2, 16), size=2, grid=(12, 6))
    mp3 = MultiPatchWan(_trunk((1, 2, 2)), sizes=(1, 2, 4), adapter=AdapterSettings(rank=0))
    with pytest.raises(ConfigError, match="divide"):
        mp3(x, torch.tensor([1.0]), torch.randn(1, 2, 16), size=4, grid=(3, 4, 6))
    with pytest.raises(ConfigError, match="FLUX-only"):
        MultiPatchWan(_trunk((1, 2, 2)), adapter=AdapterSettings(init="pi"))


def test_wan_folder_loads_with_wan_pipeline_and_matches_its_transformer(wan_dir):
    from diffusers import WanPipeline

    from ddit_export.models.registry import load_model

    m = load_model("wan", wan_dir)
    assert m.family == "wan" and m.vae_scale == 8 and m.vae_temporal == 4
    geom = m.geometry(32, 32, 5)
    assert geom.grid == (2, 2, 2) and geom.latent_shape == (16, 2, 4, 4)
    cond = m.encode(["a red circle"])
    assert cond.pooled is None and cond.states.shape[-1] == 32
    x = torch.randn(1, geom.tokens(1), geom.token_channels)
    t = torch.tensor([700.0])
    with torch.no_grad():
        fine = m.transformer(x, t, cond.states, size=1, grid=geom.grid)
        coarse = m.transformer(x, t, cond.states, size=2, grid=geom.grid)
        pipe = WanPipeline.from_pretrained(str(wan_dir), local_files_only=True)
        ref = pipe.transformer(unpack_video(x, (2, 4, 4), (1, 2, 2)), t, cond.states, return_dict=False)[0]
    assert torch.equal(fine, pack_video(ref, (1, 2, 2))) and coarse.shape == fine.shape
    clip = m.decode(fine, geom)[0]
    assert len(clip) == 5 and clip[0].size == (32, 32)
    with pytest.raises(ConfigError, match="4n\\+1"):
        m.geometry(32, 32, 6)


def test_folders_of_the_other_family_are_refused(wan_dir, flux_dir):
    from ddit_export.models.registry import load_model

    with pytest.raises(WeightsError, match="--model wan"):
        load_model("flux", wan_dir)
    with pytest.raises(WeightsError, match="not a Wan"):
        load_model("wan", flux_dir)


def test_build_and_generate_a_wan_folder_bundle(wan_dir, tmp_path):
    from ddit_export.cli import main

    out = tmp_path / "wan-bundle"
    r = CliRunner().invoke(main, ["build", "--model", "wan", "--weights", str(wan_dir), "--height", "32", "--width",
                                  "32", "--frames", "5", "--sizes", "1,2", "--text-len", "16", "--out", str(out)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["generate", "--bundle", str(out), "--steps", "4", "--out", str(tmp_path / "a.gif")])
    assert r.exit_code == 2 and "--weights" in r.output
    r = CliRunner().invoke(main, ["generate", "--bundle", str(out), "--weights", str(wan_dir), "--steps", "4",
                                  "--out", str(tmp_path / "a.gif")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "a.gif").is_file()


def test_generate_from_a_wan_folder_with_cfg_writes_a_clip(wan_dir, tmp_path):
    import json

    from ddit_export.cli import main

    out, trace = tmp_path / "w.gif", tmp_path / "t.json"
    r = CliRunner().invoke(main, ["generate", "--model", "wan", "--weights", str(wan_dir), "--height", "32",
                                  "--width", "32", "--frames", "5", "--steps", "4", "--schedule", "1,2,2,1",
                                  "--out", str(out), "--trace", str(trace)])
    assert r.exit_code == 0, r.output
    t = json.loads(trace.read_text())
    assert t["settings"]["generate"]["guidance"] == 5.0  # Wan 2.1's CFG scale by default: two calls per step
    assert [s["size"] for s in t["steps"]] == [1, 2, 2, 1] and out.is_file()
    r = CliRunner().invoke(main, ["generate", "--model", "wan", "--weights", str(wan_dir), "--frames", "6",
                                  "--height", "32", "--width", "32", "--steps", "4"])
    assert r.exit_code == 2 and "4n+1" in r.output


def test_coarse_path_trunk_body_reproduces_diffusers_at_size_one_positions():
    """The coarse sizes' own copy of WanTransformer3DModel.forward (condition embedder, blocks with RoPE from
    positions, output modulation) equals diffusers' forward when fed the fine patch embedding and fine positions."""
    patch = (1, 2, 2)
    trunk = _trunk(patch)
    mp = MultiPatchWan(trunk, adapter=AdapterSettings(rank=4)).eval()
    x5, t, e = torch.randn(1, 3, 2, 8, 8), torch.tensor([300.0]), torch.randn(1, 4, 16)
    grid = (2, 4, 4)
    with torch.no_grad():
        ref = pack_video(trunk(x5, t, e, return_dict=False)[0], patch)
        w = trunk.patch_embedding.weight.permute(0, 2, 3, 4, 1).reshape(trunk.patch_embedding.out_channels, -1)
        hidden = pack_video(x5, patch) @ w.T + trunk.patch_embedding.bias
        body = mp._trunk_body(hidden, t, e, grid, 1)
        got = trunk.proj_out(body)
    assert torch.allclose(got, ref, atol=1e-5), (got - ref).abs().max()
