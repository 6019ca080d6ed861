"""One source of truth for shapes: the token grid and token count of every patch size.

The ONNX dynamic axes, the TensorRT profiles, the runtime buffers and the scheduler's candidate sizes all come
from :class:`TokenGeometry`.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError

PACK = 2  # FLUX packs 2x2 latent pixels into one token; that token is patch size 1 here


@dataclass(frozen=True)
class TokenGeometry:
    """Image size -> fine token grid, and the grid and token count at every patch size k."""

    height: int
    width: int
    vae_scale: int  # 8 for FLUX's VAE, 1 for a pixel-space model
    latent_channels: int  # channels of the (unpacked) latent

    def __post_init__(self):
        unit = self.vae_scale * PACK
        for name, v in (("height", self.height), ("width", self.width)):
            if v <= 0 or v % unit:
                raise ConfigError(f"{name} {v} must be a positive multiple of {unit} "
                                  f"(VAE factor {self.vae_scale} x token packing {PACK})")

    @property
    def grid(self) -> tuple[int, int]:
        """Fine token grid (rows, cols)."""
        unit = self.vae_scale * PACK
        return self.height // unit, self.width // unit

    @property
    def latent_hw(self) -> tuple[int, int]:
        return self.height // self.vae_scale, self.width // self.vae_scale

    @property
    def token_channels(self) -> int:
        return self.latent_channels * PACK * PACK

    def available(self, k: int) -> bool:
        h, w = self.grid
        return k >= 1 and h % k == 0 and w % k == 0

    def available_sizes(self, sizes) -> tuple[int, ...]:
        return tuple(k for k in sizes if self.available(k))

    def grid_at(self, k: int) -> tuple[int, int]:
        if not self.available(k):
            raise ConfigError(f"patch size {k} does not divide the token grid {self.grid}")
        h, w = self.grid
        return h // k, w // k

    def tokens(self, k: int = 1) -> int:
        h, w = self.grid_at(k)
        return h * w


def parse_resolutions(value) -> tuple[tuple[int, int], ...]:
    """``[[h, w], ...]`` (a model's or bundle's ``trained_resolutions``) as a tuple of (h, w) pairs of positive
    ints; ValueError saying what is wrong (the caller names the file)."""
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"'trained_resolutions' must be a non-empty list of [height, width] pairs, got {value!r}")
    out = []
    for r in value:
        if (not isinstance(r, (list, tuple)) or len(r) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in r)):
            raise ValueError(f"'trained_resolutions' entry {r!r} is not a [height, width] pair of positive integers")
        out.append((int(r[0]), int(r[1])))
    return tuple(dict.fromkeys(out))


def resolution_warning(name: str, trained, height: int, width: int) -> str | None:
    """The one warning line for generating ``name`` at ``height`` x ``width`` when it was trained only at the
    ``trained`` (h, w) pairs; None when it is one of them or ``trained`` is unknown (None)."""
    if not trained or (height, width) in {tuple(r) for r in trained}:
        return None
    shown = ", ".join(f"{h}x{w}" for h, w in trained)
    return (f"warning: {name} was trained at {shown}; {height}x{width} is outside that (allowed: RoPE "
            f"extrapolates, but expect lower quality)")
