"""Issue 9, points 1, 5 and 6: a build never deletes or moves what it did not make, fails in one line on a
read-only folder or a full disk, and leaves no temporary folder behind (SIGTERM now, SIGKILL at the next build)."""
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from ddit_export.bundle import FORMAT, MANIFEST, Manifest
from ddit_export.cli import main
from ddit_export.errors import DDiTError
from ddit_export.export import build as build_mod
from ddit_export.export.build import build_bundle, is_bundle
from ddit_export.fsutil import OutputError
from ddit_export.settings import BuildSettings

ROOT = Path(__file__).resolve().parents[2]


def _build(out, **kw):
    return build_bundle(BuildSettings(model="tiny", sizes=(1,), out=str(out), **kw), progress=False,
                        log=lambda *a: None)


@pytest.fixture
def no_export(monkeypatch):
    """Any export work is a test failure: the output checks must come first."""
    def fail(*a, **k):
        raise AssertionError("export work started")

    monkeypatch.setattr(build_mod, "_build_into", fail)


@pytest.fixture
def fake_export(monkeypatch):
    """A fast 'export': an empty but well-formed manifest, so the replace logic runs for real."""
    def write(folder, *a, **k):
        (folder / "payload").write_text("new")
        return Manifest(model={}, variants=[], schedule={}, dtype="fp32", tensors={})

    monkeypatch.setattr(build_mod, "_write_bundle", write)


def test_a_folder_that_is_not_a_bundle_is_never_touched(tmp_path, no_export):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"precious")
    r = CliRunner().invoke(main, ["build", "--model", "tiny", "--out", str(out)])
    assert r.exit_code == 2 and r.output.startswith("error: ") and len(r.output.strip().splitlines()) == 1
    assert "not a ddit bundle" in r.output
    assert (out / "holiday.jpg").read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]


def test_a_file_at_out_is_neither_replaced_nor_moved(tmp_path, no_export):
    out = tmp_path / "notes.txt"
    out.write_text("mine")
    with pytest.raises(OutputError, match="is not a folder"):
        _build(out)
    assert out.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_out_dot_is_refused_before_any_export(tmp_path, monkeypatch, no_export):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "work.txt").write_text("x")
    for out in (".", str(tmp_path), str(tmp_path.parent)):
        r = CliRunner().invoke(main, ["build", "--model", "tiny", "--out", out])
        assert r.exit_code == 2 and "current folder or one above it" in r.output, r.output
    assert (tmp_path / "work.txt").read_text() == "x"


def test_an_empty_folder_or_an_old_bundle_is_replaced(tmp_path, fake_export):
    empty = tmp_path / "empty"
    empty.mkdir()
    _build(empty)
    assert is_bundle(empty) and (empty / "payload").read_text() == "new"
    (empty / "payload").write_text("old")
    _build(empty)  # a bundle: replaced
    assert (empty / "payload").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_read_only_folder_is_one_line_before_the_export(tmp_path, monkeypatch, no_export):
    # tests run as root, where chmod does not stop writes: the refusal is simulated at the OS call
    def denied(dest):
        raise PermissionError(errno.EACCES, "Permission denied", str(dest.parent))

    monkeypatch.setattr(build_mod, "temp_dir_for", denied)
    r = CliRunner().invoke(main, ["build", "--model", "tiny", "--out", str(tmp_path / "b")])
    assert r.exit_code == 2 and r.output.strip() == f"error: cannot write {tmp_path / 'b'}: permission denied"


def test_full_disk_is_one_line_and_keeps_the_old_bundle(bundle_copy, monkeypatch):
    before = (bundle_copy / "manifest.json").read_text()

    def full(folder, *a, **k):
        (folder / "weights.bin").write_bytes(b"\0" * 10)
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / "weights.bin"))

    monkeypatch.setattr(build_mod, "_write_bundle", full)
    r = CliRunner().invoke(main, ["build", "--model", "tiny", "--sizes", "1", "--out", str(bundle_copy)])
    assert r.exit_code == 2 and "no space left on the device" in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert (bundle_copy / "manifest.json").read_text() == before
    assert sorted(p.name for p in bundle_copy.parent.iterdir()) == ["bundle"]


SLOW_BUILD = textwrap.dedent("""
    import sys, time
    from ddit_export.export import build as b
    from ddit_export.settings import BuildSettings

    def slow(tmp, *a, **k):
        (tmp / "weights.bin").write_bytes(b"\\0" * 1000)
        print("exporting", flush=True)
        time.sleep(120)

    b._build_into = slow
    b.build_bundle(BuildSettings(model="tiny", sizes=(1,), out=sys.argv[1]), progress=False)
""")


