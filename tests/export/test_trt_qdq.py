"""Issue 22 item 4: the TensorRT plan and lint of quantized (Q/DQ) bundles, on the CPU without TensorRT: crafted
graphs for each rule, ONNX Runtime's real CPU int8 bundle (the default ``--int8-activations u8``: refused), the same
build with ``--int8-activations s8`` (symmetric int8 activations: accepted, matmuls counted INT8), and the builder's
one-line refusals."""
import json
import shutil

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from ddit_export.bundle import read_manifest
from ddit_export.cli import main
from ddit_export.errors import ConfigError
from ddit_export.export import trt_plan, trt_qdq
from ddit_export.export.build import build_bundle
from ddit_export.export.trt_lint import check_bundle
from ddit_export.settings import BuildSettings
from tests.export.test_build_int8 import PROMPTS
from tests.export.test_trt_plan import FLUX_DEV, FLUX_GEOM


# ---- crafted graphs: one rule each ------------------------------------------------------------------------
def _graph(act_zp=(TensorProto.INT8, 0), w_type=TensorProto.INT8, w_scales=4, act_qdq=True, scale_const=True,
           axis=1, w_dq=True):
    """x [2, 8] @ W [8, 4]: W through DequantizeLinear (per-channel), x through Q -> DQ (per tensor);
    ``w_dq=False``: W a float initializer."""
    w = numpy_helper.from_array(np.arange(32, dtype=np.int8).reshape(8, 4) - 16, "w_q")
    if w_type != TensorProto.INT8:
        w = helper.make_tensor("w_q", w_type, [8, 4], np.zeros(32, np.float32).tolist())
    inits = [w, numpy_helper.from_array(np.full(w_scales, 0.01, np.float32), "w_s"),
             helper.make_tensor("w_zp", w_type, [w_scales], [0] * w_scales),
             helper.make_tensor("x_zp", act_zp[0], [], [act_zp[1]])]
    nodes = [helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_zp"], ["w"], name="dq_w", axis=axis)]
    if scale_const:
        inits.append(numpy_helper.from_array(np.array(0.05, np.float32), "x_s"))
    else:  # a scale computed from the activation at run time
        nodes.append(helper.make_node("ReduceMax", ["x"], ["x_s"], name="amax", keepdims=0))
    a = "x"
    if act_qdq:
        nodes += [helper.make_node("QuantizeLinear", ["x", "x_s", "x_zp"], ["x_q"], name="q_x"),
                  helper.make_node("DequantizeLinear", ["x_q", "x_s", "x_zp"], ["x_dq"], name="dq_x")]
        a = "x_dq"
    if not w_dq:
        nodes = [n for n in nodes if n.name != "dq_w"]
        inits.append(numpy_helper.from_array(np.ones((8, 4), np.float32), "w"))
    nodes.append(helper.make_node("MatMul", [a, "w"], ["y"], name="mm"))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)])


def _kinds(gq, severity="error"):
    return sorted({p.kind for p in gq.problems if p.severity == severity})


def test_symmetric_int8_on_both_inputs_is_one_int8_matmul():
    gq = trt_qdq.analyze(_graph(), "g.onnx")
    assert gq.problems == [] and dict(gq.matmuls) == {"int8": 1} and gq.qdq_nodes == 3
    assert gq.payload == {"w_q"} and {"w_s", "x_s", "x_zp"} <= gq.qparams


def test_fp8_on_both_inputs_is_one_fp8_matmul():
    gq = trt_qdq.analyze(_graph(act_zp=(TensorProto.FLOAT8E4M3FN, 0), w_type=TensorProto.FLOAT8E4M3FN), "g")
    assert gq.problems == [] and dict(gq.matmuls) == {"fp8": 1}


def test_one_quantized_input_is_a_warning_naming_the_node():
    """The activation quantized and the weight float: not an int8 kernel, a warning."""
    gq = trt_qdq.analyze(_graph(w_dq=False), "g.onnx", float_type="fp16")
    assert _kinds(gq) == [] and _kinds(gq, "warning") == ["qdq-one-input"]
    assert dict(gq.matmuls) == {"one-input": 1} and gq.one_input == ["mm"]
    assert "runs it in fp16" in gq.problems[0].message


def test_a_dequantized_weight_alone_is_weight_only_not_a_warning():
    """The int8 weight through DequantizeLinear and a float activation: weight-only quantization (the build's
    embeddings, adapters and conditioning matmuls), counted as such."""
    gq = trt_qdq.analyze(_graph(act_qdq=False), "g.onnx", float_type="fp16")
    assert gq.problems == [] and dict(gq.matmuls) == {"int8 weight-only": 1} and gq.one_input == []
    assert "w_q" in gq.payload


