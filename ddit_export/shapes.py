"""One source of truth for shapes: the token grid and token count of every patch size.

The ONNX dynamic axes, the TensorRT profiles, the runtime buffers and the scheduler's candidate sizes all come
from :class:`TokenGeometry`.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError

PACK = 2  # FLUX packs 2x2 latent pixels into one token; that token is patch size 1 here
# Fine tokens of one generation (all frames of a clip), checked on every path (a model's or a bundle's geometry):
# FLUX.1 at 2048x2048 has 16384, Wan 2.1 at 720p 75600. Far beyond, attention is out of reach and the scheduler's
# resolution shift (μ grows linearly with the token count) overflows.
MAX_TOKENS = 2**18


def check_tokens(tokens: int, what: str):
    if tokens > MAX_TOKENS:
        raise ConfigError(f"{what} makes {tokens} fine tokens, more than the {MAX_TOKENS} this runs; choose a "
                          f"smaller size")


@dataclass(frozen=True)
class TokenGeometry:
    """Image size -> fine token grid, and the grid and token count at every patch size k."""

    height: int
    width: int
    vae_scale: int  # 8 for FLUX's VAE, 1 for a pixel-space model
    latent_channels: int  # channels of the (unpacked) latent

    is_video = False

    def __post_init__(self):
        unit = self.vae_scale * PACK
        for name, v in (("height", self.height), ("width", self.width)):
            if v <= 0 or v % unit:
                raise ConfigError(f"{name} {v} must be a positive multiple of {unit} "
                                  f"(VAE factor {self.vae_scale} x token packing {PACK})")
        check_tokens(self.grid[0] * self.grid[1], f"{self.height}x{self.width}")

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


@dataclass(frozen=True)
class VideoGeometry:
    """Clip size -> fine video token grid (F, h, w), and the grid and token count at every patch size k.

    ``frames`` are pixel frames; a VAE with temporal factor ``vae_temporal`` > 1 (Wan 2.1: 4) keeps the first frame
    and compresses the rest, so frames must be 4n+1 and give n+1 latent frames. A fine token is one Wan patch
    ``(p_t, p_h, p_w)`` of the latent; a coarse size k merges k x k spatial tokens inside one token frame (the
    temporal patch is never merged). Tokens are ordered (frame, row, column); a token's channels (t, h, w, c).
    """

    frames: int
    height: int
    width: int
    vae_scale: int
    vae_temporal: int
    patch: tuple[int, int, int]
    latent_channels: int

    is_video = True

    def __post_init__(self):
        object.__setattr__(self, "patch", tuple(int(v) for v in self.patch))
        p_t, p_h, p_w = self.patch
        if self.frames < 1:
            raise ConfigError(f"frames must be >= 1, got {self.frames}")
        if self.vae_temporal > 1 and (self.frames - 1) % self.vae_temporal:
            lo = (self.frames - 1) // self.vae_temporal * self.vae_temporal + 1
            raise ConfigError(f"frames {self.frames} do not fit the VAE's temporal factor {self.vae_temporal}: use "
                              f"{self.vae_temporal}n+1 frames, e.g. {lo} or {lo + self.vae_temporal}")
        if self.latent_frames % p_t:
            what = ("frames" if self.vae_temporal == 1
                    else f"latent frames (the VAE makes {self.latent_frames} of {self.frames} frames)")
            raise ConfigError(f"frames {self.frames} do not fit the temporal patch {p_t}: the {what} must be a "
                              f"multiple of {p_t}")
        for name, v, p in (("height", self.height, p_h), ("width", self.width, p_w)):
            unit = self.vae_scale * p
            if v <= 0 or v % unit:
                raise ConfigError(f"{name} {v} must be a positive multiple of {unit} "
                                  f"(VAE factor {self.vae_scale} x patch {p})")
        f, h, w = self.grid
        check_tokens(f * h * w, f"{self.frames} frames of {self.height}x{self.width}")

    @property
    def latent_frames(self) -> int:
        return (self.frames - 1) // self.vae_temporal + 1 if self.vae_temporal > 1 else self.frames

    @property
    def grid(self) -> tuple[int, int, int]:
        """Fine token grid (frames, rows, cols)."""
        p_t, p_h, p_w = self.patch
        return (self.latent_frames // p_t, self.height // (self.vae_scale * p_h),
                self.width // (self.vae_scale * p_w))

    @property
    def latent_hw(self) -> tuple[int, int]:
        return self.height // self.vae_scale, self.width // self.vae_scale

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        """(C, F, H, W) of the latent: what WanPipeline's noise has per sample."""
        return (self.latent_channels, self.latent_frames) + self.latent_hw

    @property
    def token_channels(self) -> int:
        p_t, p_h, p_w = self.patch
        return self.latent_channels * p_t * p_h * p_w

    def available(self, k: int) -> bool:
        _, h, w = self.grid
        return k >= 1 and h % k == 0 and w % k == 0

    def available_sizes(self, sizes) -> tuple[int, ...]:
        return tuple(k for k in sizes if self.available(k))

    def grid_at(self, k: int) -> tuple[int, int, int]:
        if not self.available(k):
            raise ConfigError(f"patch size {k} does not divide the {self.grid[1]}x{self.grid[2]} token grid of "
                              f"each frame")
        f, h, w = self.grid
        return f, h // k, w // k

    def tokens(self, k: int = 1) -> int:
        f, h, w = self.grid_at(k)
        return f * h * w