def _start_slow_build(out: Path):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.Popen([sys.executable, "-c", SLOW_BUILD, str(out)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    line = p.stdout.readline()
    assert line.strip() == "exporting", p.stderr.read()
    return p


def _temps(out: Path):
    return sorted(out.parent.glob(f".{out.name}.tmp-*"))


def test_sigterm_cleans_up_like_ctrl_c(tmp_path):
    out = tmp_path / "b"
    p = _start_slow_build(out)
    assert len(_temps(out)) == 1
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=60) == 128 + signal.SIGTERM
    assert _temps(out) == [] and not out.exists()


def test_a_later_build_removes_the_temp_folder_of_a_killed_one(tmp_path, monkeypatch):
    out = tmp_path / "b"
    p = _start_slow_build(out)
    p.kill()
    p.wait(timeout=60)
    stale = _temps(out)
    assert len(stale) == 1 and str(p.pid) in stale[0].name  # SIGKILL cannot be caught: the folder stays
    live = _start_slow_build(out)  # a build still running keeps its folder
    try:
        def stop(*a, **k):
            raise DDiTError("stopped here")

        monkeypatch.setattr(build_mod, "_build_into", stop)
        with pytest.raises(DDiTError, match="stopped here"):
            _build(out)
        left = _temps(out)
        assert stale[0] not in left and len(left) == 1 and str(live.pid) in left[0].name
    finally:
        live.kill()
        live.wait(timeout=60)


def test_a_bundle_moved_aside_by_a_killed_build_is_put_back(tmp_path, fake_export):
    out = tmp_path / "b"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    aside = tmp_path / f".b.old-{dead.pid}"
    aside.mkdir()
    (aside / "manifest.json").write_text(json.dumps({"format": FORMAT}))
    from ddit_export.fsutil import remove_stale

    remove_stale(out, is_bundle)
    assert is_bundle(out) and not aside.exists()


def test_training_checkpoints_and_model_folders_keep_the_same_rule(tmp_path):
    from ddit_export.fsutil import replace_dir

    dest, tmp = tmp_path / "ckpt", tmp_path / "new"
    dest.mkdir()
    (dest / "mine.txt").write_text("x")
    tmp.mkdir()
    with pytest.raises(OutputError, match="left untouched"):
        replace_dir(tmp, dest, owned=lambda d: (d / "state.json").is_file())
    assert (dest / "mine.txt").read_text() == "x" and tmp.is_dir()


# ---- issue 20, point 3: build --backend aoti/trt replaces a bundle only by a complete one (ONNX + its other parts)
def _old_bundle(out: Path):
    out.mkdir()
    (out / MANIFEST).write_text(json.dumps({"format": FORMAT}))
    (out / "payload").write_text("old")
    (out / "aoti").mkdir()
    (out / "aoti" / "transformer.pt2").write_bytes(b"old package")
    return out


def _second_step(backend, monkeypatch, step):
    """Run ``step(folder)`` as the step after the ONNX export of ``build --backend BACKEND`` (the AOTInductor
    compile, or TensorRT's split graphs and engines), with the tool checks passed."""
    if backend == "aoti":
        from ddit_export.export import aoti

        monkeypatch.setattr(aoti, "require_compiler", lambda: None)
        monkeypatch.setattr(aoti, "prepare_aoti", lambda folder, *a, **k: step(folder))
        return lambda s: aoti.build_with_aoti(s, log=lambda *a: None)
    from ddit_export.export import trt_build

    monkeypatch.setattr(trt_build, "require_tensorrt", lambda: None)
    monkeypatch.setattr(trt_build, "prepare_tensorrt", lambda folder, *a, **k: step(folder))
    monkeypatch.setattr(trt_build, "build_engines", lambda folder, **k: None)
    return lambda s: trt_build.build_with_tensorrt(s, log=lambda *a: None)


@pytest.mark.parametrize("backend", ["aoti", "trt"])
@pytest.mark.parametrize("stop", [DDiTError("compile failed"), SystemExit(128 + signal.SIGTERM)])
def test_a_failed_second_step_keeps_the_whole_old_bundle(tmp_path, monkeypatch, fake_export, backend, stop):
    out = _old_bundle(tmp_path / "b")
    seen = []

    def fail(folder):
        seen.append((Path(folder), (folder / "payload").read_text(), (out / "payload").read_text()))
        raise stop

    build = _second_step(backend, monkeypatch, fail)
    with pytest.raises(type(stop)):
        build(BuildSettings(model="tiny", sizes=(1,), out=str(out)))
    # the step ran on the new ONNX bundle in the temporary folder, while the old bundle was still whole at out
    assert len(seen) == 1 and seen[0][0] != out and seen[0][1:] == ("new", "old")
    assert (out / "payload").read_text() == "old" and (out / "aoti" / "transformer.pt2").read_bytes() == b"old package"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


@pytest.mark.parametrize("backend", ["aoti", "trt"])
def test_the_second_step_lands_with_the_new_bundle(tmp_path, monkeypatch, fake_export, backend):
    out = _old_bundle(tmp_path / "b")

    def package(folder):
        (folder / "aoti").mkdir()
        (folder / "aoti" / "transformer.pt2").write_bytes(b"new package")

    _second_step(backend, monkeypatch, package)(BuildSettings(model="tiny", sizes=(1,), out=str(out)))
    assert (out / "payload").read_text() == "new" and (out / "aoti" / "transformer.pt2").read_bytes() == b"new package"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


SLOW_AOTI = textwrap.dedent("""
    import sys, time
    from ddit_export.bundle import Manifest
    from ddit_export.export import aoti, build as b
    from ddit_export.settings import BuildSettings

    def export(folder, *a, **k):
        (folder / "payload").write_text("new")
        return Manifest(model={}, variants=[], schedule={}, dtype="fp32", tensors={})

    def slow_compile(folder, *a, **k):
        print("compiling", flush=True)
        time.sleep(120)

    b._write_bundle = export
    aoti.require_compiler = lambda: None
    aoti.prepare_aoti = slow_compile
    aoti.build_with_aoti(BuildSettings(model="tiny", sizes=(1,), out=sys.argv[1]))
""")


def test_sigterm_during_the_aoti_compile_keeps_the_old_package(tmp_path):
    out = _old_bundle(tmp_path / "b")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.Popen([sys.executable, "-c", SLOW_AOTI, str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env)
    try:
        assert p.stdout.readline().strip() == "compiling", p.stderr.read()
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        p.kill()
        p.wait(timeout=60)
    assert (out / "payload").read_text() == "old" and (out / "aoti" / "transformer.pt2").read_bytes() == b"old package"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["b"]
