"""Issue 20, point 4: absurd sizes and step counts are refused up front, with one line, on every path (PyTorch,
bundle, Python API, build), instead of overflowing the scheduler's shift and running for minutes."""
import pytest
from click.testing import CliRunner

from ddit_export.cli import main
from ddit_export.errors import ConfigError
from ddit_export.runtime import generate as generate_mod
from ddit_export.settings import MAX_SIDE, MAX_STEPS, BuildSettings, GenerateSettings
from ddit_export.shapes import MAX_TOKENS, TokenGeometry
from tests.helpers import one_line_error


@pytest.mark.parametrize("args, message", [
    (["--height", "100000"], f"height must be <= {MAX_SIDE} pixels, got 100000"),
    (["--width", str(MAX_SIDE + 2)], f"width must be <= {MAX_SIDE} pixels"),
    (["--steps", "1000000"], f"steps must be <= {MAX_STEPS}, got 1000000"),
    (["--steps", str(MAX_STEPS + 1), "--schedule", ",".join(["1"] * (MAX_STEPS + 1))], f"steps must be <= {MAX_STEPS}"),
    (["--model", "tiny-wan", "--frames", "100001"], "frames must be <= 1025, got 100001"),
])
@pytest.mark.parametrize("path", ["torch", "bundle"])
def test_absurd_sizes_and_steps_are_refused_before_any_work(args, message, path, tmp_path, no_work):
    video = "tiny-wan" in args
    if path == "bundle":
        if video:
            pytest.skip("the bundle path of a video model is the same check")
        args = ["--bundle", str(tmp_path / "any-bundle"), *args]
    elif not video:
        args = ["--model", "tiny", *args]
    out = tmp_path / ("o.gif" if video else "o.png")
    one_line_error(CliRunner().invoke(main, ["generate", *args, "--out", str(out)]), message)


def test_too_many_tokens_are_refused_before_generating(tmp_path, monkeypatch):
    def fail(*a, **k):
        raise AssertionError("generation started")

    monkeypatch.setattr(generate_mod, "generate", fail)
    # tiny is a pixel model: 2048x2048 px is 1024x1024 fine tokens
    r = CliRunner().invoke(main, ["generate", "--model", "tiny", "--height", "2048", "--width", "2048", "--out",
                                  str(tmp_path / "o.png")])
    one_line_error(r, f"2048x2048 makes {1024 * 1024} fine tokens, more than the {MAX_TOKENS}")


def test_the_bounds_hold_in_the_python_api():
    with pytest.raises(ConfigError, match="steps must be <= 1000"):
        GenerateSettings(steps=MAX_STEPS + 1)
    with pytest.raises(ConfigError, match="height must be <= 8192"):
        GenerateSettings(height=MAX_SIDE + 16)
    with pytest.raises(ConfigError, match="width must be <= 8192"):
        BuildSettings(width=10**6)
    with pytest.raises(ConfigError, match="fine tokens"):
        TokenGeometry(8192, 8192, 1, 3)
    assert GenerateSettings(steps=MAX_STEPS, height=MAX_SIDE).steps == MAX_STEPS  # the bounds themselves are fine
    assert TokenGeometry(2048, 2048, 8, 16).tokens() == 16384  # FLUX.1 at 2048x2048
