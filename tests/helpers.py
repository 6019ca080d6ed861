"""Tiny models for tests: a random FLUX pixel model and a complete tiny FluxPipeline folder on disk; the CLI
invocation and its one-line-error check that the command tests share."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

WORDS = ["a", "red", "circle", "blue", "square", "cat"]


def invoke(*args):
    """``ddit-export ARGS`` in-process (click's runner); arguments may be paths or numbers."""
    from click.testing import CliRunner

    from ddit_export.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(r, text):
    """Exit code 2 and exactly one ``error:`` line (after any progress bar) that contains ``text``."""
    out = r.output.split("\r")[-1]
    assert r.exit_code == 2, r.output
    assert out.startswith("error: ") and len(out.strip().splitlines()) == 1 and text in out, r.output


def tiny_trunk(in_channels=12, guidance=False, layers=(1, 1), seed=0):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return FluxTransformer2DModel(patch_size=1, in_channels=in_channels, num_layers=layers[0],
                                  num_single_layers=layers[1], attention_head_dim=16, num_attention_heads=2,
                                  joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=guidance,
                                  axes_dims_rope=(4, 6, 6))


def tiny_inputs(batch=1, grid=(8, 8), channels=12, text=5, seed=1):
    from ddit_export.models.patching import image_ids

    g = torch.Generator().manual_seed(seed)
    n = grid[0] * grid[1]
    return dict(hidden_states=torch.randn(batch, n, channels, generator=g),
                encoder_hidden_states=torch.randn(batch, text, 32, generator=g),
                pooled_projections=torch.randn(batch, 32, generator=g),
                timestep=torch.full((batch,), 0.7), img_ids=image_ids(grid), txt_ids=torch.zeros(text, 3))


def _clip_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for w in WORDS:
        vocab[w + "</w>"] = len(vocab)
    for ch in "abcdefghijklmnopqrstuvwxyz":
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77), len(vocab)


def _t5_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("▁" + w, -1.0) for w in WORDS]
    vocab += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    return T5TokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                           extra_ids=0, model_max_length=512), len(vocab)


def tiny_flux_pipeline(guidance=True):
    """A complete FluxPipeline with random tiny components (CLIP, T5, VAE, transformer) and local tokenizers."""
    import tempfile

    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(0)
    clip_tok, clip_n = _clip_tokenizer(Path(tempfile.mkdtemp()))
    t5_tok, t5_n = _t5_tokenizer()
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=clip_n, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                                        num_attention_heads=2, projection_dim=32, max_position_embeddings=77,
                                        bos_token_id=0, eos_token_id=1, pad_token_id=1))
    t5 = T5EncoderModel(T5Config(vocab_size=t5_n, d_model=32, d_kv=8, d_ff=37, num_layers=1, num_heads=2,
                                 decoder_start_token_id=0))
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                        norm_num_groups=8, layers_per_block=1, sample_size=32, shift_factor=0.06,
                        scaling_factor=0.4)
    trunk = tiny_trunk(in_channels=16, guidance=guidance)
    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_image_seq_len=64, max_image_seq_len=1024)
    pipe = FluxPipeline(scheduler=sched, vae=vae.eval(), text_encoder=clip.eval(), tokenizer=clip_tok,
                        text_encoder_2=t5.eval(), tokenizer_2=t5_tok, transformer=trunk.eval())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_wan_pipeline(rope_max_seq_len: int = 32):
    """A complete Wan 2.1 text-to-video WanPipeline with random tiny components (UMT5, Wan VAE, transformer), a local
    tokenizer and Wan's own scheduler kind (UniPC with flow sigmas). ``rope_max_seq_len`` >= 52 reaches Wan 2.1's
    default 480x832 (a 30x52 token grid; Wan 2.1's own is 1024)."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    tok, n = _t5_tokenizer()
    umt5 = UMT5EncoderModel(UMT5Config(vocab_size=n, d_model=32, d_kv=8, d_ff=37, num_layers=1, num_heads=2,
                                       decoder_start_token_id=0))
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    trunk = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
                                  out_channels=16, text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2,
                                  rope_max_seq_len=rope_max_seq_len)
    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    pipe = WanPipeline(tokenizer=tok, text_encoder=umt5.eval(), vae=vae.eval(), transformer=trunk.eval(),
                       scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def no_compiler_reason():
    from ddit_export.errors import DDiTError
    from ddit_export.export.aoti import require_compiler

    try:
        require_compiler()
    except DDiTError as e:
        return str(e)
    return None


def with_aoti(bundle, out, model: str):
    """A copy of ``bundle`` at ``out`` with its AOTInductor package compiled for preset ``model`` (the test skips
    where there is no C++ compiler)."""
    from ddit_export.export.aoti import prepare_aoti
    from ddit_export.settings import BuildSettings

    reason = no_compiler_reason()
    if reason:
        pytest.skip(f"no C++ compiler for AOTInductor: {reason}")
    shutil.copytree(bundle, out)
    prepare_aoti(out, BuildSettings(model=model), log=lambda *a: None)
    return out


def load_script(name: str):
    """scripts/NAME.py imported as a module (the scripts folder is not a package)."""
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_script", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
