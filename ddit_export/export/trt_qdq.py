"""Quantized (Q/DQ) bundles for TensorRT, checked on the CPU without TensorRT: which matmuls run in INT8/FP8, whether
every QuantizeLinear/DequantizeLinear is one TensorRT's ONNX parser takes, and the quantized weight bytes.

TensorRT builds a graph with Q/DQ nodes by *explicit quantization*; the rules checked here, and where they come from:

- Types: TensorRT quantizes symmetrically to INT8, FP8 (E4M3), INT4 and FP4 ("Working with Quantized Types",
  TensorRT docs). onnx-tensorrt's operator matrix (kept in ``trt_ops.json``) takes DequantizeLinear on INT8 / FP8 /
  FP4 / INT4 with ``x_zero_point`` zero and QuantizeLinear with ``y_zero_point`` zero, and UINT8 "only as network
  input or output"; its importer (``onnxOpImporters.cpp``, ``QuantDequantLinearHelper``, read at 10.1) rejects a
  UINT8 Q/DQ input or zero point and asserts "the zero point ... must be all zeros". So ONNX Runtime's default CPU
  layout (uint8 activations with a zero point, ``quantize.py``) is an error here, not a warning.
- Scales: "The scale tensor must be a build-time constant" (TensorRT operator reference, Quantize / Dequantize),
  all coefficients strictly positive (IQuantizeLayer); a 1-D (per-channel) scale has one coefficient per element of
  the quantized axis (importer assert); per-axis scales are for weights, activations are per tensor (importer:
  "Activations-quantization does not support per-axis quantization").
- Placement: TensorRT's Q/DQ placement recommendation is to quantize all inputs of weighted operations
  (Convolution, GEMM; "Explicit Quantization", TensorRT docs). A MatMul/Gemm runs as an INT8/FP8 kernel when both
  of its inputs are DequantizeLinear outputs; with only the activation's, it runs in the float type: reported as a
  warning (the engine builds, that matmul is not quantized), with counts and a few node names. A DequantizeLinear
  on the constant weight alone is weight-only quantization (int8 weight stored, dequantized into a float GEMM, as
  Torch-TensorRT's weight-only examples build it): counted as ``int8 weight-only``, not a warning.
- Strong typing: "Use explicit quantization with Strong Typing. Precision-control build flags are not required and
  should not be specified" ("Explicit Quantization", TensorRT 11.5): the plan keeps ``strongly_typed`` and sets no
  INT8/FP8 builder flag; the per-layer precision comes from the graph's types, as counted here.
"""
from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .trt_compat import Problem, supported_ops

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
MATMULS = ("MatMul", "Gemm")
EXAMPLES = 3  # node names quoted per problem class
# ONNX TensorProto element types of quantized tensors -> precision names (ONNX default: uint8)
_QTYPES = {3: "int8", 2: "uint8", 17: "fp8", 18: "fp8-e4m3fnuz", 19: "fp8-e5m2", 20: "fp8-e5m2fnuz", 21: "uint4",
           22: "int4", 23: "fp4"}
# the names onnx-tensorrt's matrix gives DequantizeLinear's types, in the names above
_TABLE_NAMES = {"INT8": "int8", "FP8": "fp8", "FP4": "fp4", "INT4": "int4"}
ERROR, WARNING = "error", "warning"


def trt_quant_types() -> set[str]:
    """The quantized types TensorRT's parser takes on a DequantizeLinear (from ``trt_ops.json``)."""
    types = supported_ops()["supported"]["DequantizeLinear"]["types"]
    return {_TABLE_NAMES[t] for t in types if t in _TABLE_NAMES}


@dataclass
class GraphQuant:
    """One graph's Q/DQ census: matmuls per precision, Q/DQ nodes, quantized initializers, problems."""

    graph: str
    matmuls: Counter = field(default_factory=Counter)  # "int8" / "fp8" / float type / "one-input" / "mixed"
    one_input: list = field(default_factory=list)  # names of matmuls with exactly one quantized input
    qdq_nodes: int = 0
    payload: set = field(default_factory=set)  # initializers a DequantizeLinear reads (quantized weights)
    qparams: set = field(default_factory=set)  # scale and zero-point initializers
    activation_scales: dict = field(default_factory=dict)  # weight key -> the per-tensor scale of its activation
    problems: list = field(default_factory=list)


