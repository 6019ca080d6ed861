"""Training prompts: the prompts file reader and the scene captions."""
import pytest

from ddit_export.adapt import read_prompts, scene_prompts
from ddit_export.errors import ConfigError


def test_read_prompts_skips_comments_and_blank_lines(tmp_path):
    p = tmp_path / "p.txt"
    p.write_text("# header\n a red circle \n\n# another\na blue square\n")
    assert read_prompts(p) == ["a red circle", "a blue square"]
    p.write_text("# only a comment\n\n")
    with pytest.raises(ConfigError, match="no prompts"):
        read_prompts(p)
    with pytest.raises(ConfigError, match="not found"):
        read_prompts(tmp_path / "missing.txt")


def test_scene_prompts_are_seeded_and_bounded():
    a, b = scene_prompts(20, seed=3, max_words=12), scene_prompts(20, seed=3, max_words=12)
    assert a == b and len(a) == 20
    assert all(len(c.split()) <= 12 for c in a)
    assert scene_prompts(20, seed=4, max_words=12) != a
