"""TensorRT-compatibility check without TensorRT: the tiny bundle passes, crafted bad graphs are caught."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from ddit_export.export.trt_compat import check_model, report, supported_ops
from ddit_export.export.trt_lint import check_bundle


def _model(nodes, inputs, outputs, initializers=(), opset=18):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def kinds(problems):
    return sorted({p.kind for p in problems})


def test_ops_table_names_its_source_and_version():
    t = supported_ops()
    assert "onnx-tensorrt" in t["source"] and t["tensorrt_version"].startswith("10.")
    assert {"MatMul", "Softmax", "LayerNormalization", "Gemm"} <= set(t["supported"])
    assert "Unique" in t["unsupported"]


def test_tiny_bundle_has_no_problems(tiny_bundle):
    assert check_bundle(tiny_bundle) == []
    assert "no problems" in report([])


def test_a_clean_graph_passes():
    m = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", ["batch", 4])], [_vi("y", ["batch", 4])])
    assert check_model(m) == []


def test_float64_cast_initializer_and_value_are_caught():
    d = numpy_helper.from_array(np.ones(4, np.float64), "w64")
    nodes = [helper.make_node("Cast", ["x"], ["x64"], to=TensorProto.DOUBLE),
             helper.make_node("Add", ["x64", "w64"], ["s"]),
             helper.make_node("Cast", ["s"], ["y"], to=TensorProto.FLOAT)]
    probs = check_model(_model(nodes, [_vi("x", ["batch", 4])], [_vi("y", ["batch", 4])], [d]), "bad.onnx")
    assert kinds(probs) == ["float64"]
    where = " ".join(p.where for p in probs)
    assert "initializer w64" in where and "Cast" in where and "value x64" in where
    assert all(str(p).startswith("bad.onnx: float64") for p in probs)


def test_unsupported_and_custom_ops_are_caught():
    nodes = [helper.make_node("Unique", ["x"], ["y"]),
             helper.make_node("FusedGelu", ["x"], ["z"], domain="com.microsoft")]
    m = _model(nodes, [_vi("x", [4])], [_vi("y", [None]), _vi("z", [4])])
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    probs = [p for p in check_model(m) if p.kind == "operator"]
    assert any("Unique is not supported" in p.message for p in probs)
    assert any("plugin" in p.message for p in probs)


def test_ops_inside_subgraphs_are_checked():
    then = helper.make_graph([helper.make_node("Unique", ["x"], ["t"])], "then", [], [_vi("t", [None])])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [], [_vi("e", [4])])
    cond = numpy_helper.from_array(np.array(True), "c")
    m = _model([helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)],
               [_vi("x", [4])], [_vi("y", [None])], [cond])
    assert any("Unique" in p.message for p in check_model(m))


def test_ops_added_late_and_opset_range():
    m = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [4])], [_vi("y", [4])], opset=25)
    assert "opset" in kinds(check_model(m))
    att = _model([helper.make_node("Attention", ["q", "k", "v"], ["y"])],
                 [_vi(n, [1, 2, 4, 8]) for n in "qkv"], [_vi("y", [1, 2, 4, 8])], opset=23)
    assert check_model(att, trt_version="10.15") == []
    assert any("needs TensorRT >= 10.14" in p.message for p in check_model(att, trt_version="10.8"))


def test_dynamic_non_batch_dim_is_caught_unless_every_profile_fixes_it():
    m = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", ["batch", "tokens", 8])],
               [_vi("y", ["batch", "tokens", 8])])
    probs = check_model(m, "trunk.onnx")
    assert kinds(probs) == ["dynamic-shape"] and any("input x axis 1" in p.where for p in probs)
    fixed = [{"size": k, "shapes": {"x": [[1, n, 8], [1, n, 8], [2, n, 8]]}} for k, n in ((1, 64), (2, 16))]
    assert check_model(m, "trunk.onnx", fixed) == []
    ranged = [{"size": 1, "shapes": {"x": [[1, 16, 8], [1, 32, 8], [1, 64, 8]]}}]
    assert kinds(check_model(m, "trunk.onnx", ranged)) == ["dynamic-shape"]
    wrong = [{"size": 1, "shapes": {"x": [[1, 64, 4]] * 3}}]  # the static channel dim contradicted
    assert "profile" in kinds(check_model(m, "trunk.onnx", wrong))


@pytest.mark.parametrize("missing", ["trt_trunk.onnx"])
def test_a_planned_graph_that_is_missing_is_reported(bundle_copy, missing):
    plan = {"engines": [{"onnx": missing, "profiles": []}]}
    probs = check_bundle(bundle_copy, plan)
    assert [p.kind for p in probs] == ["missing"]
