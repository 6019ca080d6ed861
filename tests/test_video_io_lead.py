import numpy as np
import pytest

from ddit_export.errors import ConfigError
from ddit_export.video_io import frames_grid, read_video, save_video


def _frames(n=6, side=32):
    x = np.zeros((n, side, side, 3), np.uint8)
    for i in range(n):
        x[i, 8:16, 4 * i:4 * i + 8] = (230, 30, 30)
    return x


def test_gif_round_trip_keeps_every_frame(tmp_path):
    f = _frames()
    path = save_video(f, tmp_path / "a.gif", fps=4)
    back = read_video(path)
    assert back.shape == f.shape
    assert np.abs(back.astype(int) - f.astype(int)).max() <= 8  # GIF palette quantisation
    assert not list(tmp_path.glob(".*tmp*"))


def test_mp4_writes_every_frame(tmp_path):
    pytest.importorskip("imageio_ffmpeg")
    f = _frames(side=33)  # odd sides are padded for H.264's yuv420p
    back = read_video(save_video(f, tmp_path / "a.mp4", fps=8))
    assert back.shape[0] == len(f) and back.shape[1:3] == (34, 34)
    assert np.abs(back[:, :33, :33].astype(int) - f.astype(int)).mean() < 10  # lossy codec


def test_bad_suffix_and_fps_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=".gif or .mp4"):
        save_video(_frames(), tmp_path / "a.png")
    with pytest.raises(ConfigError, match="fps"):
        save_video(_frames(), tmp_path / "a.gif", fps=0)
    with pytest.raises(ConfigError, match="at least one frame"):
        save_video([], tmp_path / "a.gif")


def test_frames_grid_is_one_row_per_clip():
    g = frames_grid([_frames(4), _frames(3)])
    assert g.size == (4 * 32, 2 * 32)