@pytest.mark.parametrize("kw, kind", [
    ({"act_zp": (TensorProto.INT8, 3)}, "qdq-zero-point"),  # asymmetric int8
    ({"act_zp": (TensorProto.UINT8, 128)}, "qdq-type"),  # ONNX Runtime's CPU default
    ({"scale_const": False}, "qdq-scale"),  # computed at run time
    ({"w_scales": 3}, "qdq-axis"),  # 3 per-channel scales for 4 output channels
])
def test_each_rule_is_an_error(kw, kind):
    gq = trt_qdq.analyze(_graph(**kw), "g.onnx")
    assert kind in _kinds(gq), gq.problems


def test_errors_and_warnings_group_to_one_line_per_class():
    problems = (trt_qdq.analyze(_graph(act_zp=(TensorProto.UINT8, 128)), "a.onnx").problems
                + trt_qdq.analyze(_graph(act_zp=(TensorProto.UINT8, 7)), "b.onnx").problems
                + trt_qdq.analyze(_graph(w_dq=False), "b.onnx").problems)
    lines = trt_qdq.grouped(problems)
    assert [s for s, _ in lines] == ["error", "error", "warning"]
    assert lines[0][1].startswith("qdq-type: 4 node(s) (a.onnx 2, b.onnx 2)") and "e.g. q_x, dq_x" in lines[0][1]
    assert lines[2][1].startswith("qdq-one-input: 1 node(s) (b.onnx 1)") and "e.g. mm" in lines[2][1]


# ---- the plan ---------------------------------------------------------------------------------------------
def test_quantized_plan_memory_and_flags():
    bf16 = trt_plan.make_plan(FLUX_DEV, FLUX_GEOM, (1, 2, 4), 512, "bf16", 32)
    int8 = trt_plan.make_plan(FLUX_DEV, FLUX_GEOM, (1, 2, 4), 512, "bf16", 32, precision="int8")
    fp8 = trt_plan.make_plan(FLUX_DEV, FLUX_GEOM, (1, 2, 4), 512, "bf16", 32, precision="fp8")
    w = int8["weights"]
    assert int8["precision"] == "int8" and int8["dtype"] == "bf16" and fp8["precision"] == "fp8"
    assert w["unquantized_total_bytes"] == bf16["weights"]["plan_total_bytes"]
    # FLUX.1-dev is nearly all weight matrices: 1 byte instead of 2, plus a scale per output channel
    assert 0.5 < w["plan_total_bytes"] / w["unquantized_total_bytes"] < 0.51
    assert w["trunk_copies"] == 1 and w["naive_total_bytes"] > 2.9 * w["trunk_bytes"]
    f = int8["flags"]
    assert f["strongly_typed"] and f["quantization"] == "explicit Q/DQ" and f["precision"] == "int8"
    assert not {"int8", "fp8", "fp16", "bf16"} & set(f)  # no precision builder flags under strong typing
    assert bf16["flags"]["quantization"] is None
    with pytest.raises(ConfigError, match="unknown precision"):
        trt_plan.make_plan(FLUX_DEV, FLUX_GEOM, (1,), 512, "bf16", 32, precision="int4")
    assert "unquantized (bf16)" in trt_plan.summary(int8)


def test_matrix_counts_add_up_to_the_parameters():
    p = trt_plan.param_counts(FLUX_DEV, (1, 2, 4), 32)
    mat = trt_plan.param_counts(FLUX_DEV, (1, 2, 4), 32, "matrix")
    rows = trt_plan.param_counts(FLUX_DEV, (1, 2, 4), 32, "rows")
    assert 0.99 * p["trunk"] < mat["trunk"] < p["trunk"] and 0 < rows["trunk"] < p["trunk"] - mat["trunk"] + 1
    assert mat["lora_per_size"] == p["lora_per_size"] and rows["lora_per_size"] == 0


# ---- the builder refuses what it cannot build -------------------------------------------------------------
def test_builder_refuses_fp8_and_int8_plans_in_one_line():
    from ddit_export.export.trt_build import engine_loaders
    from ddit_export.export.trt_plan import require_buildable

    for precision, needle in (("fp8", "FP8"), ("int8", "planned and linted only.*--int8-activations s8")):
        plan = trt_plan.make_plan(FLUX_DEV, FLUX_GEOM, (1, 2), 512, "bf16", 32, precision=precision)
        for call in (lambda: require_buildable(plan), lambda: engine_loaders("/nonexistent", plan)):
            with pytest.raises(ConfigError, match=needle) as e:
                call()
            assert "\n" not in str(e.value)


