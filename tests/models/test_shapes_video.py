import pytest

from ddit_export.errors import ConfigError
from ddit_export.shapes import TokenGeometry, VideoGeometry


def test_wan_2_1_480p_81_frames():
    g = VideoGeometry(81, 480, 832, vae_scale=8, vae_temporal=4, patch=(1, 2, 2), latent_channels=16)
    assert g.is_video and not TokenGeometry(32, 32, 1, 3).is_video
    assert g.latent_frames == 21 and g.latent_shape == (16, 21, 60, 104)
    assert g.grid == (21, 30, 52) and g.tokens(1) == 32760 and g.token_channels == 64
    assert g.available_sizes((1, 2, 4)) == (1, 2)  # 30 rows: 4 does not divide
    assert g.grid_at(2) == (21, 15, 26) and g.tokens(2) == 21 * 15 * 26


def test_pixel_video_grid_and_tokens_per_size():
    g = VideoGeometry(8, 32, 32, vae_scale=1, vae_temporal=1, patch=(2, 4, 4), latent_channels=3)
    assert g.latent_frames == 8 and g.grid == (4, 8, 8) and g.token_channels == 96
    assert [g.tokens(k) for k in (1, 2, 4)] == [256, 64, 16]
    assert g.latent_shape == (3, 8, 32, 32) and g.patch == (2, 4, 4)
    with pytest.raises(ConfigError, match="does not divide the .* token grid of each frame"):
        g.grid_at(16)


@pytest.mark.parametrize("frames, match", [
    (80, r"frames 80 do not fit the VAE.*4n\+1.*77 or 81"),
    (0, "frames must be >= 1"),
])
def test_frames_that_do_not_fit_the_vae(frames, match):
    with pytest.raises(ConfigError, match=match):
        VideoGeometry(frames, 480, 832, 8, 4, (1, 2, 2), 16)


def test_frames_that_do_not_fit_the_temporal_patch():
    with pytest.raises(ConfigError, match="frames 7 do not fit the temporal patch 2"):
        VideoGeometry(7, 32, 32, 1, 1, (2, 4, 4), 3)
    with pytest.raises(ConfigError, match="frames 9 do not fit the temporal patch 2"):
        VideoGeometry(9, 64, 64, 8, 4, (2, 2, 2), 16)  # 3 latent frames


@pytest.mark.parametrize("args, name", [
    ((81, 480, 830, 8, 4, (1, 2, 2), 16), "width 830 must be a positive multiple of 16"),
    ((8, 34, 32, 1, 1, (2, 4, 4), 3), "height 34 must be a positive multiple of 4"),
    ((8, 0, 32, 1, 1, (2, 4, 4), 3), "height 0 must be a positive multiple of 4"),
])
def test_sizes_that_do_not_fit_the_spatial_unit(args, name):
    with pytest.raises(ConfigError, match=name) as e:
        VideoGeometry(*args)
    assert "\n" not in str(e.value)