class _Index:
    def __init__(self, graph, base_dir):
        self.graph, self.base_dir = graph, base_dir
        self.inits = {t.name: t for t in graph.initializer}
        self.producer = {o: n for n in graph.node for o in n.output if o}

    def constant(self, name: str):
        """The initializer or Constant node holding ``name`` (through Identity), else None."""
        if name in self.inits:
            return self.inits[name]
        n = self.producer.get(name)
        if n is not None and n.op_type == "Identity":
            return self.constant(n.input[0])
        if n is not None and n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    return a.t
        return None

    def values(self, tensor):
        from onnx import numpy_helper

        return numpy_helper.to_array(tensor, base_dir=str(self.base_dir or ""))

    def elem_type(self, name: str) -> int | None:
        t = self.constant(name)
        if t is not None:
            return t.data_type
        for vi in list(self.graph.value_info) + list(self.graph.input):
            if vi.name == name:
                return vi.type.tensor_type.elem_type
        return None


def _qtype(node, ix: _Index) -> str:
    """The quantized type of a Q/DQ node: its zero point's type, else ``output_dtype``, else the quantized input's
    type (DequantizeLinear), else ONNX's default uint8."""
    if len(node.input) > 2 and node.input[2]:
        t = ix.elem_type(node.input[2])
        if t is not None:
            return _QTYPES.get(t, f"type {t}")
    for a in node.attribute:
        if a.name == "output_dtype" and a.i:
            return _QTYPES.get(a.i, f"type {a.i}")
    if node.op_type == "DequantizeLinear":
        src = ix.producer.get(node.input[0])
        if src is not None and src.op_type == "QuantizeLinear":
            return _qtype(src, ix)
        t = ix.elem_type(node.input[0])
        if t is not None:
            return _QTYPES.get(t, f"type {t}")
    return "uint8"


def _check_qdq(node, ix: _Index, gq: GraphQuant, ok_types: set):
    import numpy as np

    name = node.name or f"{node.op_type}({node.input[0]})"
    bad = lambda kind, msg: gq.problems.append(Problem(gq.graph, kind, name, msg, ERROR))  # noqa: E731
    qtype = _qtype(node, ix)
    if qtype not in ok_types:
        bad("qdq-type", f"quantizes to {qtype}; TensorRT takes {', '.join(sorted(ok_types))} (UINT8 only as a "
                        f"network input/output)")
    data = ix.constant(node.input[0])
    if data is not None and node.op_type == "DequantizeLinear":
        gq.payload.add(data.name)
    scale = ix.constant(node.input[1])
    if scale is None:
        bad("qdq-scale", "the scale is computed at run time; TensorRT needs a build-time constant")
    else:
        gq.qparams.add(scale.name)
        s = ix.values(scale)
        if not np.all(s > 0):
            bad("qdq-scale", "a scale coefficient is <= 0; TensorRT needs them strictly positive")
        if s.size > 1:
            if data is None:
                bad("qdq-axis", f"per-axis scale ({s.size}) on an activation; TensorRT quantizes activations per "
                                f"tensor")
            else:
                axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
                dims = list(data.dims)
                if s.ndim == 1 and not (-len(dims) <= axis < len(dims) and dims[axis] == s.size):
                    bad("qdq-axis", f"{s.size} scales for axis {axis} of a {dims} tensor")
    if len(node.input) > 2 and node.input[2]:
        zp = ix.constant(node.input[2])
        if zp is None:
            bad("qdq-zero-point", "the zero point is computed at run time; TensorRT needs a constant zero")
        else:
            gq.qparams.add(zp.name)
            z = ix.values(zp)
            if qtype.startswith("fp"):
                z = z.astype(np.float32)
            if np.any(z != 0):
                bad("qdq-zero-point", "the zero point is not zero (asymmetric); TensorRT quantizes symmetrically")


