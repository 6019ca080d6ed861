"""Writing generated clips: animated GIF with Pillow (a core dependency), MP4 with imageio + imageio-ffmpeg (the
``video`` extra). No encoder is written here; both go to a temporary file renamed into place."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import ConfigError
from .fsutil import write_file_atomic

VIDEO_SUFFIXES = (".gif", ".mp4")


def as_pil_frames(frames) -> list:
    """A list of PIL images from PIL frames, a (F, H, W, 3) uint8 array or a list of such arrays."""
    from PIL import Image

    if isinstance(frames, np.ndarray):
        frames = list(frames)
    out = [f if isinstance(f, Image.Image) else Image.fromarray(np.asarray(f, np.uint8)) for f in frames]
    if not out:
        raise ConfigError("a video needs at least one frame")
    return [f.convert("RGB") for f in out]


def save_video(frames, path, fps: int = 8) -> Path:
    """Write ``frames`` to ``path`` (.gif or .mp4, by suffix) at ``fps`` frames per second; returns the path."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ConfigError(f"{path}: unknown video type {path.suffix!r}; use {' or '.join(VIDEO_SUFFIXES)}")
    if fps < 1:
        raise ConfigError(f"fps must be >= 1, got {fps}")
    pil = as_pil_frames(frames)
    if suffix == ".gif":
        def write(tmp):
            pil[0].save(tmp, format="GIF", save_all=True, append_images=pil[1:], duration=round(1000 / fps), loop=0,
                        optimize=False, disposal=1)
    else:
        try:
            import imageio.v3 as iio
            import imageio_ffmpeg  # noqa: F401  (imageio's MP4 writer needs its ffmpeg binary)
        except ImportError:
            raise ConfigError("writing .mp4 needs imageio and imageio-ffmpeg: pip install 'ddit-export[video]' "
                              "(or write a .gif, which needs nothing more)") from None
        arr = np.stack([np.asarray(f) for f in pil])
        if arr.shape[1] % 2 or arr.shape[2] % 2:  # H.264 in yuv420p needs even sides: pad by one edge pixel
            arr = np.pad(arr, ((0, 0), (0, arr.shape[1] % 2), (0, arr.shape[2] % 2), (0, 0)), mode="edge")

        def write(tmp):
            iio.imwrite(tmp, arr, extension=".mp4", fps=fps, codec="libx264", macro_block_size=1)
    write_file_atomic(path, write)
    return path


def read_video(path) -> np.ndarray:
    """(F, H, W, 3) uint8 frames of a GIF (Pillow) or MP4 (imageio) file: for tests and evaluation."""
    path = Path(path)
    if path.suffix.lower() == ".gif":
        from PIL import Image, ImageSequence

        with Image.open(path) as im:
            return np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)])
    import imageio.v3 as iio

    return np.asarray(iio.imread(path, extension=".mp4"))


def frames_grid(clips, scale: int = 1):
    """One PIL image: a row of frames per clip (clips: lists of PIL frames or (F, H, W, 3) arrays)."""
    from PIL import Image

    rows = [np.concatenate([np.asarray(f) for f in as_pil_frames(c)], axis=1) for c in clips]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    img = Image.fromarray(np.concatenate(rows, axis=0))
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale > 1 else img
