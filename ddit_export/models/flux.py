"""A FLUX transformer that runs any step at patch size k in {1, 2, 4, ...} on one shared trunk.

Every size has the same contract: latent in fine-token form (B, N_fine, C) plus FLUX's conditioning in, velocity in
fine-token form out. Size 1 calls diffusers' ``FluxTransformer2DModel`` untouched. Size k > 1 merges k x k fine
tokens, embeds them with its own stem, runs the shared trunk with its own LoRA on the feed-forward layers and
coarse RoPE positions, de-embeds with its own head and unmerges.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError, WeightsError
from ..settings import AdapterSettings, DEFAULT_SIZES, check_sizes
from . import lora as lora_mod
from .patching import coarse_ids, init_deembed, init_embed, merge_tokens, unmerge_tokens

ADAPTER_FILE = "ddit_adapters.safetensors"


class CoarseStem(nn.Module):
    """Everything size k owns: embedding, de-embedding, size identifier and the zero-initialised residual."""

    def __init__(self, trunk: nn.Module, k: int, init: str, residual: str = "linear"):
        super().__init__()
        c_in, d = trunk.x_embedder.in_features, trunk.x_embedder.out_features
        c_out = trunk.proj_out.out_features
        self.embed = nn.Linear(k * k * c_in, d)
        self.deembed = nn.Linear(d, k * k * c_out)
        self.size_id = nn.Parameter(torch.zeros(d))
        self.residual = nn.Linear(k * k * c_in, k * k * c_out)
        nn.init.zeros_(self.residual.weight)
        nn.init.zeros_(self.residual.bias)
        add_sigma_residual(self, residual, k * k * c_in, k * k * c_out)
        with torch.no_grad():
            self.embed.weight.copy_(init_embed(trunk.x_embedder.weight.detach().float(), k, init))
            self.embed.bias.copy_(trunk.x_embedder.bias.detach().float())
            w, b = init_deembed(trunk.proj_out.weight.detach().float(), trunk.proj_out.bias.detach().float(), k, init)
            self.deembed.weight.copy_(w)
            self.deembed.bias.copy_(b)


def add_sigma_residual(stem: nn.Module, residual: str, c_in: int, c_out: int):
    """``residual="sigma"``: a second zero-initialised linear map, on latent / max(sigma, SIGMA_FLOOR)."""
    if residual == "sigma":
        stem.residual_sigma = nn.Linear(c_in, c_out, bias=False)
        nn.init.zeros_(stem.residual_sigma.weight)


def stem_output(stem: nn.Module, trunk_out: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A coarse size's velocity in merged-token form: de-embedded trunk output plus the residual(s) of the merged
    latent ``x``; ``sigma`` (B,) is the timestep in [0, 1] (only the "sigma" residual reads it)."""
    out = stem.deembed(trunk_out) + stem.residual(x)
    if hasattr(stem, "residual_sigma"):
        from ..settings import SIGMA_FLOOR

        s = sigma.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1))).clamp(min=SIGMA_FLOOR)
        out = out + stem.residual_sigma(x / s)
    return out