def analyze(model, name: str, float_type: str = "fp32", base_dir=None) -> GraphQuant:
    """The Q/DQ census and problems of one ONNX graph (external data only read for scales and zero points)."""
    ix = _Index(model.graph, base_dir)
    gq = GraphQuant(name)
    ok = trt_quant_types()
    for node in model.graph.node:
        if node.op_type in QDQ_OPS and node.domain in ("", "ai.onnx"):
            gq.qdq_nodes += 1
            _check_qdq(node, ix, gq, ok)
    for node in model.graph.node:
        if node.op_type not in MATMULS:
            continue
        types, dqs = [], []
        for i in node.input[:2]:
            p = ix.producer.get(i)
            dq = p if p is not None and p.op_type == "DequantizeLinear" else None
            dqs.append(dq)
            types.append(_qtype(dq, ix) if dq is not None else None)
        q = [t for t in types if t is not None]
        where = node.name or node.op_type
        if len(q) == 2:
            _record_activation_scale(dqs, ix, gq)
        if len(q) == 2 and not set(q) <= ok:
            gq.matmuls[" x ".join(q) + " (not TensorRT types)"] += 1  # the qdq-type errors name the nodes
        elif len(q) == 2 and q[0] == q[1]:
            gq.matmuls[q[0]] += 1
        elif len(q) == 2:
            gq.matmuls["mixed"] += 1
            gq.problems.append(Problem(name, "qdq-mixed", where, f"inputs quantized to {q[0]} and {q[1]}: not one "
                                                                 f"quantized kernel", WARNING))
        elif len(q) == 1 and ix.constant(next(d for d in dqs if d is not None).input[0]) is not None:
            # a DequantizeLinear on the (constant) weight only: weight-only quantization, the int8 weight is
            # stored and dequantized into a float GEMM (Torch-TensorRT's weight-only examples: "storage + DQ +
            # high-precision GEMM"); intended, not a placement problem
            gq.matmuls[f"{q[0]} weight-only"] += 1
        elif len(q) == 1:
            gq.matmuls["one-input"] += 1
            gq.one_input.append(where)
            gq.problems.append(Problem(name, "qdq-one-input", where,
                                       f"one input is quantized: TensorRT runs it in "
                                       f"{float_type}, not {q[0]} (quantize both matmul inputs)", WARNING))
        else:
            gq.matmuls[float_type] += 1
    return gq


def _record_activation_scale(dqs, ix: _Index, gq: GraphQuant):
    """For a weight x activation matmul: its activation's per-tensor scale, keyed by the weight (same key in every
    size's graph, :func:`_key`), so the sizes' scales of one trunk matmul can be compared."""
    weight = [ix.constant(d.input[0]) for d in dqs]
    if sum(w is not None for w in weight) != 1:
        return
    act = dqs[0] if weight[0] is None else dqs[1]
    w = weight[0] if weight[0] is not None else weight[1]
    scale = ix.constant(act.input[1])
    if scale is not None:
        v = ix.values(scale)
        if v.size == 1:
            gq.activation_scales[_key(w)] = float(v.reshape(-1)[0])


def activation_scale_spread(census: dict[str, GraphQuant]) -> dict:
    """How the sizes' activation scales of the trunk's quantized matmuls (weights every graph shares) differ. One
    trunk engine holds ONE scale per activation (a build-time constant), so scales that differ per size must be
    merged (calibrated on every size together) before the trunk is built once."""
    per = [c.activation_scales for c in census.values()]
    common = set.intersection(*(set(p) for p in per)) if per else set()
    ratios = [max(p[k] for p in per) / min(p[k] for p in per) for k in common]
    differ = sum(r > 1 + 1e-6 for r in ratios)
    return {"trunk_matmuls": len(common), "differ_between_sizes": differ,
            "max_ratio": round(max(ratios), 4) if ratios else 1.0,
            "note": "one trunk engine takes one scale per activation: calibrate the trunk on every size's "
                    "activations together, or build a trunk engine per size (its int8 weights once per size)"}


def analyze_file(path, float_type: str = "fp32") -> GraphQuant:
    import onnx

    path = Path(path)
    return analyze(onnx.load(str(path), load_external_data=False), path.name, float_type, path.parent)


def bundle_quant(folder, manifest) -> dict[str, GraphQuant]:
    """{variant file: census} of a quantized bundle's transformer graphs (the text encoder stays float)."""
    folder = Path(folder)
    return {v.file: analyze_file(folder / v.file, manifest.dtype) for v in manifest.variants
            if (folder / v.file).is_file()}


# ---- one line per problem class --------------------------------------------------------------------------
def grouped(problems: list[Problem]) -> list[tuple[str, str]]:
    """[(severity, line)]: one line per (severity, kind): how many, in which graphs, what (each distinct message
    once, up to a few) and a few of the nodes."""
    groups = defaultdict(list)
    for p in problems:
        groups[(p.severity, p.kind)].append(p)
    out = []
    for (sev, kind), ps in sorted(groups.items(), key=lambda kv: (kv[0][0] != ERROR, kv[0][1])):
        where = ", ".join(f"{g} {n}" for g, n in Counter(p.graph for p in ps).items())
        messages = list(dict.fromkeys(p.message for p in ps))
        what = "; ".join(messages[:EXAMPLES]) + (f" (+{len(messages) - EXAMPLES} other messages)"
                                                  if len(messages) > EXAMPLES else "")
        nodes = list(dict.fromkeys(p.where for p in ps))
        eg = ", ".join(nodes[:EXAMPLES]) + (f" (+{len(nodes) - EXAMPLES} more)" if len(nodes) > EXAMPLES else "")
        out.append((sev, f"{kind}: {len(ps)} node(s) ({where}): {what}; e.g. {eg}"))
    return out


