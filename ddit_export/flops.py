"""Analytic FLOPs of one transformer call at patch size k, for any FLUX or Wan 2.1 config.

Counts matrix multiplications only (linear layers: 2·in·out per token; attention: QKᵀ and AV, 2·L²·d each), the
same operations torch's FlopCounterMode counts; norms, activations and RoPE are left out. Text tokens join every
attention and the single blocks at every size: they do not shrink with the patch size.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FluxDims:
    width: int  # heads * head_dim
    in_channels: int
    out_channels: int
    joint_dim: int
    pooled_dim: int
    double: int
    single: int
    guidance: bool

    @classmethod
    def from_config(cls, cfg) -> "FluxDims":
        g = cfg.get if isinstance(cfg, dict) else lambda k, d=None: getattr(cfg, k, d)
        return cls(g("num_attention_heads") * g("attention_head_dim"), g("in_channels"),
                   g("out_channels") or g("in_channels"), g("joint_attention_dim"), g("pooled_projection_dim"),
                   g("num_layers"), g("num_single_layers"), bool(g("guidance_embeds")))


def _lin(tokens: int, i: int, o: int) -> int:
    return 2 * tokens * i * o


def is_wan(cfg) -> bool:
    """A WanTransformer3DModel config (it has ``ffn_dim`` and a 3-D ``patch_size``; FLUX has neither)."""
    g = cfg.get if isinstance(cfg, dict) else lambda k, d=None: getattr(cfg, k, d)
    return g("ffn_dim") is not None and g("text_dim") is not None


def wan_step_flops(cfg, tokens: int, text_tokens: int, k: int = 1, lora_rank: int = 0, batch: int = 1,
                   merge: int | None = None) -> int:
    """FLOPs of one WanTransformer3DModel call on ``tokens`` fine video tokens at size k (k x k spatial merge).
    ``merge``: fine tokens per coarse token when it is not k x k (scripts/temporal_merge.py's k x k x 2 sizes).

    Per block: self-attention (q, k, v, out and the n² attention), cross-attention to the text (q and out on the
    video tokens, k and v on the text tokens, n·t attention), the feed-forward (d -> ffn_dim -> d) and, for k > 1,
    its LoRA. Once per call: the timestep MLP and its 6-way projection, the text embedder, this size's stem/head."""
    g = cfg.get if isinstance(cfg, dict) else lambda key, d=None: getattr(cfg, key, d)
    d = g("num_attention_heads") * g("attention_head_dim")
    f_dim, t = g("ffn_dim"), text_tokens
    patch = 1
    for p in g("patch_size"):
        patch *= p
    c_in = g("in_channels") * patch
    c_out = (g("out_channels") or g("in_channels")) * patch
    m = k * k if merge is None else merge
    n = tokens // m
    r = lora_rank if m > 1 else 0
    f = _lin(1, g("freq_dim"), d) + _lin(1, d, d) + _lin(1, d, 6 * d)  # timestep embedding + block modulations
    f += _lin(t, g("text_dim"), d) + _lin(t, d, d)  # text embedder (PixArt projection, two layers)
    cin, cout = m * c_in, m * c_out
    f += _lin(n, cin, d) + _lin(n, d, cout)  # stem and head of this size
    if m > 1:
        f += _lin(n, cin, cout)  # residual block
    block = (4 * _lin(n, d, d) + 2 * 2 * n * n * d  # self-attention
             + 2 * _lin(n, d, d) + 2 * _lin(t, d, d) + 2 * 2 * n * t * d  # cross-attention
             + _lin(n, d, f_dim) + _lin(n, f_dim, d)  # feed-forward
             + (_lin(n, d, r) + _lin(n, r, f_dim) + _lin(n, f_dim, r) + _lin(n, r, d) if r else 0))
    f += g("num_layers") * block
    return batch * f


def step_flops(cfg, image_tokens: int, text_tokens: int, k: int = 1, lora_rank: int = 0, batch: int = 1) -> int:
    """FLOPs of one call on ``image_tokens`` fine tokens at size k (LoRA counted for k > 1); a Wan config is
    counted by :func:`wan_step_flops`."""
    if is_wan(cfg):
        return wan_step_flops(cfg, image_tokens, text_tokens, k, lora_rank, batch)
    m = FluxDims.from_config(cfg)
    d, t = m.width, text_tokens
    n = image_tokens // (k * k)
    seq = n + t
    r = lora_rank if k > 1 else 0
    # conditioning: timestep (and guidance) MLPs 256->d->d, pooled text projection, per sample
    f = (2 if m.guidance else 1) * (_lin(1, 256, d) + _lin(1, d, d)) + _lin(1, m.pooled_dim, d) + _lin(1, d, d)
    f += _lin(t, m.joint_dim, d)  # context_embedder
    cin, cout = k * k * m.in_channels, k * k * m.out_channels
    f += _lin(n, cin, d) + _lin(n, d, cout)  # stem and head of this size
    if k > 1:
        f += _lin(n, cin, cout)  # residual block
    attn = 2 * 2 * seq * seq * d
    double = (2 * _lin(1, d, 6 * d)  # AdaLN-zero modulations of both streams
              + 4 * _lin(n, d, d) + 4 * _lin(t, d, d)  # q, k, v, out of both streams
              + attn + _lin(n, d, 4 * d) + _lin(n, 4 * d, d) + _lin(t, d, 4 * d) + _lin(t, 4 * d, d)
              + (_lin(n, d, r) + _lin(n, r, 4 * d) + _lin(n, 4 * d, r) + _lin(n, r, d) if r else 0))
    single = (_lin(1, d, 3 * d) + 3 * _lin(seq, d, d) + attn + _lin(seq, d, 4 * d) + _lin(seq, 5 * d, d)
              + (_lin(seq, d, r) + _lin(seq, r, 4 * d) + _lin(seq, 5 * d, r) + _lin(seq, r, d) if r else 0))
    f += m.double * double + m.single * single + _lin(1, d, 2 * d)  # + norm_out modulation
    return batch * f
