"""The TensorRT plan's split graphs as torch modules, exported by ``trt_build.export_split``: one trunk for every
size (per-size LoRA stacked and picked by ``size_index``), and a stem and a head per size. FLUX
(:class:`TrunkGraph`, :class:`StemGraph`, :class:`HeadGraph`) and Wan (:class:`WanTrunkGraph`,
:class:`WanStemGraph`, and FLUX's :class:`HeadGraph`; RoPE from a ``pos_ids`` input instead of FLUX's ``img_ids``)."""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from . import trt_plan

class TrunkGraph(nn.Module):
    """The shared trunk: embedded tokens (B, N, d) in, ``norm_out`` output (B, N, d) out, any N; size k's LoRA
    applied through stacked weights indexed by ``size_index`` (row i = sizes[i], zeros for size 1)."""

    def __init__(self, mp, sizes, guidance: bool):
        super().__init__()
        self.mp, self.sizes = mp, tuple(sizes)
        self.lora = bool(mp.lora_targets) and any(k > 1 for k in self.sizes)
        self.names = trt_plan.trunk_inputs(guidance, self.lora)
        self._index = None
        if self.lora:
            from ..models.lora import key

            mods = dict(mp.trunk.named_modules())
            for name in mp.lora_targets:
                lin, downs, ups = mods[name], [], []
                for k in self.sizes:
                    lo = mp.loras[str(k)][key(name)] if str(k) in mp.loras else None
                    downs.append(lo.down.detach() if lo else torch.zeros(mp.adapter_settings.rank, lin.in_features))
                    ups.append(lo.up.detach() * lo.scale if lo else torch.zeros(lin.out_features,
                                                                                 mp.adapter_settings.rank))
                dt = lin.weight.dtype
                self.register_buffer(f"lora_down__{key(name)}", torch.stack(downs).to(dt), persistent=False)
                self.register_buffer(f"lora_up__{key(name)}", torch.stack(ups).to(dt), persistent=False)

    def forward(self, hidden, encoder_hidden_states, pooled_projections, timestep, img_ids, txt_ids, extra1=None,
                extra2=None):
        rest = dict(zip(self.names[6:], (extra1, extra2)))  # size_index and/or guidance, as the plan lists them
        self._index = rest.get("size_index")
        try:
            with self._lora_hooks():
                return self.mp._trunk_body(hidden, encoder_hidden_states, pooled_projections, timestep, img_ids,
                                           txt_ids, rest.get("guidance"), 1)  # size 1: the model's hooks stay off
        finally:
            self._index = None

    @contextlib.contextmanager
    def _lora_hooks(self):
        """Forward hooks on the LoRA targets for the duration of one call; the trunk is left as it was."""
        if not self.lora:
            yield
            return
        from ..models.lora import key

        mods = dict(self.mp.trunk.named_modules())
        handles = []
        for name in self.mp.lora_targets:
            down, up = getattr(self, f"lora_down__{key(name)}"), getattr(self, f"lora_up__{key(name)}")

            def hook(module, args, output, _d=down, _u=up):
                d = torch.index_select(_d, 0, self._index)[0]
                u = torch.index_select(_u, 0, self._index)[0]
                return output + (args[0] @ d.T) @ u.T
            handles.append(mods[name].register_forward_hook(hook))
        try:
            yield
        finally:
            for h in handles:
                h.remove()


class StemGraph(nn.Module):
    """Size k's input side: fine-token latents (B, N1, C) -> embedded tokens (B, N_k, d)."""

    def __init__(self, mp, k: int, grid):
        super().__init__()
        self.mp, self.k, self.grid = mp, k, tuple(grid)

    def forward(self, hidden_states):
        from ..models.patching import merge_tokens

        if self.k == 1:
            return self.mp.trunk.x_embedder(hidden_states)
        stem = self.mp.stems[str(self.k)]
        return stem.embed(merge_tokens(hidden_states, self.grid, self.k)) + stem.size_id


class HeadGraph(nn.Module):
    """Size k's output side: trunk output (B, N_k, d) (+ the latents, for the residual) -> velocity (B, N1, C)."""

    def __init__(self, mp, k: int, grid):
        super().__init__()
        if k > 1 and hasattr(mp.stems[str(k)], "residual_sigma"):
            from ..errors import ConfigError

            raise ConfigError("the TensorRT split export does not take adapters with the sigma residual yet (its head "
                              "graph has no timestep input); build --backend onnxruntime or aoti")
        self.mp, self.k, self.grid = mp, k, tuple(grid)

    def forward(self, trunk_out, hidden_states=None):
        from ..models.patching import merge_tokens, unmerge_tokens

        if self.k == 1:
            return self.mp.trunk.proj_out(trunk_out)
        stem = self.mp.stems[str(self.k)]
        x = merge_tokens(hidden_states, self.grid, self.k)
        return unmerge_tokens(stem.deembed(trunk_out) + stem.residual(x), self.grid, self.k)


class WanTrunkGraph(TrunkGraph):
    """Wan's shared trunk: embedded tokens (B, N, d), text states, timestep (0..1000) and the tokens' (frame, row,
    column) positions (N, 3) in, the modulated ``norm_out`` output (B, N, d) out, any N; size k's LoRA through the
    stacked weights indexed by ``size_index``."""

    def __init__(self, mp, sizes):
        super().__init__(mp, sizes, guidance=False)
        self.names = trt_plan.trunk_inputs(False, self.lora, wan=True)

    def forward(self, hidden, encoder_hidden_states, timestep, pos_ids, size_index=None):
        self._index = size_index
        try:
            with self._lora_hooks():  # size 1 for the model: its own LoRA hooks stay off
                return self.mp._trunk_at(hidden, timestep, encoder_hidden_states, pos_ids, 1)
        finally:
            self._index = None


class WanStemGraph(StemGraph):
    """Wan size k's input side: fine video tokens (B, N1, C_tok) -> embedded tokens (B, N_k, d). A coarse size is
    FLUX's (its stem on the merged tokens); size 1 is the trunk's own patch embedding (a strided Conv3d) on the
    unpacked latent. The output side needs nothing of its own: :class:`HeadGraph` serves Wan too (size 1's
    ``proj_out`` gives the (pt, ph, pw, C) fine-token packing per token)."""

    def forward(self, hidden_states):
        from ..models.wan import unpack_video

        if self.k > 1:
            return super().forward(hidden_states)
        f, h, w = self.grid
        p_t, p_h, p_w = self.mp.patch
        x = unpack_video(hidden_states, (f * p_t, h * p_h, w * p_w), self.mp.patch)
        return self.mp.trunk.patch_embedding(x).flatten(2).transpose(1, 2)
