"""Writing generated clips: :func:`save_video` (GIF through Pillow, MP4 through imageio's ffmpeg plugin),
:func:`read_video` (for tests and evaluation) and :func:`frames_grid` (one row of frames per clip, for docs).
Below runtime/ and the commands, like images.py.

A clip is a list of PIL frames or an (F, H, W, 3) uint8 array. MP4 needs the ``video`` extra (imageio and
imageio-ffmpeg, which ships an ffmpeg binary); GIF needs nothing beyond Pillow.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import ConfigError
from .fsutil import write_file_atomic

VIDEO_SUFFIXES = (".gif", ".mp4")
DEFAULT_FPS = 8


def clip_array(frames) -> np.ndarray:
    """A list of PIL frames or an (F, H, W, 3) uint8 array -> (F, H, W, 3) uint8 array."""
    if isinstance(frames, (list, tuple)):
        if not frames:
            raise ConfigError("a video needs at least one frame")
        frames = np.stack([np.asarray(f.convert("RGB") if hasattr(f, "convert") else f) for f in frames])
    a = np.asarray(frames)
    if a.dtype != np.uint8 or a.ndim != 4 or a.shape[-1] != 3 or not len(a):
        raise ValueError(f"frames must be PIL images or an (F, H, W, 3) uint8 array, got {a.dtype} {a.shape}")
    return a


def video_suffix(path) -> str:
    """The output type from ``path``'s suffix; anything but .gif / .mp4 is a ConfigError naming those."""
    suffix = Path(path).suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        what = repr(suffix) if suffix else "a name without a suffix"
        raise ConfigError(f"cannot write a video to {path}: {what} is not a video type this writes; use "
                          f"{' or '.join(VIDEO_SUFFIXES)}")
    return suffix


def save_video(frames, path, fps: float = DEFAULT_FPS) -> Path:
    """Write a clip to ``path`` (.gif or .mp4, from the suffix), atomically: a temporary sibling renamed into place,
    so a failed write leaves ``path`` as it was. Returns the path."""
    path = Path(path)
    write_file_atomic(path, video_writer(frames, path, fps))
    return path


def video_writer(frames, path, fps: float = DEFAULT_FPS):
    """The function ``write(tmp_path)`` that writes the clip in ``path``'s type (.gif or .mp4) to ``tmp_path``
    (for fsutil's atomic writers; save_video is the one-file case)."""
    suffix = video_suffix(path)
    if not fps > 0:
        raise ConfigError(f"fps must be > 0, got {fps}")
    a = clip_array(frames)
    return _mp4_writer(a, fps) if suffix == ".mp4" else _gif_writer(a, fps)


def _gif_writer(a: np.ndarray, fps: float):
    from PIL import Image

    frames = [Image.fromarray(f) for f in a]
    # GIF stores frame delays in 1/100 s: 8 fps -> 0.12 or 0.13 s; loop=0 = loop forever
    duration = max(int(round(1000.0 / fps)), 10)

    def write(tmp: Path):
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=duration, loop=0)

    return write


def _mp4_writer(a: np.ndarray, fps: float):
    try:
        import imageio.v2 as iio
        import imageio_ffmpeg  # noqa: F401  (imageio's FFMPEG plugin needs it; checked here for a clear message)
    except ImportError as e:
        raise ConfigError(f"writing .mp4 needs {e.name or 'imageio'} (imageio and imageio-ffmpeg): "
                          f"pip install 'ddit-export[video]', or write a .gif") from None

    if a.shape[1] % 2 or a.shape[2] % 2:  # H.264 in yuv420p needs even sides: repeat the last row / column
        a = np.pad(a, ((0, 0), (0, a.shape[1] % 2), (0, a.shape[2] % 2), (0, 0)), mode="edge")

    def write(tmp: Path):
        with iio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264", pixelformat="yuv420p",
                            macro_block_size=1, ffmpeg_log_level="error") as w:
            for f in a:
                w.append_data(f)

    return write


def read_video(path) -> np.ndarray:
    """(F, H, W, 3) uint8 frames of a GIF (Pillow) or an MP4 (imageio-ffmpeg) file."""
    path = Path(path)
    if video_suffix(path) == ".gif":
        from PIL import Image, ImageSequence

        with Image.open(path) as im:
            return np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)])
    import imageio.v2 as iio

    with iio.get_reader(path, format="FFMPEG") as r:
        return np.stack(list(r.iter_data()))  # not list(r): the reader's len() is inf


def frames_grid(clips, scale: int = 1, gap: int = 0, background=(0, 0, 0)):
    """One row per clip, its frames left to right (``gap`` px apart, each frame enlarged ``scale`` times,
    nearest-neighbour) -> PIL image. Clips may differ in frame count, not in frame size."""
    from PIL import Image

    arrays = [clip_array(c) for c in clips]
    if not arrays:
        raise ValueError("frames_grid needs at least one clip")
    sizes = {a.shape[1:3] for a in arrays}
    if len(sizes) > 1:
        raise ValueError(f"clips differ in frame size: {sorted(sizes)}")
    h, w = (s * scale for s in arrays[0].shape[1:3])
    cols = max(len(a) for a in arrays)
    canvas = Image.new("RGB", (cols * w + (cols - 1) * gap, len(arrays) * h + (len(arrays) - 1) * gap),
                       tuple(background))
    for r, a in enumerate(arrays):
        for c, f in enumerate(a):
            im = Image.fromarray(f)
            if scale != 1:
                im = im.resize((w, h), Image.NEAREST)
            canvas.paste(im, (c * (w + gap), r * (h + gap)))
    return canvas
