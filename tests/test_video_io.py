import sys

import numpy as np
import pytest
from PIL import Image

from ddit_export import video_io as VI
from ddit_export.errors import ConfigError

SIDE, FRAMES = 32, 6


def clip(frames=FRAMES, side=SIDE):
    """(F, H, W, 3) uint8: a white 8x8 square moving right over a dark-blue background (few colours: a GIF keeps
    them exactly)."""
    a = np.zeros((frames, side, side, 3), np.uint8)
    a[..., 2] = 80
    for f in range(frames):
        a[f, 12:20, 3 * f:3 * f + 8] = 255
    return a


def read_gif(path):
    with Image.open(path) as im:
        frames, durations = [], []
        for i in range(im.n_frames):
            im.seek(i)
            frames.append(np.asarray(im.convert("RGB")))
            durations.append(im.info.get("duration"))
        return np.stack(frames), durations, im.info.get("loop")


def test_gif_round_trip(tmp_path):
    a = clip()
    out = VI.save_video(a, tmp_path / "clip.gif", fps=8)
    frames, durations, loop = read_gif(out)
    assert np.array_equal(frames, a) and np.array_equal(VI.read_video(out), a)
    assert all(d in (120, 130) for d in durations) and loop == 0
    assert [p.name for p in tmp_path.iterdir()] == ["clip.gif"]  # no temporary file left


def test_pil_frames_and_upper_case_suffix(tmp_path):
    a = clip()
    VI.save_video([Image.fromarray(f) for f in a], tmp_path / "clip.GIF", fps=4)
    frames, durations, _ = read_gif(tmp_path / "clip.GIF")
    assert np.array_equal(frames, a) and set(durations) == {250}


def test_mp4_round_trip(tmp_path):
    pytest.importorskip("imageio_ffmpeg")
    iio = pytest.importorskip("imageio.v2")
    a = clip()
    VI.save_video(a, tmp_path / "clip.mp4", fps=8)
    with iio.get_reader(tmp_path / "clip.mp4", format="FFMPEG") as reader:
        fps = reader.get_meta_data()["fps"]
    back = VI.read_video(tmp_path / "clip.mp4")
    assert back.shape == a.shape and fps == pytest.approx(8)
    assert np.abs(back.astype(int) - a).mean() < 10  # H.264 is lossy; the moving square must still be there
    assert back[-1, 16, 3 * (FRAMES - 1) + 4].min() > 180 and back[0, 16, 28].max() < 120
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


def test_mp4_odd_sides_are_padded_not_resampled(tmp_path):
    pytest.importorskip("imageio_ffmpeg")
    a = clip(side=33)
    back = VI.read_video(VI.save_video(a, tmp_path / "odd.mp4"))
    assert back.shape == (FRAMES, 34, 34, 3)
    assert np.abs(back[:, :33, :33].astype(int) - a).mean() < 10


def test_mp4_without_imageio_ffmpeg_names_the_package_and_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # import imageio_ffmpeg now raises ImportError
    with pytest.raises(ConfigError, match=r"imageio_ffmpeg.*imageio-ffmpeg.*ddit-export\[video\]"):
        VI.save_video(clip(), tmp_path / "clip.mp4")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["clip.avi", "clip", "clip.png"])
def test_other_suffixes_are_refused_with_the_list(tmp_path, name):
    with pytest.raises(ConfigError, match=r"is not a video type this writes; use \.gif or \.mp4"):
        VI.save_video(clip(), tmp_path / name)
    assert not any(tmp_path.iterdir())


def test_bad_fps_and_bad_frames(tmp_path):
    with pytest.raises(ConfigError, match="fps"):
        VI.save_video(clip(), tmp_path / "c.gif", fps=0)
    with pytest.raises(ValueError, match="uint8"):
        VI.save_video(clip().astype(np.float32), tmp_path / "c.gif")
    with pytest.raises(ConfigError, match="at least one frame"):
        VI.save_video([], tmp_path / "c.gif")


def test_a_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "clip.gif"
    VI.save_video(clip(), path)
    before = path.read_bytes()

    def broken(a, fps):
        def write(tmp):
            tmp.write_bytes(b"GIF89a half")
            raise RuntimeError("encoder died")
        return write

    monkeypatch.setattr(VI, "_gif_writer", broken)
    with pytest.raises(RuntimeError, match="encoder died"):
        VI.save_video(clip(3), path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["clip.gif"]


def test_frames_grid_lays_clips_in_rows():
    a, b = clip(3, 4), clip(2, 4)
    a[:] = [[[10, 20, 30]]]
    a[1] = 200
    b[:] = 90
    g = np.asarray(VI.frames_grid([a, b], scale=2, gap=1, background=(255, 0, 0)))
    assert g.shape == (2 * 8 + 1, 3 * 8 + 2, 3)
    assert (g[0:8, 0:8] == [10, 20, 30]).all() and (g[0:8, 9:17] == 200).all()
    assert (g[9:17, 0:8] == 90).all() and (g[9:17, 18:26] == [255, 0, 0]).all()  # row 2 has two frames only
    assert (g[8, :] == [255, 0, 0]).all()  # the gap between rows
    assert VI.frames_grid([clip(4), clip(3)]).size == (4 * SIDE, 2 * SIDE)  # default: no gap
    with pytest.raises(ValueError, match="frame size"):
        VI.frames_grid([clip(2, 4), clip(2, 8)])
