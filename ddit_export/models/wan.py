"""A Wan 2.1 transformer that runs any step at patch size k in {1, 2, 4, ...} on one shared trunk.

The same idea and I/O contract as :class:`~ddit_export.models.flux.MultiPatchFlux`: the state is in fine-token form
— one token per Wan patch (t, h, w) of the latent, tokens ordered (frame, row, column), a token's channels ordered
(t, h, w, channel) as Wan's ``proj_out`` writes them — and every size returns the velocity in that form. Size 1
unpacks to (B, C, F, H, W), calls diffusers' ``WanTransformer3DModel`` untouched and packs its output (bit-exact).
Size k > 1 merges k x k spatial tokens inside each token frame (the temporal patch is never merged), embeds them
with its own stem, runs the shared trunk (condition embedder, blocks, output modulation) with its own LoRA on the
feed-forward layers and 3-D RoPE at the centre of the merged patches, de-embeds with its own head and unmerges.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..errors import ConfigError, WeightsError
from ..settings import AdapterSettings, DEFAULT_SIZES
from . import lora as lora_mod
from .flux import MultiPatchFlux
from .patching import init_deembed, init_embed, merge_tokens, unmerge_tokens

ROPE_THETA = 10000.0  # WanRotaryPosEmbed's default; diffusers' WanTransformer3DModel never passes another


def pack_video(x: torch.Tensor, patch) -> torch.Tensor:
    """(B, C, F, H, W) latent -> (B, F/pt * H/ph * W/pw, pt*ph*pw*C) fine tokens (Wan's patches)."""
    p_t, p_h, p_w = patch
    b, c, f, h, w = x.shape
    x = x.reshape(b, c, f // p_t, p_t, h // p_h, p_h, w // p_w, p_w).permute(0, 2, 4, 6, 3, 5, 7, 1)
    return x.reshape(b, (f // p_t) * (h // p_h) * (w // p_w), p_t * p_h * p_w * c)


def unpack_video(tokens: torch.Tensor, fhw, patch) -> torch.Tensor:
    """Inverse of :func:`pack_video`; ``fhw`` = the latent's (F, H, W). The same reshape as diffusers' unpatchify."""
    p_t, p_h, p_w = patch
    f, h, w = fhw
    b, _, ct = tokens.shape
    c = ct // (p_t * p_h * p_w)
    x = tokens.reshape(b, f // p_t, h // p_h, w // p_w, p_t, p_h, p_w, c).permute(0, 7, 1, 4, 2, 5, 3, 6)
    return x.reshape(b, c, f, h, w)


def video_pixels_to_frames(latents, geom) -> list:
    """Pixel-space fine video tokens in [-1, 1] -> one list of PIL RGB frames per sample."""
    import numpy as np
    from PIL import Image

    x = latents.detach().float().cpu() if hasattr(latents, "detach") else torch.as_tensor(latents)
    f, (h, w) = geom.latent_frames, geom.latent_hw
    v = unpack_video(x, (f, h, w), geom.patch).numpy()  # (B, C, F, H, W)
    v = ((np.clip(v, -1, 1) + 1) * 127.5).round().astype(np.uint8).transpose(0, 2, 3, 4, 1)
    return [[Image.fromarray(fr) for fr in clip] for clip in v]


def token_positions(grid, k: int, patch_t: int = 1) -> torch.Tensor:
    """(N_k, 3) float64 (frame, row, column) positions of the tokens at size k, in fine-token units: a coarse token
    sits at the centre (mean) of the k x k fine tokens it merges. Size 1 gives the integer positions Wan uses."""
    f, h, w = grid
    t = torch.arange(f, dtype=torch.float64)
    y = torch.arange(h // k, dtype=torch.float64) * k + (k - 1) / 2
    x = torch.arange(w // k, dtype=torch.float64) * k + (k - 1) / 2
    tt, yy, xx = torch.meshgrid(t, y, x, indexing="ij")
    return torch.stack([tt, yy, xx], -1).reshape(-1, 3)


def rope_at(rope: nn.Module, positions: torch.Tensor, dtype=torch.float64, device=None):
    """Wan's RoPE (cos, sin), each (1, N, 1, head_dim), at any (possibly fractional) positions: the per-axis
    frequencies of ``WanRotaryPosEmbed`` (t, h, w dims), evaluated at ``positions`` instead of looked up."""
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    cos, sin = [], []
    for axis, dim in enumerate((rope.t_dim, rope.h_dim, rope.w_dim)):
        c, s = get_1d_rotary_pos_embed(dim, positions[:, axis], ROPE_THETA, use_real=True,
                                       repeat_interleave_real=True, freqs_dtype=dtype)
        cos.append(c)
        sin.append(s)
    n = positions.shape[0]
    return (torch.cat(cos, -1).reshape(1, n, 1, -1).to(device), torch.cat(sin, -1).reshape(1, n, 1, -1).to(device))


class WanStem(nn.Module):
    """Everything Wan size k owns: embedding, de-embedding, size identifier and the zero-initialised residual."""

    def __init__(self, trunk: nn.Module, k: int, init: str, residual: str = "linear"):
        super().__init__()
        if residual != "linear":
            raise ConfigError(f"adapter residual {residual!r} is FLUX-only so far; Wan's coarse stems use 'linear'")
        if init != "tile":
            raise ConfigError(f"adapter init {init!r} is FLUX-only (its resize matrix assumes FLUX's 2x2 token "
                              f"packing); Wan's coarse stems use 'tile'")
        conv = trunk.patch_embedding
        d = conv.out_channels
        w_fine = conv.weight.detach().float().permute(0, 2, 3, 4, 1).reshape(d, -1)  # (d, pt*ph*pw*C)
        c_in, c_out = w_fine.shape[1], trunk.proj_out.out_features
        self.embed = nn.Linear(k * k * c_in, d)
        self.deembed = nn.Linear(d, k * k * c_out)
        self.size_id = nn.Parameter(torch.zeros(d))
        self.residual = nn.Linear(k * k * c_in, k * k * c_out)
        nn.init.zeros_(self.residual.weight)
        nn.init.zeros_(self.residual.bias)
        with torch.no_grad():
            self.embed.weight.copy_(init_embed(w_fine, k, init))
            self.embed.bias.copy_(conv.bias.detach().float())
            w, b = init_deembed(trunk.proj_out.weight.detach().float(), trunk.proj_out.bias.detach().float(), k, init)
            self.deembed.weight.copy_(w)
            self.deembed.bias.copy_(b)


class MultiPatchWan(MultiPatchFlux):
    """diffusers' WanTransformer3DModel (``self.trunk``, shared) plus one :class:`WanStem` and LoRA per size.
    The adapter API (save/load, parameters, ``active``, ``unwrap``) is MultiPatchFlux's."""

    family = "wan"
    stem_class = WanStem
    ff_targets = staticmethod(lora_mod.wan_ff_targets)

    def __init__(self, trunk: nn.Module, sizes=DEFAULT_SIZES, adapter: AdapterSettings = AdapterSettings()):
        if type(trunk).__name__ != "WanTransformer3DModel" and not hasattr(trunk, "patch_embedding"):
            raise WeightsError(f"MultiPatchWan wraps diffusers' WanTransformer3DModel, got {type(trunk).__name__}")
        if trunk.config.get("image_dim") is not None or trunk.config.get("added_kv_proj_dim") is not None:
            raise ConfigError("this Wan transformer takes image embeddings (image-to-video); the DDiT coarse sizes "
                              "support text-to-video only")
        super().__init__(trunk, sizes, adapter)  # stems, LoRA and hooks as MultiPatchFlux builds them
        self.patch = tuple(trunk.config.patch_size)
        self._rope_dtype = torch.float64  # float32 while exporting (float32_rope)

    def adapter_metadata(self) -> dict[str, str]:
        return {**super().adapter_metadata(), "family": "wan"}

    # ---- the contract --------------------------------------------------------------------------------------
    def forward(self, hidden_states, timestep, encoder_hidden_states, *, size: int = 1, grid, attention_kwargs=None):
        """Velocity for fine video tokens ``hidden_states`` (B, F*h*w, C_tok) at patch size ``size``; ``grid`` =
        (F, h, w) token frames, rows, columns; ``timestep`` (B,) in the scheduler's 0..1000 as Wan takes it."""
        if size not in self.sizes:
            raise ConfigError(f"patch size {size} is not one of this model's sizes {self.sizes}")
        if len(grid) != 3:
            raise ConfigError(f"a Wan grid is (frames, rows, columns), got {grid}")
        f, h, w = grid
        if hidden_states.ndim != 3 or hidden_states.shape[1] != f * h * w:
            raise ConfigError(f"hidden_states has shape {tuple(hidden_states.shape)}; the {f}x{h}x{w} token grid "
                              f"needs (batch, {f * h * w}, channels) fine tokens")
        if h % size or w % size:
            raise ConfigError(f"patch size {size} does not divide the {h}x{w} token grid of each frame")
        p_t, p_h, p_w = self.patch
        if size == 1:
            x = unpack_video(hidden_states, (f * p_t, h * p_h, w * p_w), self.patch)
            out = self.trunk(hidden_states=x, timestep=timestep, encoder_hidden_states=encoder_hidden_states,
                             attention_kwargs=attention_kwargs, return_dict=False)[0]
            return pack_video(out, self.patch)
        stem = self.stems[str(size)]
        x = merge_tokens(hidden_states, grid, size)
        hidden = stem.embed(x) + stem.size_id
        out = self._trunk_body(hidden, timestep, encoder_hidden_states, grid, size, attention_kwargs)
        return unmerge_tokens(stem.deembed(out) + stem.residual(x), grid, size)

    def _trunk_body(self, hidden, timestep, encoder_hidden_states, grid, size, attention_kwargs=None):
        """WanTransformer3DModel.forward between patch_embedding and proj_out, with size's LoRA and RoPE."""
        return self._trunk_at(hidden, timestep, encoder_hidden_states, token_positions(grid, size), size,
                              attention_kwargs)

    def _trunk_at(self, hidden, timestep, encoder_hidden_states, positions, size, attention_kwargs=None):
        """:meth:`_trunk_body` with the tokens' (frame, row, column) ``positions`` given (N, 3) instead of computed
        from the grid: what the TensorRT split trunk takes as an input (export/trt_graphs.py)."""
        from diffusers.utils import USE_PEFT_BACKEND, scale_lora_layers, unscale_lora_layers

        t = self.trunk
        if timestep.ndim != 1:
            raise ConfigError("per-token timesteps (Wan 2.2 TI2V) are not supported at coarse sizes")
        lora_scale = dict(attention_kwargs or {}).get("scale", 1.0)
        temb, timestep_proj, enc, _ = t.condition_embedder(timestep, encoder_hidden_states, None)
        timestep_proj = timestep_proj.unflatten(1, (6, -1))
        rope = rope_at(t.rope, positions, self._rope_dtype, hidden.device)
        if USE_PEFT_BACKEND:
            scale_lora_layers(t, lora_scale)
        try:
            with self.active(size):
                for block in t.blocks:
                    hidden = block(hidden, enc, timestep_proj, rope)
        finally:
            if USE_PEFT_BACKEND:
                unscale_lora_layers(t, lora_scale)
        shift, scale = (t.scale_shift_table.to(temb.device) + temb.unsqueeze(1)).chunk(2, dim=1)
        return (t.norm_out(hidden.float()) * (1 + scale) + shift).type_as(hidden)

    @classmethod
    def from_trunk_and_adapters(cls, trunk, path) -> "MultiPatchWan":
        from pathlib import Path

        from safetensors import safe_open

        p = Path(path)
        p = p / "ddit_adapters.safetensors" if p.is_dir() else p
        if p.is_file():
            try:
                with safe_open(str(p), "pt") as fh:
                    family = (fh.metadata() or {}).get("family", "flux")
            except Exception:
                family = None  # the base loader says what is wrong with the file
            if family == "flux":
                raise WeightsError(f"{p} holds FLUX adapters; a Wan transformer needs Wan adapters")
        return super().from_trunk_and_adapters.__func__(cls, trunk, path)


@contextlib.contextmanager
def float32_rope(model: MultiPatchWan):
    """RoPE in float32 while exporting (TensorRT has no FP64): the coarse sizes' positions and size 1's buffers."""
    rope = model.trunk.rope
    saved = rope.freqs_cos, rope.freqs_sin, model._rope_dtype
    rope.freqs_cos, rope.freqs_sin = rope.freqs_cos.float(), rope.freqs_sin.float()
    model._rope_dtype = torch.float32
    try:
        yield
    finally:
        rope.freqs_cos, rope.freqs_sin, model._rope_dtype = saved