def test_engine_loaders_use_a_strongly_typed_network_and_no_precision_flag(monkeypatch):
    import polygraphy.backend.trt as ptrt

    from ddit_export.export import trt_build

    seen = {}
    monkeypatch.setattr(ptrt, "NetworkFromOnnxPath", lambda path, **kw: seen.setdefault("network", kw))
    monkeypatch.setattr(ptrt, "CreateConfig", lambda **kw: seen.setdefault("config", kw))
    plan = trt_plan.make_plan(FLUX_DEV, FLUX_GEOM, (1, 2), 512, "bf16", 32)
    trt_build.engine_loaders("/tmp", plan, only="trunk")
    assert seen["network"] == {"strongly_typed": True}
    assert not {"int8", "fp8", "fp16", "bf16", "precision_constraints"} & set(seen["config"])


@pytest.mark.parametrize("precision, extra, needle", [
    ("fp8", [], "FP8"),
    ("int8", [], "planned and linted only"),
    # s8 is the layout the lint takes, but the engine build still exports fp32 split graphs: refused all the same
    ("int8", ["--int8-activations", "s8"], "`--precision int8 --int8-activations s8`"),
])
def test_build_backend_trt_refuses_quantized_precisions(tmp_path, precision, extra, needle):
    r = CliRunner().invoke(main, ["build", "--model", "tiny", "--precision", precision, "--backend", "trt", *extra,
                                  "--out", str(tmp_path / "out")])
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], r.output
    assert not (tmp_path / "out").exists()


# ---- real bundles: ONNX Runtime's CPU layout, and symmetric int8 activations -------------------------------
def _build(tmp_path_factory, name, sizes=(1, 2, 4), **kw):
    p = tmp_path_factory.mktemp("cal") / "prompts.txt"
    p.write_text(PROMPTS)
    out = tmp_path_factory.mktemp(name) / "b"
    return build_bundle(BuildSettings(model="tiny", sizes=sizes, out=str(out), precision="int8",
                                      calibration_prompts=str(p), calibration_samples=2, **kw),
                        progress=False, log=lambda *a: None)


@pytest.fixture(scope="module")
def cpu_int8_bundle(tmp_path_factory):
    return _build(tmp_path_factory, "cpu-int8")


@pytest.fixture(scope="module")
def symmetric_int8_bundle(tmp_path_factory):
    """``build --precision int8 --int8-activations s8``: ONNX Runtime quantizing activations to int8, symmetric
    (zero point 0): the layout TensorRT takes."""
    return _build(tmp_path_factory, "sym-int8", sizes=(1, 2), int8_activations="s8")


def _trt_check(bundle):
    r = CliRunner().invoke(main, ["trt-check", str(bundle)])
    return r, r.output.splitlines()


def test_onnx_runtime_cpu_layout_is_refused_one_line_per_class(cpu_int8_bundle):
    r, lines = _trt_check(cpu_int8_bundle)
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert r.exit_code == 2, r.output
    assert [e.split(":")[1].strip() for e in errors] == ["qdq-type", "qdq-zero-point"], errors
    assert "uint8" in errors[0] and "asymmetric" in errors[1]
    out = r.output
    assert "(int8 activations u8:" in out and "--int8-activations s8" in out  # how to get the TensorRT layout
    assert "precision per layer" in out and "uint8 x int8 (not TensorRT types)" in out
    assert "weights measured from the bundle" in out and "TensorRT is not installed here" in out
    # the activation x activation matmuls stay fp32: as many as the build excluded
    m = read_manifest(cpu_int8_bundle)
    for v in m.variants:
        excluded = m.quantization["per_size"][str(v.size)]["activation_matmuls_excluded"]
        assert f"{v.file}: {excluded} fp32," in out
    assert m.int8_activations == "u8" and m.quantization["int8_activations"] == "u8"  # the default


def test_a_bundle_without_the_activation_field_reads_as_u8(cpu_int8_bundle, tmp_path):
    """int8 bundles from before --int8-activations have no ``quantization.int8_activations``: still load, u8."""
    b = tmp_path / "old"
    shutil.copytree(cpu_int8_bundle, b)
    d = json.loads((b / "manifest.json").read_text())
    del d["quantization"]["int8_activations"]
    (b / "manifest.json").write_text(json.dumps(d))
    from ddit_export.bundle import load

    m = load(b)  # every file hash checked too
    assert m.quantized and m.int8_activations == "u8"
    r, lines = _trt_check(b)
    assert r.exit_code == 2 and "(int8 activations u8:" in r.output


