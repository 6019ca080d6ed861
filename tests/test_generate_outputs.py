"""Issue 20, point 2: generate checks every output (each image of a batch, the trace) before any work, and writes
them together or not at all."""
import errno
import os

import pytest
from PIL import Image

from ddit_export.schedule.trace import Trace
from tests.helpers import invoke, one_line_error


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("out, trace, message", [
    ("img.png", "file.txt/t.json", "file.txt is not a folder"),
    ("file.txt/deeper/img.png", None, "file.txt is not a folder"),
    ("img.png", "img_1.png", "are the same file"),
    ("img.png", "existing_folder", "it is a folder"),
    ("read-only/img.png", "t.json", "permission denied"),
    ("img.png", "read-only/new/t.json", "permission denied"),
])
def test_every_output_is_checked_before_any_work(tmp_path, monkeypatch, no_work, out, trace, message):
    (tmp_path / "file.txt").write_text("mine")
    (tmp_path / "existing_folder").mkdir()
    (tmp_path / "read-only").mkdir()
    real_access = os.access
    # tests run as root, where chmod does not stop writes: the refusal is simulated at the OS call
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(tmp_path / "read-only")
                        else real_access(p, mode))
    before = _files(tmp_path)
    args = ["generate", "--model", "tiny", "--steps", 4, "--prompt", "a red circle", "--prompt", "a blue square",
            "--out", tmp_path / out] + (["--trace", tmp_path / trace] if trace else [])
    one_line_error(invoke(*args), message)
    assert _files(tmp_path) == before


def test_a_missing_folder_that_can_be_made_is_made(tmp_path):
    r = invoke("generate", "--model", "tiny", "--steps", 4, "--out", tmp_path / "a/b/img.png", "--trace",
               tmp_path / "c/t.json")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "a/b/img.png").is_file() and (tmp_path / "c/t.json").is_file()


def test_a_failed_image_of_a_batch_leaves_no_output(tmp_path, monkeypatch):
    old = tmp_path / "x_0.png"
    old.write_bytes(b"an earlier image")
    real_save, calls = Image.Image.save, []

    def second_fails(self, fp, *a, **k):
        calls.append(fp)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, fp, *a, **k)

    monkeypatch.setattr(Image.Image, "save", second_fails)
    r = invoke("generate", "--model", "tiny", "--steps", 4, "--prompt", "a red circle", "--prompt", "a blue square",
               "--prompt", "a red square", "--out", tmp_path / "x.png", "--trace", tmp_path / "t.json")
    one_line_error(r, f"cannot write {tmp_path / 'x_1.png'}: no space left on the device")
    assert len(calls) == 2
    assert _files(tmp_path) == ["x_0.png"] and old.read_bytes() == b"an earlier image"


def test_a_failed_trace_leaves_no_image(tmp_path, monkeypatch):
    def full(self, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Trace, "save", full)
    r = invoke("generate", "--model", "tiny", "--steps", 4, "--prompt", "a red circle", "--prompt", "a blue square",
               "--out", tmp_path / "x.png", "--trace", tmp_path / "t.json")
    one_line_error(r, f"cannot write {tmp_path / 't.json'}: no space left on the device")
    assert _files(tmp_path) == []


def test_a_failed_rename_removes_what_this_call_put_in_place(tmp_path, monkeypatch):
    from ddit_export import fsutil

    real_replace, moved = os.replace, []

    def second_fails(src, dst):
        if moved:
            raise OSError(errno.EACCES, "Permission denied")
        moved.append(dst)
        return real_replace(src, dst)

    monkeypatch.setattr(fsutil.os, "replace", second_fails)
    with pytest.raises(fsutil.OutputError, match="b.txt: permission denied"):
        fsutil.write_files_atomic([(tmp_path / n, lambda tmp: tmp.write_text("x")) for n in ("a.txt", "b.txt")])
    assert moved == [tmp_path / "a.txt"] and _files(tmp_path) == []
