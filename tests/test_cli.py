import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ddit_export.cli import main

ROOT = Path(__file__).resolve().parent.parent


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_every_command_has_help():
    r = invoke("--help")
    assert r.exit_code == 0
    commands = [line.split()[0] for line in r.output.split("Commands:")[1].strip().splitlines()]
    assert {"generate", "schedule"} <= set(commands)
    for c in commands:
        assert invoke(c, "--help").exit_code == 0, c


def test_console_script_and_shim():
    for cmd in (["ddit-export", "--help"], [sys.executable, str(ROOT / "cli.py"), "--help"]):
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        assert r.returncode == 0 and "generate" in r.stdout, r.stderr


def test_generate_tiny_writes_image_and_trace_with_changing_sizes(tmp_path):
    out, trace = tmp_path / "img.png", tmp_path / "trace.json"
    r = invoke("generate", "--model", "tiny", "--steps", 12, "--out", out, "--trace", trace, "--prompt", "a red circle")
    assert r.exit_code == 0, r.output
    assert out.read_bytes()[:4] == b"\x89PNG"
    d = json.loads(trace.read_text())
    sizes = [s["size"] for s in d["steps"]]
    assert len(sizes) == 12 and len(set(sizes)) > 1
    assert f"sizes per step: {','.join(map(str, sizes))}" in r.output
    r2 = invoke("schedule", trace)
    assert r2.exit_code == 0 and "coarse steps" in r2.output
    assert trace.with_name("trace.schedule.png").read_bytes()[:4] == b"\x89PNG"


def test_schedule_after_the_readme_commands_keeps_the_image(tmp_path, monkeypatch):
    """Issue 20: README's `generate --out out/flux-mini.png --trace out/flux-mini.json`, then `schedule
    out/flux-mini.json`, wrote the plot over the image. The plot goes to TRACE.schedule.png; nothing existing is
    replaced without --overwrite."""
    monkeypatch.chdir(tmp_path)
    r = invoke("generate", "--model", "tiny", "--steps", 6, "--out", "out/flux-mini.png", "--trace",
               "out/flux-mini.json")
    assert r.exit_code == 0, r.output
    image = (tmp_path / "out/flux-mini.png").read_bytes()
    r = invoke("schedule", "out/flux-mini.json")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "out/flux-mini.png").read_bytes() == image
    plot = tmp_path / "out/flux-mini.schedule.png"
    assert plot.read_bytes()[:4] == b"\x89PNG" and "wrote out/flux-mini.schedule.png" in r.output
    # a second run refuses to replace the plot, and --plot onto the image is refused too
    plot.write_bytes(b"earlier plot")
    for args in ([], ["--plot", "out/flux-mini.png"]):
        r = CliRunner().invoke(main, ["schedule", "out/flux-mini.json", *args])
        assert r.exit_code == 2 and r.output.startswith("error: ") and "--overwrite" in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1
    assert plot.read_bytes() == b"earlier plot" and (tmp_path / "out/flux-mini.png").read_bytes() == image
    r = invoke("schedule", "out/flux-mini.json", "--overwrite")
    assert r.exit_code == 0 and plot.read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["flux-mini.json", "flux-mini.png",
                                                                    "flux-mini.schedule.png"]


def test_schedule_plot_into_a_missing_folder_is_one_line(tmp_path):
    trace = tmp_path / "t.json"
    assert invoke("generate", "--model", "tiny", "--steps", 6, "--out", tmp_path / "i.png", "--trace",
                  trace).exit_code == 0
    for plot in (tmp_path / "missing" / "p.png", tmp_path / "t.json" / "p.png", tmp_path):
        r = CliRunner().invoke(main, ["schedule", str(trace), "--plot", str(plot)])
        assert r.exit_code == 2 and r.output.startswith("error: cannot write"), r.output
        assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "missing").exists()


def test_generate_batch_and_static_schedule(tmp_path):
    r = invoke("generate", "--model", "tiny", "--steps", 4, "--schedule", "4,2,1,1", "--prompt", "a red circle",
               "--prompt", "a blue square", "--out", tmp_path / "x.png")
    assert r.exit_code == 0, r.output
    assert "sizes per step: 4,2,1,1" in r.output
    assert (tmp_path / "x_0.png").is_file() and (tmp_path / "x_1.png").is_file()
    r = invoke("generate", "--model", "tiny", "--steps", 6, "--coarse-first", "2:4", "--out", tmp_path / "y.png")
    assert "sizes per step: 4,4,1,1,1,1" in r.output


def test_generate_flux_from_a_local_folder(flux_dir, tmp_path):
    r = invoke("generate", "--model", "flux", "--weights", flux_dir, "--height", 64, "--width", 64, "--steps", 5,
               "--prompt", "a red cat", "--out", tmp_path / "f.png", "--tau", 10)
    assert r.exit_code == 0, r.output
    assert "sizes per step: 1,1,1,4,4" in r.output


@pytest.mark.parametrize("args, message", [
    (["--model", "nope"], "unknown model 'nope'"),
    (["--model", "flux"], "needs --weights"),
    (["--model", "flux", "--weights", "/nonexistent"], "weights folder not found"),
    (["--model", "tiny", "--tau", "0"], "tau must be > 0"),
    (["--model", "tiny", "--eps", "1.5"], "eps must be in (0, 1)"),
    (["--model", "tiny", "--warmup", "2"], "warmup must be >= 3"),
    (["--model", "tiny", "--steps", "3"], "at least warmup + 1"),
    (["--model", "tiny", "--height", "31"], "height 31 must be a positive multiple of 2"),
    (["--model", "tiny", "--steps", "4", "--schedule", "1,2"], "2 sizes for 4 steps"),
    (["--model", "tiny", "--steps", "2", "--schedule", "1,8"], "not available"),
    (["--model", "tiny", "--schedule", "1,x"], "comma-separated integers"),
    (["--model", "tiny", "--prompt", "a purple zebra"], "zebra"),
    (["--model", "tiny", "--sizes", "2,4"], "must include the fine size 1"),
])
def test_bad_input_is_one_line_and_exit_code_2(args, message, tmp_path):
    r = CliRunner().invoke(main, ["generate", *args, "--out", str(tmp_path / "o.png")])
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1


def test_schedule_of_a_missing_trace(tmp_path):
    r = CliRunner().invoke(main, ["schedule", str(tmp_path / "none.json")])
    assert r.exit_code == 2 and "cannot read trace" in r.output


def test_same_size_window_option_reaches_the_policy(tmp_path):
    trace = tmp_path / "t.json"
    r = invoke("generate", "--model", "tiny", "--steps", 10, "--window", "same-size", "--tau", "0.02", "--out",
               tmp_path / "w.png", "--trace", trace)
    assert r.exit_code == 0, r.output
    d = json.loads(trace.read_text())
    assert d["settings"]["generate"]["schedule"]["window"] == "same-size"
    reasons = [s["reason"] for s in d["steps"]]
    assert reasons[:3] == ["warmup"] * 3 and "hold" in reasons
