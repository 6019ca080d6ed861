import json

import numpy as np
import pytest

from ddit_export.bundle import FORMAT_VERSION, IMAGE_FORMAT_VERSION, load, read_manifest
from ddit_export.errors import BundleError
from ddit_export.runtime.backends.onnxruntime import OrtBundleBackend
from ddit_export.settings import ScheduleSettings


def edit_manifest(folder, fn):
    p = folder / "manifest.json"
    d = json.loads(p.read_text())
    fn(d)
    p.write_text(json.dumps(d))


def test_manifest_roundtrip(tiny_bundle):
    m = read_manifest(tiny_bundle)
    assert m.format_version == IMAGE_FORMAT_VERSION == 1 and m.dtype == "fp32"  # image bundles stay version 1
    assert m.model["transformer_config"]["in_channels"] == 12 and m.model["height"] == 32
    # every knob but the video-only one, the rule's issue-19 variants and detail carry at their defaults (older
    # readers' form: an image manifest stays as it was before video bundles)
    assert set(m.schedule) == set(ScheduleSettings.__dataclass_fields__) - {"video_std", "tau4", "signal", "hold",
                                                                             "carry"}
    assert m.schedule["policy"] == "ddit"
    old = {k: m.schedule[k] for k in ("tau", "eps", "warmup", "window")}  # a manifest from before policies
    assert ScheduleSettings(**old).policy == "ddit" and ScheduleSettings(**m.schedule).tau == m.schedule["tau"]
    assert {"torch", "onnx", "onnxruntime", "diffusers"} <= set(m.tools)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(format_version=FORMAT_VERSION + 1), "newer than this ddit-export reads"),
    (lambda d: d.update(format_version="x"), "format_version"),
    (lambda d: d.update(format="other"), "field 'format'"),
    (lambda d: d["variants"].append({**d["variants"][0], "size": 8, "file": "transformer_k8.onnx"}),
     "names 'transformer_k8.onnx'"),
    (lambda d: d.pop("variants"), "missing or malformed field 'variants'"),
])
def test_manifest_errors_name_the_field(bundle_copy, edit, message):
    edit_manifest(bundle_copy, edit)
    with pytest.raises(BundleError, match=message):
        load(bundle_copy)


def test_missing_and_damaged_files(bundle_copy, tmp_path):
    with pytest.raises(BundleError, match="bundle folder not found"):
        load(tmp_path / "none")
    with pytest.raises(BundleError, match="manifest.json is missing"):
        load(tmp_path)
    (bundle_copy / "transformer_k2.onnx").write_bytes(b"x")
    with pytest.raises(BundleError, match="hash mismatch: .*transformer_k2.onnx"):
        load(bundle_copy)
    (bundle_copy / "transformer_k2.onnx").unlink()
    with pytest.raises(BundleError, match="bundle file missing: .*transformer_k2.onnx"):
        load(bundle_copy)


def test_truncated_weights_are_reported_even_without_hash_checks(bundle_copy):
    w = bundle_copy / "weights.bin"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(BundleError, match="hash mismatch: .*weights.bin"):
        load(bundle_copy)
    with pytest.raises(BundleError, match="weights.bin is truncated"):
        OrtBundleBackend(bundle_copy, verify=False).activate()


def test_wrong_inputs_at_run_time_name_the_input(tiny_bundle):
    with OrtBundleBackend(tiny_bundle) as be:
        v = be.manifest.variant(2)
        feeds = {s.name: np.zeros([1 if d == "batch" else d for d in s.shape], s.dtype) for s in v.inputs}
        assert be.run_numpy(2, feeds).shape == (1, 256, 12)
        with pytest.raises(BundleError, match="input 'hidden_states': shape \\(1, 64, 12\\)"):
            be.run_numpy(2, {**feeds, "hidden_states": np.zeros((1, 64, 12), np.float32)})
        with pytest.raises(BundleError, match="input 'timestep': dtype float64"):
            be.run_numpy(2, {**feeds, "timestep": np.zeros(1)})
        with pytest.raises(BundleError, match="input 'txt_ids' missing"):
            be.run_numpy(2, {k: a for k, a in feeds.items() if k != "txt_ids"})
        with pytest.raises(BundleError, match="no variant for patch size 8"):
            be.run_numpy(8, feeds)
