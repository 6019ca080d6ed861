import pytest

from ddit_export.errors import ConfigError
from ddit_export.settings import AdapterSettings, GenerateSettings, ScheduleSettings, check_sizes
from ddit_export.shapes import TokenGeometry


@pytest.mark.parametrize("kw", [dict(tau=0), dict(tau=-1), dict(eps=0), dict(eps=1), dict(eps=1.5), dict(warmup=2)])
def test_schedule_settings_reject_bad_values(kw):
    with pytest.raises(ConfigError):
        ScheduleSettings(**kw)


def test_sizes_must_contain_fine_and_be_powers_of_two():
    assert check_sizes((4, 1, 2)) == (1, 2, 4)
    for bad in [(2, 4), (1, 3), (1, 1, 2), ()]:
        with pytest.raises(ConfigError):
            check_sizes(bad)


def test_generate_settings_checks_schedule_length_and_warmup():
    with pytest.raises(ConfigError, match="warmup"):
        GenerateSettings(steps=3)
    GenerateSettings(steps=4)
    with pytest.raises(ConfigError, match="2 sizes for 5 steps"):
        GenerateSettings(steps=5, static=(1, 2))
    GenerateSettings(steps=2, static=(2, 1))  # a static schedule needs no warm-up
    with pytest.raises(ConfigError):
        AdapterSettings(init="bogus")


def test_geometry_tokens_per_size():
    g = TokenGeometry(1024, 1024, 8, 16)  # FLUX.1-dev at 1024^2
    assert g.grid == (64, 64) and g.token_channels == 64
    assert [g.tokens(k) for k in (1, 2, 4)] == [4096, 1024, 256]
    assert TokenGeometry(48, 40, 1, 3).available_sizes((1, 2, 4, 8)) == (1, 2, 4)  # 24 x 20 grid
    assert TokenGeometry(36, 36, 1, 3).available_sizes((1, 2, 4)) == (1, 2)  # 18 x 18
    assert TokenGeometry(34, 34, 1, 3).available_sizes((1, 2, 4)) == (1,)  # 17 x 17
    with pytest.raises(ConfigError, match="multiple of 16"):
        TokenGeometry(1000, 1024, 8, 16)
    with pytest.raises(ConfigError):
        TokenGeometry(34, 34, 1, 3).tokens(2)
