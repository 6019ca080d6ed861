"""Per-size LoRA on a frozen, shared trunk, attached with forward hooks.

Hooks leave the trunk's module tree and state dict exactly as diffusers made them, so the trunk still saves and
loads with ``save_pretrained``/``from_pretrained`` and size 1 runs the untouched model.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class LoRA(nn.Module):
    """Low-rank update x -> (x A^T) B^T * alpha/r; B starts at zero so a fresh LoRA changes nothing."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float | None = None):
        super().__init__()
        self.down = nn.Parameter(torch.empty(rank, in_features))
        self.up = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))
        self.scale = (alpha if alpha is not None else rank) / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.down.T) @ self.up.T * self.scale


def ff_targets(trunk: nn.Module) -> list[str]:
    """The feed-forward linears of every block of a FLUX trunk.

    Double blocks: the image stream's ``ff`` (both layers). Single blocks fuse attention and MLP: ``proj_mlp``
    is the MLP's first layer and ``proj_out`` its (shared) second layer.
    """
    names = []
    for i, _ in enumerate(trunk.transformer_blocks):
        names += [f"transformer_blocks.{i}.ff.net.0.proj", f"transformer_blocks.{i}.ff.net.2"]
    for i, _ in enumerate(trunk.single_transformer_blocks):
        names += [f"single_transformer_blocks.{i}.proj_mlp", f"single_transformer_blocks.{i}.proj_out"]
    return names


def wan_ff_targets(trunk: nn.Module) -> list[str]:
    """The feed-forward linears of every block of a Wan trunk (``ffn.net.0.proj``: d -> ffn_dim, ``ffn.net.2``)."""
    names = []
    for i, _ in enumerate(trunk.blocks):
        names += [f"blocks.{i}.ffn.net.0.proj", f"blocks.{i}.ffn.net.2"]
    return names


def key(name: str) -> str:
    return name.replace(".", "__")


def make_loras(trunk: nn.Module, targets: list[str], rank: int, alpha: float | None) -> nn.ModuleDict:
    mods = dict(trunk.named_modules())
    return nn.ModuleDict({key(n): LoRA(mods[n].in_features, mods[n].out_features, rank, alpha) for n in targets})


class ActiveSize:
    """Which size's LoRA the hooks apply; None or 1 = none (the base model)."""

    def __init__(self):
        self.size = 1


def attach(trunk: nn.Module, targets: list[str], loras_by_size: nn.ModuleDict, active: ActiveSize):
    """Register one forward hook per target linear; returns the handles (call .remove() to detach)."""
    mods = dict(trunk.named_modules())
    handles = []
    for name in targets:
        def hook(module, args, output, _k=key(name)):
            bank = loras_by_size[str(active.size)] if str(active.size) in loras_by_size else None
            if bank is None or _k not in bank:
                return output
            return output + bank[_k](args[0])
        handles.append(mods[name].register_forward_hook(hook))
    return handles