def test_measured_quantized_weights_match_the_parameter_counts(cpu_int8_bundle):
    m = read_manifest(cpu_int8_bundle)
    w = trt_qdq.quantized_weights(cpu_int8_bundle, m)
    mat = trt_plan.param_counts(m.model["transformer_config"], m.sizes, m.model["lora_rank"], "matrix")
    assert w["trunk"]["quantized"] == mat["trunk"]  # every trunk weight matrix int8, one byte each, held once
    assert w["per_size"]["1"]["quantized"] == mat["stem"][1] + mat["head"][1]
    assert w["plan_total_bytes"] < 0.35 * w["fp32_total_bytes"]
    assert w["trunk"]["fp32_equivalent"] >= 4 * w["trunk"]["quantized"]


def test_symmetric_int8_bundle_passes_and_counts_int8_matmuls(symmetric_int8_bundle):
    m = read_manifest(symmetric_int8_bundle)
    assert m.int8_activations == "s8" and m.quantization["int8_activations"] == "s8"
    assert "symmetric" in m.quantization["activations"] and "uint8" not in m.quantization["activations"]
    for k, row in m.quantization["per_size"].items():
        assert 0 < row["velocity_rel_rms_vs_fp32"] < 0.2, (k, row)  # really quantized, and still close
    census = trt_qdq.bundle_quant(symmetric_int8_bundle, m)
    assert [p for p in check_bundle(symmetric_int8_bundle, census=census) if p.severity == "error"] == []
    for v in m.variants:
        row = m.quantization["per_size"][str(v.size)]
        counts = census[v.file].matmuls
        assert counts["fp32"] == row["activation_matmuls_excluded"] and counts["int8"] > 0
        # weight-only matmuls (int8 weight, fp32 activation) are counted as such, not as one-input warnings (the
        # adapters' down projections that read a Q/DQ'd trunk input count as int8)
        assert 0 < counts["int8 weight-only"] <= sum(row["weight_only_matmuls"].values())
        assert set(counts) == {"fp32", "int8", "int8 weight-only"} and not census[v.file].one_input
    spread = trt_qdq.activation_scale_spread(census)
    assert spread["trunk_matmuls"] > 0 and spread["differ_between_sizes"] <= spread["trunk_matmuls"]
    r, lines = _trt_check(symmetric_int8_bundle)
    assert r.exit_code == 0, r.output
    assert "no problems" in lines[-1] and not [ln for ln in lines if ln.startswith(("error:", "warning:"))]
    assert "int8 activations u8" not in r.output
    assert f"transformer_k1.onnx: {census['transformer_k1.onnx'].matmuls['fp32']} fp32, " in r.output


def test_a_matmul_with_one_quantized_input_is_a_warning(symmetric_int8_bundle, tmp_path):
    """Replace one trunk matmul's int8 weight by a float one (its activation still Q/DQ): it still builds (exit
    0) and is named."""
    from onnx import numpy_helper

    b = tmp_path / "b"
    shutil.copytree(symmetric_int8_bundle, b)
    path = b / "transformer_k1.onnx"
    model = onnx.load(str(path), load_external_data=False)
    g = model.graph
    prod = {o: n for n in g.node for o in n.output}
    mm = next(n for n in g.node if n.op_type in ("MatMul", "Gemm") and n.input[0] in prod
              and prod[n.input[0]].op_type == "DequantizeLinear"
              and prod[n.input[0]].input[0] in prod)  # activation Q -> DQ -> matmul
    shape = list(next(t for t in g.initializer if t.name == prod[mm.input[1]].input[0]).dims)
    g.initializer.append(numpy_helper.from_array(np.ones(shape, np.float32), "float_weight"))
    mm.input[1] = "float_weight"
    onnx.save(model, str(path))
    d = json.loads((b / "manifest.json").read_text())
    from ddit_export.bundle import sha256_file

    d["files"]["transformer_k1.onnx"] = sha256_file(path)
    (b / "manifest.json").write_text(json.dumps(d))
    r, lines = _trt_check(b)
    warnings = [ln for ln in lines if ln.startswith("warning:")]
    assert r.exit_code == 0, r.output
    assert len(warnings) == 1 and "qdq-one-input: 1 node(s) (transformer_k1.onnx 1)" in warnings[0]
    assert mm.name in warnings[0] and "1 warning(s)" in lines[-1]
    assert "1 one-input" in r.output
