"""The Python AOTInductor backend (generate --backend aoti) and the manifest's aoti section."""
import json
import shutil

import numpy as np
import pytest

pytestmark = pytest.mark.cpp


def test_constants_shared_once_across_sizes(aoti_bundle):
    from ddit_export.runtime.backends.aoti import AotiBackend, constant_views, map_weights

    backend = AotiBackend(aoti_bundle)
    sec, cache = backend.section, {}
    weights = map_weights(aoti_bundle / "weights.bin")
    views = {v["size"]: constant_views(v, weights, "cpu", cache) for v in sec["variants"]}
    common = set(views[1]) & set(views[2]) & set(views[4])
    assert len(common) > 10
    for name in common:  # the trunk's tensors: one memory, every size
        assert views[1][name].data_ptr() == views[2][name].data_ptr() == views[4][name].data_ptr()
    base = weights.data_ptr()
    assert all(base <= t.data_ptr() < base + weights.numel() for t in cache.values())  # views of the mapping


def test_word_encoder_compiled_into_the_package(aoti_bundle):
    """The pixel model's word encoder is model ``text_encoder`` of the same package, its constants in weights.bin
    (past the ONNX graphs' bytes only where new); open_bundle(aoti) encodes with it, close to ONNX Runtime."""
    from ddit_export.runtime.backends.aoti import AotiTextEncoder, constant_views, map_weights
    from ddit_export.runtime.bundle_model import open_bundle

    d = json.loads((aoti_bundle / "manifest.json").read_text())
    entry = d["aoti"]["text_encoder"]
    assert entry["model"] == "text_encoder" and entry["parity_max_abs"] <= 1e-4
    weights = map_weights(aoti_bundle / "weights.bin")
    views = constant_views(entry, weights, "cpu", {})
    assert len(views) == len(entry["constants"]) > 5
    onnx_offsets = {row[1] for row in d["tensors"]["text_encoder.onnx"]}  # [name, offset, length, dtype, dims]
    assert any(row[1] in onnx_offsets for row in entry["constants"])  # deduplicated against the ONNX tensors
    aoti, _ = open_bundle(aoti_bundle, backend="aoti")
    ort, _ = open_bundle(aoti_bundle)
    assert isinstance(aoti.backend, AotiTextEncoder)
    prompts = ["a large red circle at the center", "a small blue square at the left"]
    a, b = aoti.encode(prompts), ort.encode(prompts)
    np.testing.assert_allclose(a.states.numpy(), b.states.numpy(), atol=1e-5)
    np.testing.assert_allclose(a.pooled.numpy(), b.pooled.numpy(), atol=1e-5)


def test_generate_aoti_same_trace_as_onnxruntime(aoti_bundle, tmp_path):
    from ddit_export.api import generate_images

    runs = {b: generate_images(bundle=str(aoti_bundle), backend=b, steps=10, out=None)[0]
            for b in ("onnxruntime", "aoti")}
    assert runs["aoti"].trace.sizes == runs["onnxruntime"].trace.sizes
    np.testing.assert_allclose(runs["aoti"].latents.numpy(), runs["onnxruntime"].latents.numpy(), atol=1e-4)


def test_aoti_section_version_checked_only_by_its_readers(aoti_bundle, tiny_bundle, tmp_path):
    from ddit_export import bundle as bundle_mod
    from ddit_export.errors import BundleError
    from ddit_export.runtime.backends.aoti import AotiBackend
    from ddit_export.runtime.backends.onnxruntime import OrtBundleBackend

    newer = shutil.copytree(aoti_bundle, tmp_path / "newer")
    d = json.loads((newer / "manifest.json").read_text())
    d["aoti"]["aoti_version"] = bundle_mod.AOTI_VERSION + 1
    (newer / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(BundleError, match="AOTInductor section version .* is newer"):
        AotiBackend(newer)
    OrtBundleBackend(newer).activate()  # an ONNX Runtime reader does not care
    with pytest.raises(BundleError, match="build --backend aoti"):
        AotiBackend(tiny_bundle)
    m = bundle_mod.read_manifest(aoti_bundle)
    assert json.loads(m.to_json())["aoti"] == m.aoti  # the section survives a manifest rewrite
