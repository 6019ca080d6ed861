"""Issue 20, point 6: options that were accepted silently or ended in a traceback are one `error:` line and exit
code 2, before any model loads."""
from pathlib import Path

import pytest
from click.testing import CliRunner

from ddit_export.cli import main
from ddit_export.models import registry
from ddit_export.runtime import bundle_model

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = str(ROOT / "ddit_export" / "calibration" / "prompts-flux-mini.txt")
CALIBRATE = ["calibrate", "--model", "tiny", "--prompts", PROMPTS, "--dry-run"]


@pytest.fixture
def no_work(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("work started")

    monkeypatch.setattr(registry, "load_model", fail)
    monkeypatch.setattr(bundle_model, "open_bundle", fail)


@pytest.mark.parametrize("args, message", [
    (["generate", "--model", "tiny", "--threads", "0"], "--threads must be >= 1, got 0"),
    (["generate", "--bundle", "b", "--threads", "-1"], "--threads must be >= 1, got -1"),
    (["evaluate", "--model", "tiny", "--threads", "0"], "--threads must be >= 1, got 0"),
    (["bench", "--model", "tiny", "--threads", "-1"], "--threads must be >= 1, got -1"),
    (["bench", "--model", "tiny", "--pareto", "out", "--threads", "0"], "--threads must be >= 1, got 0"),
    ([*CALIBRATE, "--sweep", "n4=1", "--threads", "0"], "--threads must be >= 1, got 0"),
    (["serve", "missing-bundle", "--threads", "0"], "--threads must be >= 1, got 0"),
    (["serve", "missing-bundle", "--port", "99999"], "--port must be in [1, 65535], got 99999"),
    (["serve", "missing-bundle", "--port", "-1"], "--port must be in [1, 65535], got -1"),
    (["serve", "missing-bundle", "--port", "0"], "--port must be in [1, 65535], got 0"),
    ([*CALIBRATE, "--sweep", "n4=abc"], "--sweep n4: 'abc' is not an int"),
    ([*CALIBRATE, "--sweep", "tau=0.002,x"], "--sweep tau: 'x' is not a float"),
    ([*CALIBRATE, "--sweep", "n4=1", "--min-psnr", "nan"], "min PSNR must be a finite number of dB, got nan"),
    ([*CALIBRATE, "--sweep", "n4=1", "--min-psnr", "inf"], "min PSNR must be a finite number of dB, got inf"),
    ([*CALIBRATE, "--sweep", "n4=1", "--max-quality-drop", "nan"], "max quality drop must be >= 0 and finite"),
    ([*CALIBRATE, "--sweep", "n4=1", "--steps", "0"], "steps must be >= 1, got 0"),
    ([*CALIBRATE, "--sweep", "n4=1", "--work", "notes.txt"], "cannot write notes.txt/sweep.json: notes.txt is not a "
                                                              "folder"),
    (["bench", "--model", "tiny", "--pareto", "notes.txt"], "cannot write notes.txt/pareto.json: notes.txt is not a "
                                                             "folder"),
    (["request", "--url", "notaurl"], "--url 'notaurl' is not an http(s) URL"),
    (["request", "--url", "ftp://host/x"], "--url 'ftp://host/x' is not an http(s) URL"),
])
def test_bad_option_is_one_line_before_any_work(args, message, tmp_path, monkeypatch, no_work):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error: ") and len(r.output.strip().splitlines()) == 1 and message in r.output, \
        r.output
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # nothing written


def test_valid_values_still_pass_the_checks():
    from ddit_export.client import Client
    from ddit_export.settings import CalibrateSettings

    assert Client("https://example.org:8443/").url == "https://example.org:8443"
    s = CalibrateSettings(prompts=PROMPTS, sweep=("tau", ("0.001", "2")), min_psnr=-5.0, steps=1)
    assert s.steps == 1


def test_calibrate_default_prompts_are_package_data(monkeypatch, tmp_path):
    """Without --prompts, calibrate reads the captions shipped in the package, from any working directory; the file
    is in pyproject's package-data, so a wheel has it too."""
    import fnmatch
    import tomllib

    from ddit_export.quality import calibrate
    from ddit_export.quality.policies import default_prompts_path, read_prompts

    seen = {}

    def stop(settings, *a, **k):
        seen["prompts"] = settings.prompts
        raise AssertionError("stop here")

    monkeypatch.setattr(calibrate, "calibrate", stop)
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["calibrate", "--model", "tiny", "--sweep", "n4=1", "--dry-run"])
    assert isinstance(r.exception, AssertionError) and seen["prompts"] == str(default_prompts_path()), r.output
    assert len(read_prompts(seen["prompts"])) == 24
    pkg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["ddit_export"]
    rel = default_prompts_path().relative_to(ROOT / "ddit_export").as_posix()
    assert any(fnmatch.fnmatch(rel, pattern) for pattern in pkg)
