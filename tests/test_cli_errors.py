"""Issue 20, point 6: options that were accepted silently or ended in a traceback are one `error:` line and exit
code 2, before any model loads."""
from pathlib import Path

import pytest
from click.testing import CliRunner

from ddit_export.cli import main
from tests.helpers import one_line_error

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = str(ROOT / "ddit_export" / "calibration" / "prompts-flux-mini.txt")
CALIBRATE = ["calibrate", "--model", "tiny", "--prompts", PROMPTS, "--dry-run"]


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
    # issue 20, point 2 of the remaining items
    (["generate", "--model", "tiny", "--fps", "1000"], "--fps must be an integer in [1, 120], got 1000"),
    (["generate", "--model", "tiny", "--fps", "0"], "--fps must be an integer in [1, 120], got 0"),
    (["generate", "--model", "tiny", "--memory", "fast"], "--memory fast applies to a bundle on ONNX Runtime"),
    (["build", "--model", "tiny", "--device", "cuda", "--out", "b"], "--device cuda"),
    (["bench", "--model", "tiny", "--pareto", "out", "--seeds", "0,0"], "--seeds repeat: 0,0"),
    ([*CALIBRATE, "--policy", "ladder:n4=4", "--sweep", "tau=0.001,0.002"], "--sweep tau: policy ladder ignores tau"),
    ([*CALIBRATE, "--policy", "ddit", "--sweep", "n4=2,4"], "--sweep n4: policy ddit ignores n4"),
    ([*CALIBRATE, "--policy", "fine", "--sweep", "tail=2"], "--sweep tail: policy fine ignores tail"),
    ([*CALIBRATE, "--sweep", "n4=1", "--oracle", "0"], "--oracle is a FLOP budget in (0, 1], got 0"),
    ([*CALIBRATE, "--sweep", "n4=1", "--oracle", "1.5"], "--oracle is a FLOP budget in (0, 1], got 1.5"),
    (["generate", "--model", "tiny", "--prompt", " ".join(["red"] * 1_000_000)],
     "prompt has 3999999 characters; at most 20000"),
    # click's own usage errors, reworded through the CLI's handler
    (["generate", "--seed", "x"], "error: invalid value for '--seed': 'x' is not a valid integer"),
    (["generate", "--cache", "bogus"], "error: invalid value for '--cache': 'bogus' is not one of 'off', 'taylor'"),
    (["generate", "--cache-interval", "1.5"], "error: invalid value for '--cache-interval'"),
    (["build", "--dtype", "fp8"], "error: invalid value for '--dtype': 'fp8' is not one of"),
    (["generate", "--bogus"], "error: no such option '--bogus'"),
    (["bogus"], "error: no such command 'bogus'"),
    (["schedule"], "error: missing argument 'TRACE'"),
])
def test_bad_option_is_one_line_before_any_work(args, message, tmp_path, monkeypatch, no_work):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    one_line_error(CliRunner().invoke(main, args), message)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # nothing written


def test_valid_values_still_pass_the_checks():
    from ddit_export.client import Client
    from ddit_export.settings import CalibrateSettings

    assert Client("https://example.org:8443/").url == "https://example.org:8443"
    s = CalibrateSettings(prompts=PROMPTS, sweep=("tau", ("0.001", "2")), min_psnr=-5.0, steps=1)
    assert s.steps == 1


def test_build_device_without_the_aoti_backend_is_refused(monkeypatch, tmp_path):
    """--device cuda on a machine with a GPU: the ONNX export runs on the CPU anyway, so it is refused too."""
    from ddit_export import api

    monkeypatch.setattr(api, "check_device", lambda device: None)  # as if this machine had the device
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["build", "--model", "tiny", "--device", "cuda", "--out", "b"])
    assert r.exit_code == 2 and "--device cuda applies to --backend aoti" in r.output, r.output
    assert not (tmp_path / "b").exists()


def test_wan_frames_beyond_the_models_position_table_is_one_line(tmp_path):
    r = CliRunner().invoke(main, ["generate", "--model", "wan-mini", "--frames", "1000", "--steps", "2",
                                  "--schedule", "1,1", "--out", str(tmp_path / "v.gif")])
    assert r.exit_code == 2, r.output
    assert r.output.strip().splitlines()[-1] == ("error: frames 1000 make 500 token frames; wan-mini supports at most "
                                                 "64 (rope_max_seq_len): at most 128 frames")
    assert not (tmp_path / "v.gif").exists()


def test_calibrate_oracle_budget_no_ladder_spends_fails_before_the_sweep(monkeypatch, tmp_path):
    from ddit_export.quality import calibrate

    def fail(*a, **k):
        raise AssertionError("the sweep started")

    monkeypatch.setattr(calibrate, "run_sweep", fail)
    r = CliRunner().invoke(main, [*CALIBRATE, "--sweep", "n4=1", "--oracle", "0.01", "--work", str(tmp_path / "w")])
    assert r.exit_code == 2 and "--oracle 0.01: no ladder schedule" in r.output, r.output


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
    # from a checkout the profile records the file as a path of the checkout, not of this machine
    monkeypatch.chdir(ROOT)
    CliRunner().invoke(main, ["calibrate", "--model", "tiny", "--sweep", "n4=1", "--dry-run"])
    assert seen["prompts"] == "ddit_export/calibration/prompts-flux-mini.txt"
