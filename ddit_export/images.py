"""Fine-token latents <-> (B, C, H, W) arrays <-> images: FLUX's 2x2 packing. Below both models/ and runtime/,
which both need it."""
from __future__ import annotations

import numpy as np

from .shapes import PACK, TokenGeometry


def unpack(latents, geom: TokenGeometry):
    """(B, h*w, C*4) fine tokens -> (B, C, H, W), FLUX's packing inverted (works for numpy and torch)."""
    b = latents.shape[0]
    h, w = geom.grid
    c = geom.latent_channels
    x = latents.reshape(b, h, w, c, PACK, PACK)
    x = x.transpose(0, 3, 1, 4, 2, 5) if isinstance(x, np.ndarray) else x.permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, h * PACK, w * PACK)


def pack(images, geom: TokenGeometry):
    """(B, C, H, W) -> (B, h*w, C*4): FLUX's ``_pack_latents``."""
    b = images.shape[0]
    h, w = geom.grid
    c = geom.latent_channels
    x = images.reshape(b, c, h, PACK, w, PACK)
    x = x.transpose(0, 2, 4, 1, 3, 5) if isinstance(x, np.ndarray) else x.permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, h * w, c * PACK * PACK)


def pixels_to_pil(latents, geom: TokenGeometry):
    """Pixel-space latents in [-1, 1] -> list of PIL RGB images."""
    from PIL import Image

    arr = latents.detach().float().cpu().numpy() if hasattr(latents, "detach") else np.asarray(latents)
    x = unpack(arr, geom)
    x = ((np.clip(x, -1, 1) + 1) * 127.5).round().astype(np.uint8).transpose(0, 2, 3, 1)
    return [Image.fromarray(im) for im in x]
