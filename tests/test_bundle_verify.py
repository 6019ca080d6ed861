"""Issue 9, point 5, bundle side: every file the runtime reads is hashed (or the load is refused), the shared-weight
tables are required, dtypes are known, and trt-check answers a non-bundle path in one line."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from ddit_export.bundle import load, read_manifest
from ddit_export.cli import main
from ddit_export.errors import BundleError
from ddit_export.runtime.bundle_model import open_bundle


def edit_manifest(folder, fn):
    p = folder / "manifest.json"
    d = json.loads(p.read_text())
    fn(d)
    p.write_text(json.dumps(d))


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["files"].pop("weights.bin"), "no sha256 for weights.bin"),
    (lambda d: d["files"].pop("text_encoder.onnx"), "no sha256 for text_encoder.onnx"),
    (lambda d: d.pop("tensors"), "missing or malformed field 'tensors'"),
    (lambda d: d["tensors"].pop("transformer_k2.onnx"), "no table for transformer_k2.onnx"),
    (lambda d: d.update(dtype="fp8"), "field 'dtype' is 'fp8'"),
    (lambda d: d["variants"][0]["inputs"][0].update(dtype="float128"), "has dtype 'float128'"),
    (lambda d: d["tensors"]["transformer_k1.onnx"][0].__setitem__(3, "complex7"), "has dtype 'complex7'"),
])
def test_a_manifest_that_could_not_be_checked_is_refused(bundle_copy, tmp_path, edit, message):
    edit_manifest(bundle_copy, edit)
    with pytest.raises(BundleError, match=message):
        read_manifest(bundle_copy)
    r = CliRunner().invoke(main, ["generate", "--bundle", str(bundle_copy), "--out", str(tmp_path / "a.png")])
    assert r.exit_code == 2 and r.output.startswith("error: ") and message.split("'")[0] in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "a.png").exists()


def test_corrupt_unlisted_weights_can_no_longer_give_a_nan_image(bundle_copy):
    edit_manifest(bundle_copy, lambda d: d["files"].pop("weights.bin"))
    raw = np.fromfile(bundle_copy / "weights.bin", np.uint8)
    raw[:4096] = 0xFF  # NaN float32s
    raw.tofile(bundle_copy / "weights.bin")
    with pytest.raises(BundleError, match="weights.bin"):
        open_bundle(bundle_copy)


def test_an_intact_bundle_still_loads(tiny_bundle):
    assert load(tiny_bundle).sizes == (1, 2, 4)


@pytest.mark.parametrize("make", ["missing", "empty", "plain"])
def test_trt_check_on_a_non_bundle_is_one_line(tmp_path, make):
    path = tmp_path / "x"
    if make != "missing":
        path.mkdir()
    if make == "plain":
        (path / "notes.txt").write_text("hello")
    r = CliRunner().invoke(main, ["trt-check", str(path)])
    assert r.exit_code == 2 and r.output.startswith("error: ") and len(r.output.strip().splitlines()) == 1, r.output
