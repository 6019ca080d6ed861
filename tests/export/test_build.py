import json
import shutil

import numpy as np
import onnx
import pytest

from ddit_export.bundle import WEIGHTS, load
from ddit_export.errors import ConfigError, DDiTError
from ddit_export.export import build as build_mod
from ddit_export.export.build import build_bundle
from ddit_export.settings import BuildSettings


def graphs(folder):
    return {p.name: onnx.load(str(p), load_external_data=False) for p in sorted(folder.glob("*.onnx"))}


def test_bundle_layout_and_parity(tiny_bundle):
    m = load(tiny_bundle)
    assert m.sizes == (1, 2, 4)
    assert [v.tokens for v in m.variants] == [256, 64, 16]
    assert all(v.parity_max_abs is not None and v.parity_max_abs <= 1e-4 for v in m.variants)
    assert set(m.files) == {WEIGHTS, "transformer_k1.onnx", "transformer_k2.onnx", "transformer_k4.onnx",
                            "text_encoder.onnx"}
    assert m.text_encoder["vocab"][:3] == ["a", "an", "and"]
    for v in m.variants:  # one contract: same inputs and outputs at every size
        assert v.inputs == m.variants[0].inputs and v.outputs == m.variants[0].outputs
    assert not list(tiny_bundle.parent.glob(".tiny.tmp-*"))


def test_graphs_are_checked_float32_and_stripped(tiny_bundle):
    for name, g in graphs(tiny_bundle).items():
        onnx.checker.check_model(str(tiny_bundle / name))
        types = {t.data_type for t in g.graph.initializer}
        types |= {a.i for n in g.graph.node if n.op_type == "Cast" for a in n.attribute if a.name == "to"}
        types |= {vi.type.tensor_type.elem_type for vi in list(g.graph.input) + list(g.graph.output)}
        assert onnx.TensorProto.DOUBLE not in types, name
        assert not any(n.metadata_props for n in g.graph.node), name


def test_every_large_weight_is_stored_once_and_shared_by_all_variants(tiny_bundle):
    m = load(tiny_bundle)
    tables = {f: {t[0]: t[1] for t in rows} for f, rows in m.tensors.items()}
    trunk = [n for n in tables["transformer_k1.onnx"] if ".trunk." in n]
    assert trunk
    for name in trunk:  # the same trunk tensor sits at the same offset for every size
        assert tables["transformer_k2.onnx"][name] == tables["transformer_k1.onnx"][name]
        assert tables["transformer_k4.onnx"][name] == tables["transformer_k1.onnx"][name]
    unique = {(t[1], t[2]) for rows in m.tensors.values() for t in rows}
    payload = sum(length for _, length in unique)
    size = (tiny_bundle / WEIGHTS).stat().st_size
    assert payload <= size <= payload + 64 * len(unique)  # only alignment padding besides the unique tensors
    for g in graphs(tiny_bundle).values():
        locations = {e.value for t in g.graph.initializer for e in t.external_data if e.key == "location"}
        assert locations <= {WEIGHTS}


def test_failed_build_leaves_the_existing_bundle_untouched(bundle_copy, monkeypatch):
    before = (bundle_copy / "manifest.json").read_text()

    def boom(*a, **k):
        raise KeyboardInterrupt  # an interruption half-way through the exports

    monkeypatch.setattr("ddit_export.export.onnx.export_text_encoder", boom)
    with pytest.raises(KeyboardInterrupt):
        build_bundle(BuildSettings(model="tiny", sizes=(1,), out=str(bundle_copy)), progress=False,
                     log=lambda *a: None)
    assert (bundle_copy / "manifest.json").read_text() == before
    assert load(bundle_copy).sizes == (1, 2, 4)
    assert not [p for p in bundle_copy.parent.iterdir() if p.name.startswith(".bundle")]


def test_rebuild_replaces_a_bundle_only_when_complete(bundle_copy):
    build_bundle(BuildSettings(model="tiny", sizes=(1, 2), out=str(bundle_copy)), progress=False,
                 log=lambda *a: None)
    assert load(bundle_copy).sizes == (1, 2)
    assert not (bundle_copy / "transformer_k4.onnx").exists()


def test_parity_failure_writes_no_bundle(tmp_path, monkeypatch):
    monkeypatch.setattr("ddit_export.export.parity.variant_parity", lambda *a, **k: 1.0)
    with pytest.raises(DDiTError, match="differs from torch by 1"):
        build_bundle(BuildSettings(model="tiny", sizes=(1,), out=str(tmp_path / "b")), progress=False)
    assert not (tmp_path / "b").exists() and not list(tmp_path.iterdir())


def test_bad_build_settings():
    with pytest.raises(ConfigError, match="dtype"):
        BuildSettings(dtype="fp8")
    with pytest.raises(ConfigError, match="do not divide"):
        build_bundle(BuildSettings(model="tiny", sizes=(1, 2, 4), height=36, width=36, out="/tmp/never"))
