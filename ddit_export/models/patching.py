"""Merging k x k fine tokens into one coarse token and back, and initialising the coarse stem and head.

Token layout follows FLUX: a fine token packs a 2x2 latent patch as channels ``c*4 + dy*2 + dx``. A coarse token
of size k concatenates its k x k fine tokens in row-major order: index ``(ky*k + kx) * C + c_fine``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..shapes import PACK


def merge_tokens(x: torch.Tensor, grid: tuple, k: int) -> torch.Tensor:
    """(B, h*w, C) fine tokens -> (B, h/k * w/k, k*k*C) coarse tokens. A video grid (F, h, w) merges k x k tokens
    inside each token frame: (B, F*h*w, C) -> (B, F * h/k * w/k, k*k*C)."""
    if k == 1:
        return x
    b, _, c = x.shape
    if len(grid) == 3:
        f, h, w = grid
        x = x.reshape(b, f, h // k, k, w // k, k, c).permute(0, 1, 2, 4, 3, 5, 6)
        return x.reshape(b, f * (h // k) * (w // k), k * k * c)
    h, w = grid
    x = x.reshape(b, h // k, k, w // k, k, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // k) * (w // k), k * k * c)


def unmerge_tokens(x: torch.Tensor, grid: tuple, k: int) -> torch.Tensor:
    """Inverse of :func:`merge_tokens`: (B, h/k * w/k, k*k*C) -> (B, h*w, C) (video: per token frame)."""
    if k == 1:
        return x
    b, _, kkc = x.shape
    c = kkc // (k * k)
    if len(grid) == 3:
        f, h, w = grid
        x = x.reshape(b, f, h // k, w // k, k, k, c).permute(0, 1, 2, 4, 3, 5, 6)
        return x.reshape(b, f * h * w, c)
    h, w = grid
    x = x.reshape(b, h // k, w // k, k, k, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * w, c)


def coarse_ids(img_ids: torch.Tensor, grid: tuple[int, int], k: int) -> torch.Tensor:
    """RoPE positions of coarse tokens: the centre (mean) of the fine positions each one covers."""
    if k == 1:
        return img_ids
    return merge_tokens(img_ids[None], grid, k).reshape(-1, k * k, img_ids.shape[-1]).mean(dim=1)


def image_ids(grid: tuple[int, int], dtype=torch.float32, device=None) -> torch.Tensor:
    """FLUX's image position ids for a fine grid: (h*w, 3) with (0, row, col)."""
    h, w = grid
    ids = torch.zeros(h, w, 3, dtype=dtype, device=device)
    ids[..., 1] = torch.arange(h, dtype=dtype, device=device)[:, None]
    ids[..., 2] = torch.arange(w, dtype=dtype, device=device)[None, :]
    return ids.reshape(h * w, 3)


def resize_matrix(k: int, channels: int, mode: str) -> torch.Tensor:
    """Matrix B (k*k*C, C) that upsamples one fine token (2x2 px per channel) to a coarse token (2k x 2k px).

    ``mode`` is any ``F.interpolate`` mode; ``"bilinear"`` is FlexiViT's choice.
    """
    c_lat = channels // (PACK * PACK)
    basis = torch.eye(PACK * PACK, dtype=torch.float64).reshape(PACK * PACK, 1, PACK, PACK)
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    up = F.interpolate(basis, size=(PACK * k, PACK * k), mode=mode, **kwargs)[:, 0]  # (4, 2k, 2k)
    # pixel (Y, X) of the coarse patch -> sub-token (Y//2, X//2), in-token offset (Y%2, X%2)
    up = up.reshape(PACK * PACK, k, PACK, k, PACK).permute(1, 3, 2, 4, 0).reshape(k * k, PACK * PACK, PACK * PACK)
    b = torch.zeros(k * k, c_lat, PACK * PACK, c_lat, PACK * PACK, dtype=torch.float64)
    for c in range(c_lat):
        b[:, c, :, c, :] = up
    return b.reshape(k * k * channels, channels)


def init_embed(weight: torch.Tensor, k: int, mode: str) -> torch.Tensor:
    """Coarse patch-embedding weight (d, k*k*C) from the fine one (d, C).

    tile: W' = [W, ..., W] / k^2 (embed the average of the sub-tokens). pi: W' = pinv(B^T) W^T, the FlexiViT
    pseudo-inverse resize with B the bilinear upsampling of a fine token's pixels to the coarse patch.
    """
    if mode == "tile":
        return weight.repeat(1, k * k) / (k * k)
    b = resize_matrix(k, weight.shape[1], "bilinear")
    return (torch.linalg.pinv(b.T) @ weight.double().T).T.to(weight.dtype)


def init_deembed(weight: torch.Tensor, bias: torch.Tensor | None, k: int, mode: str):
    """Coarse de-embedding (k*k*C, d) from the fine one (C, d): copy to every sub-token, or bilinear upsample."""
    if mode == "tile":
        w = weight.repeat(k * k, 1)
        bb = None if bias is None else bias.repeat(k * k)
        return w, bb
    b = resize_matrix(k, weight.shape[0], "bilinear")
    w = (b @ weight.double()).to(weight.dtype)
    bb = None if bias is None else (b @ bias.double()).to(bias.dtype)
    return w, bb