class MultiPatchFlux(nn.Module):
    """diffusers' FluxTransformer2DModel (``self.trunk``, shared) plus one :class:`CoarseStem` and LoRA per size."""

    family = "flux"  # the contract this model's forward takes (models/wan.py's MultiPatchWan: "wan")
    stem_class = CoarseStem  # what one coarse size owns (MultiPatchWan: WanStem)
    ff_targets = staticmethod(lora_mod.ff_targets)  # the trunk's feed-forward linears that get per-size LoRA

    def __init__(self, trunk: nn.Module, sizes=DEFAULT_SIZES, adapter: AdapterSettings = AdapterSettings()):
        super().__init__()
        self.trunk = trunk
        self.sizes = check_sizes(sizes)
        self.adapter_settings = adapter
        coarse = [k for k in self.sizes if k > 1]
        self.stems = nn.ModuleDict({str(k): self.stem_class(trunk, k, adapter.init, adapter.residual) for k in coarse})
        self.lora_targets = self.ff_targets(trunk) if adapter.rank > 0 else []
        self.loras = nn.ModuleDict({
            str(k): lora_mod.make_loras(trunk, self.lora_targets, adapter.rank, adapter.lora_alpha) for k in coarse
        })
        self._active = lora_mod.ActiveSize()
        self._hooks = lora_mod.attach(trunk, self.lora_targets, self.loras, self._active)
        # only the new layers move, to the trunk's compute dtype and device: the user's trunk is never cast (a trunk
        # with layerwise casting or mixed dtypes keeps every parameter exactly as it was)
        dtype, device = compute_dtype(trunk), next(trunk.parameters()).device
        self.stems.to(dtype=dtype, device=device)
        self.loras.to(dtype=dtype, device=device)

    def unwrap(self) -> nn.Module:
        """Detach the LoRA hooks and hand the trunk back exactly as it came in (parameters, dtypes, module tree)."""
        for h in self._hooks:
            h.remove()
        self._hooks = []
        return self.trunk

    # ---- the contract --------------------------------------------------------------------------------------
    def forward(self, hidden_states, encoder_hidden_states, pooled_projections, timestep, img_ids, txt_ids,
                guidance=None, *, size: int = 1, grid: tuple[int, int], joint_attention_kwargs=None,
                controlnet_block_samples=None, controlnet_single_block_samples=None, controlnet_blocks_repeat=False):
        """Velocity for fine-token latents ``hidden_states`` (B, h*w, C) at patch size ``size``; ``grid`` = (h, w).

        Tokens after the first h*w (FluxKontextPipeline's reference image) stay fine at every size: they are embedded
        by the trunk's own ``x_embedder`` and keep their positions, and their outputs come back after the latent's.
        ``joint_attention_kwargs`` (incl. the LoRA ``scale``) reach every size; ControlNet residuals are per fine
        token, so they are honoured at size 1 only and refused at a coarse size (the drop-in runs such steps fine).
        """
        if size not in self.sizes:
            raise ConfigError(f"patch size {size} is not one of this model's sizes {self.sizes}")
        h, w = grid
        if hidden_states.ndim != 3 or hidden_states.shape[1] < h * w:
            raise ConfigError(f"hidden_states has shape {tuple(hidden_states.shape)}; the {h}x{w} token grid needs "
                              f"(batch, {h * w}, channels) fine tokens")
        if h % size or w % size:
            raise ConfigError(f"patch size {size} does not divide the token grid {grid}")
        if size == 1:
            return self.trunk(hidden_states=hidden_states, encoder_hidden_states=encoder_hidden_states,
                              pooled_projections=pooled_projections, timestep=timestep, img_ids=img_ids,
                              txt_ids=txt_ids, guidance=guidance, joint_attention_kwargs=joint_attention_kwargs,
                              controlnet_block_samples=controlnet_block_samples,
                              controlnet_single_block_samples=controlnet_single_block_samples,
                              controlnet_blocks_repeat=controlnet_blocks_repeat, return_dict=False)[0]
        if controlnet_block_samples is not None or controlnet_single_block_samples is not None:
            raise ConfigError(f"ControlNet residuals are per fine token: patch size {size} cannot take "
                              f"controlnet_block_samples / controlnet_single_block_samples (run such steps at size 1)")
        n = h * w
        stem = self.stems[str(size)]
        x = merge_tokens(hidden_states[:, :n], grid, size)
        hidden = stem.embed(x) + stem.size_id
        ids = coarse_ids(img_ids[:n], grid, size)
        extra = hidden_states.shape[1] - n
        if extra:  # reference tokens (Kontext) stay fine
            hidden = torch.cat([hidden, self.trunk.x_embedder(hidden_states[:, n:])], dim=1)
            ids = torch.cat([ids, img_ids[n:]], dim=0)
        out = self._trunk_body(hidden, encoder_hidden_states, pooled_projections, timestep, ids, txt_ids, guidance,
                               size, joint_attention_kwargs)
        n_coarse = x.shape[1]
        velocity = unmerge_tokens(stem_output(stem, out[:, :n_coarse], x, timestep.reshape(-1)), grid, size)
        if extra:
            velocity = torch.cat([velocity, self.trunk.proj_out(out[:, n_coarse:])], dim=1)
        return velocity

    def _trunk_body(self, hidden, encoder_hidden_states, pooled, timestep, img_ids, txt_ids, guidance, size,
                    joint_attention_kwargs=None):
        """diffusers' FluxTransformer2DModel.forward between x_embedder and proj_out, with size's LoRA active.

        ``joint_attention_kwargs`` are handled as diffusers does: ``scale`` scales the trunk's PEFT LoRA layers for
        this call, ``ip_adapter_image_embeds`` goes through the trunk's ``encoder_hid_proj``, the rest reach every
        block's attention processor.
        """
        from diffusers.utils import USE_PEFT_BACKEND, scale_lora_layers, unscale_lora_layers

        t = self.trunk
        jak = dict(joint_attention_kwargs or {})
        lora_scale = jak.pop("scale", 1.0)
        if "ip_adapter_image_embeds" in jak:
            jak["ip_hidden_states"] = t.encoder_hid_proj(jak.pop("ip_adapter_image_embeds"))
        timestep = timestep.to(hidden.dtype) * 1000
        if guidance is not None:
            temb = t.time_text_embed(timestep, guidance.to(hidden.dtype) * 1000, pooled)
        else:
            temb = t.time_text_embed(timestep, pooled)
        enc = t.context_embedder(encoder_hidden_states)
        rope = t.pos_embed(torch.cat((txt_ids, img_ids), dim=0))
        if USE_PEFT_BACKEND:
            scale_lora_layers(t, lora_scale)
        try:
            with self.active(size):
                for block in list(t.transformer_blocks) + list(t.single_transformer_blocks):
                    enc, hidden = block(hidden_states=hidden, encoder_hidden_states=enc, temb=temb,
                                        image_rotary_emb=rope, joint_attention_kwargs=jak)
        finally:
            if USE_PEFT_BACKEND:
                unscale_lora_layers(t, lora_scale)
        return t.norm_out(hidden, temb)

    @contextlib.contextmanager
    def active(self, size: int):
        prev, self._active.size = self._active.size, size
        try:
            yield
        finally:
            self._active.size = prev

    # ---- parameters ----------------------------------------------------------------------------------------
    def adapter_parameters(self):
        """Only what the coarse sizes own (stems, LoRA): what self-distillation trains."""
        return list(self.stems.parameters()) + list(self.loras.parameters())

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        sd = {f"stems.{k}": v for k, v in self.stems.state_dict().items()}
        sd.update({f"loras.{k}": v for k, v in self.loras.state_dict().items()})
        return {k: v.detach().contiguous().cpu() for k, v in sd.items()}

    def adapter_metadata(self) -> dict[str, str]:
        a = self.adapter_settings
        return {"format": "ddit-adapters/1", "sizes": json.dumps(list(self.sizes)), "rank": str(a.rank),
                "init": a.init, "lora_alpha": json.dumps(a.lora_alpha),
                **({} if a.residual == "linear" else {"residual": a.residual})}  # linear: the files as before

    def save_adapters(self, path: str | Path) -> Path:
        """Write the coarse-size weights (never the trunk) as one safetensors file with its settings."""
        from safetensors.torch import save_file

        path = Path(path)
        if path.is_dir() or not path.suffix:
            path = path / ADAPTER_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file(self.adapter_state_dict(), str(tmp), metadata=self.adapter_metadata())
        tmp.replace(path)
        return path

    @classmethod
    def from_trunk_and_adapters(cls, trunk: nn.Module, path: str | Path) -> "MultiPatchFlux":
        """Rebuild the sizes and LoRA rank recorded in an adapters file and load its weights."""
        path, meta, state = read_adapters(path)
        adapter = AdapterSettings(rank=int(meta["rank"]), init=meta["init"], lora_alpha=json.loads(meta["lora_alpha"]),
                                  residual=meta.get("residual", "linear"))  # files before the field: "linear"
        model = cls(trunk, sizes=json.loads(meta["sizes"]), adapter=adapter)
        model.load_adapter_state_dict(state, source=str(path))
        return model

    def load_adapter_state_dict(self, state: dict[str, torch.Tensor], source: str = "adapters"):
        own = self.adapter_state_dict()
        missing = sorted(set(own) - set(state))
        extra = sorted(set(state) - set(own))
        if missing or extra:
            raise WeightsError(f"{source} does not match the model: missing {missing[:3]}, unexpected {extra[:3]}")
        bad = [k for k in own if own[k].shape != state[k].shape]
        if bad:
            raise WeightsError(f"{source}: shape mismatch for {bad[:3]}")
        stems = {k[len("stems."):]: v for k, v in state.items() if k.startswith("stems.")}
        loras = {k[len("loras."):]: v for k, v in state.items() if k.startswith("loras.")}
        self.stems.load_state_dict(stems)
        self.loras.load_state_dict(loras)

    @property
    def config(self):
        return self.trunk.config

    @property
    def dtype(self):
        return compute_dtype(self.trunk)

    @property
    def device(self):
        return next(self.trunk.parameters()).device


def read_adapters(path: str | Path) -> tuple[Path, dict, dict[str, torch.Tensor]]:
    """(path, metadata, tensors) of an adapters file (a folder: its ``ddit_adapters.safetensors``); a missing,
    damaged or foreign file is a WeightsError."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        path = path / ADAPTER_FILE
    if not path.is_file():
        raise WeightsError(f"adapter file not found: {path}")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except Exception as e:  # safetensors raises several types for a damaged file
        raise WeightsError(f"adapter file {path} is corrupt: {e}") from None
    if meta.get("format") != "ddit-adapters/1":
        raise WeightsError(f"{path} is not a ddit adapters file (format {meta.get('format')!r})")
    return path, meta, state


def compute_dtype(trunk: nn.Module) -> torch.dtype:
    """The dtype the trunk computes in: a layerwise-casting hook's compute dtype (diffusers' ``get_parameter_dtype``
    reads it), else the dtype of its first floating parameter (the input embedding's for a mixed-dtype trunk)."""
    try:
        from diffusers.models.modeling_utils import get_parameter_dtype

        return get_parameter_dtype(trunk)
    except ImportError:  # pragma: no cover - diffusers is a core dependency of the FLUX path
        return next(p.dtype for p in trunk.parameters() if p.is_floating_point())
