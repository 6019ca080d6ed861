"""Issue 22: ``build --precision int8``: calibrated on the model's own generations at every patch size, QDQ graphs
quantized by ONNX Runtime, the trunk's int8 weights stored once, run by ONNX Runtime; bad inputs refused in one
line before any export; an interrupted quantization leaves no bundle."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ddit_export.bundle import MANIFEST, load
from ddit_export.cli import main
from ddit_export.errors import ConfigError
from ddit_export.export import build as build_mod
from ddit_export.export import quantize as quantize_mod
from ddit_export.export.build import build_bundle
from ddit_export.settings import BuildSettings

# short captions the tiny model reads (it reads at most 24 words; the shipped file has longer ones)
PROMPTS = """# calibration captions for the tiny model
a large purple circle at the top on a white background
a medium yellow square at the bottom on a striped background
a small red triangle at the left on a black background
"""


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("cal") / "prompts.txt"
    p.write_text(PROMPTS)
    return p


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory, prompts_file):
    out = tmp_path_factory.mktemp("int8") / "tiny-int8"
    return build_bundle(BuildSettings(model="tiny", out=str(out), precision="int8",
                                      calibration_prompts=str(prompts_file), calibration_samples=3),
                        progress=False, log=lambda *a: None)


def _ops(path):
    import onnx

    return [n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node]


def test_int8_bundle_manifest_and_calibration_files(int8_bundle, prompts_file):
    m = load(int8_bundle)  # every file hashed, the calibration files included
    assert m.precision == "int8" and m.quantized and m.dtype == "fp32"
    q = m.quantization
    assert q["calibration"]["samples"] == 3
    assert q["calibration"]["prompts_sha256"] == quantize_mod.sha256_text(prompts_file)
    assert set(q["per_size"]) == {"1", "2", "4"}
    for k, row in q["per_size"].items():
        assert row["calibration_calls"] > 0 and row["lowest"] < row["highest"]
        assert row["ranges"] in m.files and (int8_bundle / row["ranges"]).is_file()
        assert 0 < row["velocity_rel_rms_vs_fp32"] < 0.2
    assert "calibration/prompts.txt" in m.files
    assert (int8_bundle / "calibration" / "prompts.txt").read_text() == PROMPTS
    assert not [p for p in int8_bundle.iterdir() if p.name.startswith("_")]  # no scratch folder left


def test_graphs_are_qdq_and_the_trunk_is_stored_once(int8_bundle, tiny_bundle):
    m = load(int8_bundle)
    for v in m.variants:
        ops = _ops(int8_bundle / v.file)
        assert "DequantizeLinear" in ops and "QuantizeLinear" in ops
    # every int8 weight of the fine graph (the trunk: k=1 has no adapters) is the same bytes in every graph
    offsets = {v.file: {row[1] for row in m.tensors[v.file] if row[3] == "int8"} for v in m.variants}
    fine = offsets["transformer_k1.onnx"]
    assert fine and all(fine <= o for o in offsets.values())
    # weights.bin holds each int8 payload once: smaller than the fp32 bundle's
    assert (int8_bundle / "weights.bin").stat().st_size < 0.6 * (tiny_bundle / "weights.bin").stat().st_size
    assert "precision" not in json.loads((tiny_bundle / MANIFEST).read_text())  # fp32 manifests unchanged


def test_only_weight_matmuls_are_quantized(int8_bundle, tiny_bundle):
    """Attention's activation x activation matmuls (Q.K^T, P.V) stay fp32: neither input is a DequantizeLinear
    output; every weight matmul has its weight through a DequantizeLinear of an int8 initializer. The trunk's take
    their activation through a QuantizeLinear -> DequantizeLinear pair; the weight-only groups (embeddings,
    adapters, conditioning, text stream: ``quantize.matmul_groups`` of the fp32 graph) are not quantized on it."""
    import onnx

    m = load(int8_bundle)
    for v in m.variants:
        g = onnx.load(str(int8_bundle / v.file), load_external_data=False).graph
        inits = {t.name: t for t in g.initializer}
        prod = {o: n for n in g.node for o in n.output}
        dq_of_weight = lambda name: (name in prod and prod[name].op_type == "DequantizeLinear"  # noqa: E731
                                     and prod[name].input[0] in inits
                                     and inits[prod[name].input[0]].data_type == onnx.TensorProto.INT8)
        dq_of_activation = lambda name: (name in prod and prod[name].op_type == "DequantizeLinear"  # noqa: E731
                                         and prod[name].input[0] in prod
                                         and prod[prod[name].input[0]].op_type == "QuantizeLinear")
        act_act, full, weight_only = 0, 0, set()
        for n in g.node:
            if n.op_type not in ("MatMul", "Gemm"):
                continue
            a, b = n.input[0], n.input[1]
            if dq_of_weight(b) or b in inits:
                assert dq_of_weight(b), (v.file, n.name)  # every weight matmul: int8 weight
                if dq_of_activation(a):
                    full += 1
                else:
                    weight_only.add(n.name)
            else:
                act_act += 1
                assert not dq_of_activation(a) and not dq_of_activation(b), (v.file, n.name)  # left in fp32
        assert full > 0 and act_act > 0
        row = m.quantization["per_size"][str(v.size)]
        assert row["activation_matmuls_excluded"] == act_act
        groups = quantize_mod.matmul_groups(onnx.load(str(tiny_bundle / v.file), load_external_data=False).graph)
        expect = {n for grp in quantize_mod.WEIGHT_ONLY_GROUPS for n in groups[grp]}
        # a weight-only matmul reading a tensor that a trunk matmul quantizes reads its Q/DQ copy (LoRA's down
        # projection beside the layer it adapts): the rest of them read fp32
        assert weight_only and weight_only <= expect and sum(row["weight_only_matmuls"].values()) == len(expect)
        assert ("low_rank" in row["weight_only_matmuls"]) == (v.size > 1)  # the adapters: coarse graphs only


def test_activation_matmuls_found_by_walking_the_graph():
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    nodes = [helper.make_node("Transpose", ["w"], ["wt"], name="t"),
             helper.make_node("Constant", [], ["c"], name="c",
                              value=numpy_helper.from_array(np.ones((4, 4), np.float32))),
             helper.make_node("MatMul", ["x", "wt"], ["y1"], name="weight_via_transpose"),
             helper.make_node("MatMul", ["c", "x"], ["y2"], name="constant_first"),
             helper.make_node("MatMul", ["y1", "y2"], ["y3"], name="act_act"),
             helper.make_node("Gemm", ["y3", "x"], ["y4"], name="act_act_gemm")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
                          [helper.make_tensor_value_info("y4", TensorProto.FLOAT, [4, 4])], [w])
    assert quantize_mod.activation_matmuls(g) == ["act_act", "act_act_gemm"]


def test_weight_quantization_depends_on_the_weight_only(tmp_path):
    """Two graphs with the same weight and different activation ranges give the same int8 payload and scale."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 32)).astype(np.float32)
    inits = [numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "win"),
             numpy_helper.from_array(w, "w"),
             numpy_helper.from_array(rng.standard_normal((32, 32)).astype(np.float32), "wout")]
    tables = []
    for i, scale in enumerate((1.0, 50.0)):
        # embed -> trunk matmul (w, quantized in full) -> projection out
        g = helper.make_graph([helper.make_node("MatMul", ["hidden_states", "win"], ["h1"], name="embed"),
                               helper.make_node("Relu", ["h1"], ["r1"], name="r1"),
                               helper.make_node("MatMul", ["r1", "w"], ["h2"], name="trunk"),
                               helper.make_node("Relu", ["h2"], ["r2"], name="r2"),
                               helper.make_node("MatMul", ["r2", "wout"], ["y"], name="unembed")], "g",
                              [helper.make_tensor_value_info("hidden_states", TensorProto.FLOAT, [4, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 32])], inits)
        assert quantize_mod.matmul_groups(g) == {"embed": ["embed"], "unembed": ["unembed"], "low_rank": [],
                                                 "conditioning": [], "text": [], "trunk": ["trunk"]}
        src = tmp_path / f"g{i}" / "model.onnx"
        src.parent.mkdir()
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), src)
        feeds = [{"hidden_states": (np.random.default_rng(j).standard_normal((4, 64)) * scale).astype(np.float32)}
                 for j in range(3)]
        out = tmp_path / f"q{i}" / "model.onnx"
        excluded, weight_only = quantize_mod.quantize_graph(src, out, feeds, tmp_path / f"ranges{i}.json")
        assert excluded == [] and weight_only == {"embed": ["embed"], "unembed": ["unembed"]}
        model = onnx.load(str(out))
        prod = {o: n for n in model.graph.node for o in n.output}
        act = {n.name: prod.get(n.input[0]) for n in model.graph.node if n.op_type == "MatMul"}
        assert act["trunk"].op_type == "DequantizeLinear" and prod[act["trunk"].input[0]].op_type == "QuantizeLinear"
        assert act["embed"] is None and act["unembed"].op_type == "Relu"  # weight-only: fp32 activations
        tables.append({t.name: numpy_helper.to_array(t) for t in model.graph.initializer
                       if t.name.startswith("w_")})
    a, b = tables
    assert set(a) == set(b) and any(v.dtype == np.int8 for v in a.values())
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_weight_only_keeps_the_activation_and_stores_int8_weights(tmp_path):
    """``weight_only``: a Gemm (transB) and a MatMul get int8 per-output-channel weights behind a DequantizeLinear,
    no QuantizeLinear on the activation, the fp32 weights gone; outputs stay within int8 weight rounding."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    wg = (rng.standard_normal((24, 16)) * np.linspace(0.1, 10, 24)[:, None]).astype(np.float32)  # [N, K]
    wm = rng.standard_normal((24, 8)).astype(np.float32)
    g = helper.make_graph([helper.make_node("Gemm", ["x", "wg"], ["h"], name="gemm", transB=1),
                           helper.make_node("MatMul", ["h", "wm"], ["y"], name="mm")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 8])],
                          [numpy_helper.from_array(wg, "wg"), numpy_helper.from_array(wm, "wm")])
    path = tmp_path / "m" / "model.onnx"
    path.parent.mkdir()
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), path)
    x = rng.standard_normal((3, 16)).astype(np.float32)
    ref = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    assert quantize_mod.weight_only(path, ["gemm", "mm"]) == 2
    m = onnx.load(str(path))
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("DequantizeLinear") == 2 and "QuantizeLinear" not in ops
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    assert "wg" not in inits and "wm" not in inits and inits["wg_quantized"].dtype == np.int8
    assert inits["wg_scale"].shape == (24,) and inits["wm_scale"].shape == (8,)  # one scale per output channel
    out = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    assert 0 < np.abs(out - ref).max() < 0.02 * np.abs(ref).max()
    with pytest.raises(ConfigError, match="no node 'nope'"):
        quantize_mod.weight_only(path, ["nope"])


def test_int8_bundle_generates_close_to_fp32(int8_bundle, tiny_bundle):
    from ddit_export.api import build_settings
    from ddit_export.runtime.bundle_model import open_bundle
    from ddit_export.runtime.generate import generate

    out = {}
    for name, folder in (("fp32", tiny_bundle), ("int8", int8_bundle)):
        model, backend = open_bundle(folder, threads=1)
        with backend:
            r = generate(model, backend, build_settings(model, static=(1,) * 8, steps=8), progress=False)
        out[name] = np.asarray(r.images, np.float32)
    mse = float(np.mean((out["fp32"] - out["int8"]) ** 2))
    assert 0 < mse  # really quantized
    psnr = 10 * np.log10(1.0 / mse) if out["fp32"].max() <= 1.0 else 10 * np.log10(255.0 ** 2 / mse)
    assert psnr > 20, psnr


def test_int8_bundle_refused_by_aoti_and_tensorrt(int8_bundle):
    from ddit_export.runtime.bundle_model import open_bundle

    for backend in ("aoti", "tensorrt"):
        with pytest.raises(ConfigError, match="cannot run a int8 bundle"):
            open_bundle(int8_bundle, backend=backend)


def test_an_interrupted_quantization_leaves_no_bundle(tmp_path, prompts_file, tiny_bundle, monkeypatch):
    out = tmp_path / "b"
    shutil.copytree(tiny_bundle, out)  # an old fp32 bundle at out: kept whole
    before = (out / MANIFEST).read_text()
    calls = []
    real = quantize_mod.quantize_graph

    def stop_half_way(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C between the first and the second size's quantization
        return real(*a, **k)

    monkeypatch.setattr(quantize_mod, "quantize_graph", stop_half_way)
    with pytest.raises(KeyboardInterrupt):
        build_bundle(BuildSettings(model="tiny", sizes=(1, 2), out=str(out), precision="int8",
                                   calibration_prompts=str(prompts_file), calibration_samples=2),
                     progress=False, log=lambda *a: None)
    assert len(calls) == 2
    assert (out / MANIFEST).read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no temporary folder left
    assert not (out / "calibration").exists()


@pytest.fixture
def no_export(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("export work started")

    monkeypatch.setattr(build_mod, "_write_bundle", fail)
    monkeypatch.setattr(build_mod, "build_bundle", fail)


@pytest.mark.parametrize("args, needle", [
    (["--precision", "int4"], "int4"),
    (["--precision", "fp8"], "not runnable on the CPU"),
    (["--precision", "int8", "--dtype", "fp16"], "disagree"),
    (["--precision", "fp16", "--dtype", "bf16"], "disagree"),
    (["--precision", "int8", "--backend", "aoti"], "--backend aoti cannot take them"),
    (["--calibration-samples", "4"], "apply to --precision int8"),
    (["--int8-activations", "s8"], "--int8-activations applies to --precision int8 (got --precision fp32)"),
    (["--precision", "fp16", "--int8-activations", "u8"], "--int8-activations applies to --precision int8"),
    (["--precision", "int8", "--int8-activations", "s16"], "s16"),
    (["--precision", "int8", "--calibration-samples", "0"], "calibration samples must be >= 1"),
    (["--precision", "int8", "--calibration-prompts", "MISSING"], "cannot read prompts"),
    (["--precision", "int8"], "this model reads at most 24"),  # the shipped captions are too long for tiny
    (["--precision", "int8", "--calibration-prompts", "BADWORD"], "not in the model's vocabulary"),
])
def test_bad_precision_inputs_are_one_line_before_the_export(tmp_path, no_export, args, needle):
    bad = tmp_path / "bad.txt"
    bad.write_text("a large red circle at the top on a checkered background\n")  # a word tiny cannot read
    args = [str(tmp_path / "missing.txt") if a == "MISSING" else str(bad) if a == "BADWORD" else a for a in args]
    r = CliRunner().invoke(main, ["build", "--model", "tiny", "--out", str(tmp_path / "out"), *args])
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2, r.output
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], r.output
    assert not (tmp_path / "out").exists()


def test_precision_maps_onto_dtype():
    assert BuildSettings(model="tiny", precision="fp16").dtype == "fp16"
    assert BuildSettings(model="tiny", dtype="bf16").precision == "bf16"
    assert BuildSettings(model="tiny").precision == "fp32" and not BuildSettings(model="tiny").quantized
    assert BuildSettings(model="tiny", precision="int8").quantized
    with pytest.raises(ConfigError, match="fp8"):
        BuildSettings(model="tiny", precision="fp8")



def test_int8_activations_setting():
    assert BuildSettings(model="tiny", precision="int8").int8_activations == "u8"  # the default: today's build
    assert BuildSettings(model="tiny", precision="int8", int8_activations="s8").int8_activations == "s8"
    assert BuildSettings(model="tiny").int8_activations is None
    with pytest.raises(ConfigError, match="applies to --precision int8"):
        BuildSettings(model="tiny", int8_activations="s8")
    with pytest.raises(ConfigError, match="must be one of u8, s8"):
        BuildSettings(model="tiny", precision="int8", int8_activations="s16")


def test_int8_activations_pick_the_quantizers_activation_type(tmp_path):
    """u8: uint8 activations with a zero point (asymmetric); s8: int8 activations with zero point 0. The weights'
    int8 payloads are the same bytes either way."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 32)).astype(np.float32)
    # the middle matmul is a trunk one (activation and weight int8); the first and last are weight-only
    g = helper.make_graph([helper.make_node("MatMul", ["hidden_states", "win"], ["e"], name="embed"),
                           helper.make_node("Identity", ["e"], ["x"], name="id"),  # not a matmul chain (adapters)
                           helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
                           helper.make_node("Relu", ["h"], ["r"], name="relu"),
                           helper.make_node("MatMul", ["r", "wout"], ["y"], name="unembed")], "g",
                          [helper.make_tensor_value_info("hidden_states", TensorProto.FLOAT, [4, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 32])],
                          [numpy_helper.from_array(np.eye(64, dtype=np.float32), "win"),
                           numpy_helper.from_array(w, "w"),
                           numpy_helper.from_array(rng.standard_normal((32, 32)).astype(np.float32), "wout")])
    src = tmp_path / "src" / "model.onnx"
    src.parent.mkdir()
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), src)
    # activations shifted off 0 (about -2 .. 4): an asymmetric uint8 range has a zero point far from 0
    feeds = [{"hidden_states": (np.random.default_rng(j).standard_normal((4, 64)) + 1.0).astype(np.float32)}
             for j in range(3)]
    out = {}
    for act in ("u8", "s8"):
        path = tmp_path / act / "model.onnx"
        quantize_mod.quantize_graph(src, path, feeds, tmp_path / f"ranges_{act}.json", activations=act)
        model = onnx.load(str(path))
        inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x")  # mm's input
        out[act] = (inits[q.input[2]], {n: v for n, v in inits.items() if n.startswith("w_")})
    zp_u8, zp_s8 = out["u8"][0], out["s8"][0]
    assert zp_u8.dtype == np.uint8 and int(zp_u8) != 0
    assert zp_s8.dtype == np.int8 and int(zp_s8) == 0
    assert set(out["u8"][1]) == set(out["s8"][1])
    for name, v in out["u8"][1].items():
        np.testing.assert_array_equal(v, out["s8"][1][name])
    with pytest.raises(ConfigError, match="int8 activations must be one of"):
        quantize_mod.quantize_graph(src, tmp_path / "bad" / "model.onnx", feeds, tmp_path / "r.json",
                                    activations="s16")