# ---- precision per layer and the quantized weight bytes -----------------------------------------------------
def _key(t) -> str:
    """A tensor's identity across graphs: its offset in weights.bin (deduplicated by content), else its bytes."""
    for e in t.external_data:
        if e.key == "offset":
            return f"bin:{e.value}"
    return "raw:" + hashlib.sha256(t.SerializeToString()).hexdigest()


def _nbytes(t) -> int:
    from onnx import helper

    length = next((int(e.value) for e in t.external_data if e.key == "length"), None)
    if length is not None:
        return length
    if t.raw_data:
        return len(t.raw_data)
    n = 1
    for d in t.dims:
        n *= d
    try:
        return n * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except Exception:  # 4-bit types
        return (n + 1) // 2


def quantized_weights(folder, manifest, census: dict[str, GraphQuant] | None = None) -> dict:
    """Weight bytes of the plan measured from a quantized bundle's graphs: quantized payloads, scales / zero points
    and float tensors, for the trunk (tensors every size's graph shares) and each size's own (stem, head, LoRA);
    with the fp32 bytes the same tensors would take unquantized."""
    import onnx

    folder = Path(folder)
    census = census or bundle_quant(folder, manifest)
    tensors = {}  # key -> (class, bytes, fp32 bytes)
    owners = defaultdict(set)
    for v in manifest.variants:
        g = onnx.load(str(folder / v.file), load_external_data=False).graph
        gq = census[v.file]
        for t in g.initializer:
            k, n = _key(t), _nbytes(t)
            if t.name in gq.payload:
                elems = 1
                for d in t.dims:
                    elems *= d
                tensors[k] = ("quantized", n, 4 * elems)
            elif t.name in gq.qparams:
                tensors[k] = ("scales", n, 0)
            else:
                tensors[k] = ("float", n, n)
            owners[k].add(v.size)
    sizes = {v.size for v in manifest.variants}
    empty = lambda: {"quantized": 0, "scales": 0, "float": 0, "fp32_equivalent": 0}  # noqa: E731
    trunk, own = empty(), {str(k): empty() for k in sorted(sizes)}
    for k, (cls, n, n32) in tensors.items():
        row = trunk if owners[k] == sizes else own[str(min(owners[k]))]
        row[cls] += n
        row["fp32_equivalent"] += n32
    total = lambda rows: sum(r[c] for r in rows for c in ("quantized", "scales", "float"))  # noqa: E731
    return {"precision": manifest.effective_precision, "trunk": trunk, "per_size": own,
            "plan_total_bytes": total([trunk, *own.values()]),
            "fp32_total_bytes": sum(r["fp32_equivalent"] for r in [trunk, *own.values()]),
            "source": "measured from the bundle's graphs: initializer bytes, the trunk = tensors every size's graph "
                      "shares (one copy in the trunk engine); fp32 = the same tensors unquantized"}


def layer_precision(census: dict[str, GraphQuant]) -> dict:
    """{graph: {"matmuls": {precision: count}, "one_input": [a few names], "qdq_nodes": n}} for the plan."""
    return {g: {"matmuls": dict(sorted(c.matmuls.items())), "qdq_nodes": c.qdq_nodes,
                "one_input_examples": c.one_input[:EXAMPLES]} for g, c in census.items()}


def quantize_plan(plan: dict, folder, manifest, census: dict[str, GraphQuant] | None = None) -> dict:
    """Add a quantized bundle's measured ``quantization`` section to its plan: matmuls per precision per graph,
    the spread of the trunk's activation scales between sizes, the weight bytes measured from the graphs."""
    census = census if census is not None else bundle_quant(folder, manifest)
    plan["quantization"] = {"scheme": "explicit Q/DQ (strongly typed: the precision is the graphs' types)",
                            "layers": layer_precision(census),
                            "activation_scales": activation_scale_spread(census),
                            "weights_measured": quantized_weights(folder, manifest, census)}
    return plan