def geometry_from_entry(m: dict):
    """The geometry a bundle manifest's ``model`` entry was built for: a VideoGeometry when it records frames
    (format 2 video bundles), else a TokenGeometry."""
    if "frames" in m:
        return VideoGeometry(m["frames"], m["height"], m["width"], m["vae_scale"], m["vae_temporal"],
                             tuple(m["patch"]), m["latent_channels"])
    return TokenGeometry(m["height"], m["width"], m["vae_scale"], m["latent_channels"])


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


def resolution_warning(name: str, trained, height: int, width: int, frames: int | None = None,
                       trained_frames=None) -> str | None:
    """The one warning line for generating ``name`` at ``height`` x ``width`` when it was trained only at the
    ``trained`` (h, w) pairs; None when it is one of them or ``trained`` is unknown (None). A video model also
    names its clip length: ``frames`` outside the ``trained_frames`` it was trained at (when known) warns too."""
    size_off = bool(trained) and (height, width) not in {tuple(r) for r in trained}
    frames_off = bool(trained_frames) and frames is not None and frames not in tuple(trained_frames)
    if not (size_off or frames_off):
        return None
    if frames is None or not trained_frames:  # an image model, or a clip length not known
        shown = ", ".join(f"{h}x{w}" for h, w in trained)
        return (f"warning: {name} was trained at {shown}; {height}x{width} is outside that (allowed: RoPE "
                f"extrapolates, but expect lower quality)")
    counts = "/".join(str(f) for f in trained_frames)
    sides = ", ".join(f"{h}x{w}" for h, w in trained) if trained else "its sides"
    return (f"warning: {name} was trained at {counts} frames of {sides}; {frames} frames of {height}x{width} is "
            f"outside that (allowed: RoPE extrapolates, but expect lower quality)")


def profile_warning(name: str, policy: str, calibrated, height: int, width: int, frames: int | None = None,
                    calibrated_frames: int | None = None) -> str | None:
    """One warning line when a schedule profile calibrated at ``calibrated`` (h, w) (a video's: and
    ``calibrated_frames`` frames) runs at another size (clip length); None when it runs where it was measured or its
    resolution is not recorded."""
    other_frames = calibrated_frames is not None and frames is not None and frames != calibrated_frames
    if calibrated is None or ((height, width) == tuple(calibrated) and not other_frames):
        return None
    if calibrated_frames is None or frames is None:
        return (f"warning: {name}'s schedule profile ({policy}) was calibrated at {calibrated[0]}x{calibrated[1]}; "
                f"this run is {height}x{width}, where its quality is not measured (ddit-export calibrate --height "
                f"{height} --width {width} measures it there)")
    return (f"warning: {name}'s schedule profile ({policy}) was calibrated at {calibrated_frames} frames of "
            f"{calibrated[0]}x{calibrated[1]}; this run is {frames} frames of {height}x{width}, where its quality is "
            f"not measured (ddit-export calibrate --frames {frames} --height {height} --width {width} measures it "
            f"there)")
