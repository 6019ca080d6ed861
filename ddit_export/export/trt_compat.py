"""Will TensorRT's ONNX parser take these graphs? Checked without TensorRT, on the CPU.

Three rules, from the deployment notes: no float64 anywhere (TensorRT has no FP64 and strongly typed networks do
not cast it away), only operators in ``trt_ops.json`` (onnx-tensorrt's support matrix for TensorRT 10.x, with its
source), and static shapes per profile (every dimension but the batch is fixed, or fixed by every profile of the
plan: the trunk's token axis). Types of intermediate values come from ONNX shape inference (what polygraphy's
``infer_shapes`` falls back to here; its ``fold_constants`` needs onnx-graphsurgeon, which is not a dependency).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

OPS_FILE = Path(__file__).with_name("trt_ops.json")
BATCH_DIMS = ("batch",)
_DOUBLE = 11  # onnx.TensorProto.DOUBLE


@dataclass(frozen=True)
class Problem:
    graph: str
    kind: str  # "float64", "operator", "opset", "dynamic-shape", "profile"; quantized graphs: "qdq-..." (trt_qdq)
    where: str
    message: str
    severity: str = "error"  # "warning": TensorRT builds it, but not as asked (a matmul left unquantized)

    def __str__(self):
        tag = "" if self.severity == "error" else f"{self.severity}: "
        return f"{tag}{self.graph}: {self.kind}: {self.where}: {self.message}"


@lru_cache(maxsize=1)
def supported_ops() -> dict:
    """The support matrix (``trt_ops.json``): {"supported": {op: {...}}, "tensorrt_version", "source", ...}."""
    return json.loads(OPS_FILE.read_text())


def _version(text: str) -> tuple:
    return tuple(int(p) for p in str(text).split(".")[:2])


# ---- the three rules ------------------------------------------------------------------------------------
def _all_nodes(graph, functions):
    """Nodes of the graph, of its subgraphs (If/Loop/Scan bodies) and of the local functions it calls."""
    from onnx import AttributeProto

    for node in graph.node:
        fn = functions.get((node.domain, node.op_type))
        if fn is not None:
            yield from ((n, f"function {fn.name}") for n in fn.node)
            continue
        yield node, "graph"
        for a in node.attribute:
            subs = [a.g] if a.type == AttributeProto.GRAPH else list(a.graphs)
            for g in subs:
                yield from _all_nodes(g, functions)


def check_operators(model, name: str, *, trt_version: str | None = None) -> list[Problem]:
    table = supported_ops()
    ok, since = table["supported"], table.get("since", {})
    out = []
    opset = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    v = opset.get("ai.onnx")
    if v is not None and not table["opset_min"] <= v <= table["opset_max"]:
        out.append(Problem(name, "opset", "model", f"ONNX opset {v} is outside TensorRT {table['tensorrt_version']}'s "
                                                   f"range {table['opset_min']}..{table['opset_max']}"))
    functions = {(f.domain, f.name): f for f in model.functions}
    seen = set()
    for node, where in _all_nodes(model.graph, functions):
        key = (node.domain, node.op_type)
        if key in seen:
            continue
        seen.add(key)
        if node.domain not in ("", "ai.onnx"):
            out.append(Problem(name, "operator", f"{where}: {node.name or node.op_type}",
                               f"custom-domain op {node.domain}::{node.op_type} needs a TensorRT plugin"))
        elif node.op_type not in ok:
            out.append(Problem(name, "operator", f"{where}: {node.name or node.op_type}", f"{node.op_type} is not "
                               f"supported by TensorRT {table['tensorrt_version']}'s ONNX parser"))
        elif trt_version and node.op_type in since and _version(trt_version) < _version(since[node.op_type]):
            out.append(Problem(name, "operator", f"{where}: {node.name or node.op_type}",
                               f"{node.op_type} needs TensorRT >= {since[node.op_type]}, target is {trt_version}"))
    return out


def check_float64(model, name: str) -> list[Problem]:
    """float64 initializers, Cast/Constant/ConstantOfShape producing float64, and float64 values anywhere."""
    import onnx
    from onnx import helper

    out = [Problem(name, "float64", f"initializer {t.name}", "float64 initializer")
           for t in model.graph.initializer if t.data_type == _DOUBLE]
    for node, where in _all_nodes(model.graph, {(f.domain, f.name): f for f in model.functions}):
        for a in node.attribute:
            if node.op_type in ("Cast", "RandomNormal", "RandomUniform", "EyeLike") and a.name in ("to", "dtype") \
                    and a.i == _DOUBLE:
                out.append(Problem(name, "float64", f"{where}: {node.op_type} {node.name}", "casts to float64"))
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == _DOUBLE:
                out.append(Problem(name, "float64", f"{where}: {node.op_type} {node.name}",
                                   f"float64 constant in attribute {a.name!r}"))
    try:  # types of every intermediate value; a graph ONNX cannot type is reported, not fatal
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception as e:  # onnx raises InferenceError and others
        out.append(Problem(name, "float64", "shape inference", f"could not infer value types ({e}); "
                                                                  f"float64 intermediates not checked"))
        inferred = model
    g = inferred.graph
    for kind, values in (("input", g.input), ("output", g.output), ("value", g.value_info)):
        for vi in values:
            if vi.type.tensor_type.elem_type == _DOUBLE:
                out.append(Problem(name, "float64", f"{kind} {vi.name}", "float64 tensor "
                                   f"({helper.tensor_dtype_to_np_dtype(_DOUBLE).name})"))
    return _dedupe(out)


def check_shapes(model, name: str, profiles: list[dict] | None = None,
                 batch_dims=BATCH_DIMS) -> list[Problem]:
    """Every non-batch dim of every input and output is static, or (inputs only) fixed by every profile.

    ``profiles``: the plan's ``[{"shapes": {input: [min, opt, max]}}, ...]`` for this graph, or None."""
    out = []
    for vi in model.graph.input:
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                for d in vi.type.tensor_type.shape.dim]
        covered = [p["shapes"].get(vi.name) for p in profiles or []]
        for axis, d in enumerate(dims):
            if isinstance(d, int) or d in batch_dims:
                for p, shape in zip(profiles or [], covered):
                    if shape and isinstance(d, int) and any(s[axis] != d for s in shape):
                        out.append(Problem(name, "profile", f"input {vi.name} axis {axis}",
                                           f"profile k={p.get('size')} gives {[s[axis] for s in shape]} for the "
                                           f"static dim {d}"))
                continue
            if profiles and all(s and len({x[axis] for x in s}) == 1 for s in covered):
                continue  # dynamic in the graph, min = opt = max in every profile: one static shape per profile
            out.append(Problem(name, "dynamic-shape", f"input {vi.name} axis {axis}",
                               f"dimension {d!r} is dynamic and not fixed by a profile "
                               f"(only {', '.join(batch_dims)} may vary)"))
    for vi in model.graph.output:
        for axis, d in enumerate(vi.type.tensor_type.shape.dim):
            if not d.HasField("dim_value") and d.dim_param not in batch_dims and not profiles:
                out.append(Problem(name, "dynamic-shape", f"output {vi.name} axis {axis}",
                                   f"dimension {d.dim_param or '?'!r} is dynamic"))
    return out


def _dedupe(problems):
    seen, out = set(), []
    for p in problems:
        if (p.kind, p.where) not in seen:
            seen.add((p.kind, p.where))
            out.append(p)
    return out


# ---- whole graphs and bundles ---------------------------------------------------------------------------
def check_model(model, name: str = "model", profiles: list[dict] | None = None, *,
                trt_version: str | None = None) -> list[Problem]:
    """Every problem of one ONNX ModelProto (external data need not be loaded)."""
    return (check_float64(model, name) + check_operators(model, name, trt_version=trt_version)
            + check_shapes(model, name, profiles))


def check_file(path, profiles: list[dict] | None = None, **kw) -> list[Problem]:
    import onnx

    path = Path(path)
    return check_model(onnx.load(str(path), load_external_data=False), path.name, profiles, **kw)


def report(problems: list[Problem]) -> str:
    errors = [p for p in problems if p.severity == "error"]
    if not errors:
        t = supported_ops()
        warned = len(problems) - len(errors)
        return (f"no problems for TensorRT {t['tensorrt_version']} (opset {t['opset_min']}..{t['opset_max']})"
                + (f"; {warned} warning(s)" if warned else ""))
    return "\n".join(str(p) for p in problems)
