"""The TensorRT build plan of a bundle: which engines, which profiles, which flags, and where the weights live.

Plain code (no TensorRT, no torch): the plan is computed from the model config, the :class:`TokenGeometry` and the
sizes, serialised into ``manifest.json`` under :data:`PLAN_KEY`, and read back by ``trt_build`` and the runtime.

Layout ("trunk+stems"): ONE trunk engine (the FLUX blocks, conditioning embedders, RoPE and ``norm_out``) whose
token axis is dynamic, with one optimization profile per size's token count (min = opt = max); and, per size, a
small stem engine (merge k x k tokens + embedding + size identifier) and head engine (de-embedding + residual +
unmerge). TensorRT copies weights into every engine, so the trunk exists in GPU memory exactly once whatever the
number of sizes. Why separate stems/heads rather than inside the trunk behind an index input: they differ in shape
per size (k*k*C channels), so inside one engine they would need one branch per size (If/Where on all of them,
every size's stem computed or a dynamic-shape branch); as separate engines they are static, tiny (FLUX.1-dev k=4:
~7 M parameters of 12 B) and refittable on their own. The per-size LoRA of the trunk's feed-forward layers cannot
leave the trunk (it acts inside every block), so it is stacked per size ([S, r, in] / [S, out, r], a zero row for
size 1) and selected by the ``size_index`` input: stacked LoRA bytes are per size, counted once. The price: fine
steps also run a (zero) rank-r LoRA, ~0.7% of a FLUX.1-dev fine step's FLOPs at rank 32.

The weight numbers in ``plan["weights"]`` are computed here from parameter counts x dtype bytes (not measured on a
GPU): ``plan_total_bytes`` (this layout) vs ``naive_total_bytes`` (one full engine per size, each with its own
copy of the trunk). Activation memory: every execution context (trunk profiles, stems, heads) runs on one stream,
one after the other, so all share ONE user-managed buffer sized at load to the largest
``get_device_memory_size_for_profile_v2``; the I/O buffers are planned here (``plan["memory"]["io"]``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import ConfigError
from ..flops import is_wan
from ..plan import PLAN_KEY, PLAN_VERSION, read_plan  # noqa: F401  (read_plan: re-exported)
from ..shapes import TokenGeometry

LAYOUT = "trunk+stems"
ENGINE_DIR = "trt"
TRUNK_ONNX = "trt_trunk.onnx"  # beside weights.bin: ONNX external data may not point into a parent folder
DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
QUANT_BYTES = {"int8": 1, "fp8": 1}  # explicit quantization (Q/DQ graphs, trt_qdq): bytes per quantized weight
SCALE_BYTES = 4  # one fp32 scale per output channel of a quantized weight
#: what the engine build says when asked for what it cannot build (``trt_build.require_buildable``)
FP8_REFUSED = ("TensorRT cannot be asked for FP8 engines here: a strongly typed network takes FP8 from FP8 Q/DQ "
               "graphs and ddit-export exports none (NVIDIA ModelOpt's FP8 ONNX export is not produced); the FP8 "
               "plan is a description only (trt_plan.make_plan(precision='fp8'))")
INT8_REFUSED = ("the TensorRT engines of an int8 bundle are planned and linted only (`ddit-export trt-check "
                "BUNDLE`): the engine build exports fp32 trunk/stem/head graphs from the torch model and does not "
                "quantize them; bundles built with `--precision int8 --int8-activations s8` (int8 symmetric "
                "activations) are the ones whose Q/DQ graphs pass that lint (the default u8 does not)")
COND_INPUTS = ("encoder_hidden_states", "pooled_projections", "timestep")
TOKEN_AXES = {"hidden": 1, "img_ids": 0}  # the trunk's dynamic token axis, fixed per profile


def require_buildable(plan: dict):
    """Refuse, in one line, a plan the engine build (``trt_build``) cannot honour: FP8 (no FP8 Q/DQ graphs are
    exported) and int8 (the split graphs are exported in fp32, not quantized). A strongly typed network takes its
    precision from the graphs, so building them anyway would give fp32 engines under an int8/fp8 label."""
    if plan.get("precision") == "fp8":
        raise ConfigError(FP8_REFUSED)
    if plan.get("precision") in QUANT_BYTES:
        raise ConfigError(INT8_REFUSED)


def stem_onnx(k: int) -> str:
    return f"trt_stem_k{k}.onnx"


def head_onnx(k: int) -> str:
    return f"trt_head_k{k}.onnx"


WAN_TRUNK_INPUTS = ("hidden", "encoder_hidden_states", "timestep", "pos_ids")


def trunk_inputs(guidance: bool, lora: bool, wan: bool = False) -> tuple[str, ...]:
    """The trunk graph's inputs, in export order: embedded tokens, FLUX's conditioning, RoPE ids, size index. Wan:
    embedded tokens, text states, timestep, the tokens' (frame, row, column) positions, size index."""
    if wan:
        return WAN_TRUNK_INPUTS + (("size_index",) if lora else ())
    return ("hidden",) + COND_INPUTS + ("img_ids", "txt_ids") + (("size_index",) if lora else ()) + \
        (("guidance",) if guidance else ())


# ---- parameter counts (diffusers' FluxTransformer2DModel + MultiPatchFlux), checked against torch in tests ----
def _lin(i: int, o: int) -> int:
    return i * o + o


PARTS = ("all", "matrix", "rows")


def _counters(part: str):
    """(linear, vector) parameter counters for one part of the parameters: "all"; "matrix", the linear layers'
    weight matrices (what a Q/DQ build quantizes); "rows", their output channels (one per-channel scale each)."""
    if part not in PARTS:
        raise ConfigError(f"unknown parameter part {part!r}")
    lin = {"all": _lin, "matrix": lambda i, o: i * o, "rows": lambda i, o: o}[part]
    return lin, (lambda n: n if part == "all" else 0)


def _dims(cfg) -> dict:
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    if is_wan(cfg):  # a 3-D patch (t, h, w): a fine token carries prod(patch) x channels values
        prod = 1
        for v in cfg["patch_size"]:
            prod *= v
        return {"d": d, "hd": cfg["attention_head_dim"], "c_in": cfg["in_channels"] * prod,
                "c_out": (cfg.get("out_channels") or cfg["in_channels"]) * prod}
    c_in = cfg["in_channels"] * cfg.get("patch_size", 1) ** 2
    c_out = (cfg.get("out_channels") or cfg["in_channels"]) * cfg.get("patch_size", 1) ** 2
    return {"d": d, "hd": cfg["attention_head_dim"], "c_in": c_in, "c_out": c_out}


def param_counts(cfg: dict, sizes, lora_rank: int, part: str = "all") -> dict:
    """Parameters of the shared trunk (without ``x_embedder``/``proj_out``, which are size 1's stem and head), of
    one size's LoRA, and of each size's stem and head. ``part``: see :func:`_counters` (LoRA matrices count as
    matrices; their rows are not counted)."""
    if is_wan(cfg):
        return _wan_param_counts(cfg, sizes, lora_rank, part)
    _lin, vec = _counters(part)
    m = _dims(cfg)
    d, hd = m["d"], m["hd"]
    cond = (2 if cfg.get("guidance_embeds") else 1) * (_lin(256, d) + _lin(d, d))
    cond += _lin(cfg["pooled_projection_dim"], d) + _lin(d, d) + _lin(cfg["joint_attention_dim"], d)
    double = 2 * _lin(d, 6 * d) + 8 * _lin(d, d) + vec(4 * hd) + 2 * (_lin(d, 4 * d) + _lin(4 * d, d))
    single = _lin(d, 3 * d) + _lin(d, 4 * d) + _lin(5 * d, d) + 3 * _lin(d, d) + vec(2 * hd)
    trunk = cond + cfg["num_layers"] * double + cfg["num_single_layers"] * single + _lin(d, 2 * d)
    lora = lora_rank * (cfg["num_layers"] * 10 * d + cfg["num_single_layers"] * 11 * d) * (part != "rows")
    stem, head = {}, {}
    for k in sizes:
        ci, co = k * k * m["c_in"], k * k * m["c_out"]
        stem[k] = _lin(ci, d) + (vec(d) if k > 1 else 0)  # embedding (+ size identifier)
        head[k] = _lin(d, co) + (_lin(ci, co) if k > 1 else 0)  # de-embedding (+ residual)
    return {"trunk": trunk, "lora_per_size": lora if any(k > 1 for k in sizes) else 0, "stem": stem, "head": head}


def _wan_param_counts(cfg: dict, sizes, lora_rank: int, part: str = "all") -> dict:
    """:func:`param_counts` of diffusers' WanTransformer3DModel (text-to-video: no image embedder) + MultiPatchWan:
    the trunk is the condition embedder, the blocks and the output modulation; ``patch_embedding`` and
    ``proj_out`` are size 1's stem and head."""
    _lin, vec = _counters(part)
    m = _dims(cfg)
    d, f, layers = m["d"], cfg["ffn_dim"], cfg["num_layers"]
    cond = _lin(cfg["freq_dim"], d) + _lin(d, d) + _lin(d, 6 * d) + _lin(cfg["text_dim"], d) + _lin(d, d)
    qk_norm = vec(2 * d) if cfg.get("qk_norm") else 0  # RMSNorm across heads on q and k, in each attention
    block = 2 * (4 * _lin(d, d) + qk_norm) + _lin(d, f) + _lin(f, d) + vec(6 * d)
    if cfg.get("cross_attn_norm", True):
        block += vec(2 * d)  # norm2: an affine LayerNorm before the cross-attention
    trunk = cond + layers * block + vec(2 * d)  # + the output scale_shift_table
    lora = lora_rank * layers * 2 * (d + f) * (part != "rows")  # ffn.net.0.proj (d -> f) and ffn.net.2 (f -> d)
    stem, head = {}, {}
    for k in sizes:
        ci, co = k * k * m["c_in"], k * k * m["c_out"]
        stem[k] = _lin(ci, d) + (vec(d) if k > 1 else 0)
        head[k] = _lin(d, co) + (_lin(ci, co) if k > 1 else 0)
    return {"trunk": trunk, "lora_per_size": lora if any(k > 1 for k in sizes) else 0, "stem": stem, "head": head}


def weight_bytes(cfg: dict, sizes, lora_rank: int, dtype: str, precision: str | None = None) -> dict:
    """GPU bytes of weights: this plan (trunk once) vs one full engine per size (trunk once per size). Quantized
    (``precision`` int8/fp8, explicit Q/DQ): the linear layers' weight matrices at 1 byte plus one fp32 scale per
    output channel, every other parameter (biases, norms) in ``dtype``."""
    precision = precision or dtype
    b, q = DTYPE_BYTES[dtype], QUANT_BYTES.get(precision)
    p = param_counts(cfg, sizes, lora_rank)
    mat = param_counts(cfg, sizes, lora_rank, "matrix") if q else None
    rows = param_counts(cfg, sizes, lora_rank, "rows") if q else None

    def nb(key, k=None, quantized=True):
        get = (lambda c: c[key]) if k is None else (lambda c: c[key][k])  # noqa: E731
        if not (q and quantized):
            return get(p) * b
        return get(mat) * q + get(rows) * SCALE_BYTES + (get(p) - get(mat)) * b

    def totals(quantized):
        lora_rows = len(sizes) if p["lora_per_size"] else 0  # size 1's row is zeros
        trunk_engine = nb("trunk", quantized=quantized) + lora_rows * nb("lora_per_size", quantized=quantized)
        stem = {str(k): nb("stem", k, quantized) for k in sizes}
        head = {str(k): nb("head", k, quantized) for k in sizes}
        naive = sum(nb("trunk", quantized=quantized) + (nb("lora_per_size", quantized=quantized) if k > 1 else 0)
                    + nb("stem", k, quantized) + nb("head", k, quantized) for k in sizes)
        return trunk_engine, lora_rows, stem, head, naive

    trunk_engine, lora_rows, stem, head, naive = totals(True)
    total = trunk_engine + sum(stem.values()) + sum(head.values())
    out = {"dtype": dtype, "precision": precision, "trunk_bytes": nb("trunk"), "trunk_engine_bytes": trunk_engine,
           "lora_stack_bytes": lora_rows * nb("lora_per_size"), "stem_bytes": stem, "head_bytes": head,
           "trunk_copies": 1, "plan_total_bytes": total,
           "naive_trunk_copies": len(sizes), "naive_total_bytes": naive,
           "source": "computed from parameter counts x dtype bytes (not measured on a GPU)"}
    if q:
        t, _, st, hd, _ = totals(False)
        out["unquantized_total_bytes"] = t + sum(st.values()) + sum(hd.values())
        out["source"] = (f"computed from parameter counts: weight matrices at {q} byte ({precision}) + one fp32 scale "
                         f"per output channel, other parameters at {dtype} (not measured on a GPU)")
    return out


# ---- the plan -------------------------------------------------------------------------------------------
def _batch(settings) -> tuple[int, int, int]:
    mx = settings.max_batch
    return 1, settings.opt_batch or mx, mx


def _profile(shapes: dict, batch) -> dict:
    """Every input's (min, opt, max): "batch" becomes the batch range, every other dim is fixed."""
    out = {}
    for name, shape in shapes.items():
        out[name] = [[b if d == "batch" else d for d in shape] for b in batch]
    return out


def _trunk_shapes(cfg, geom: TokenGeometry, k: int, text_len: int, guidance: bool, lora: bool) -> dict:
    d, n = _dims(cfg)["d"], geom.tokens(k)
    if is_wan(cfg):
        s = {"hidden": ("batch", n, d), "encoder_hidden_states": ("batch", text_len, cfg["text_dim"]),
             "timestep": ("batch",), "pos_ids": (n, 3)}
        if lora:
            s["size_index"] = (1,)
        return s
    s = {"hidden": ("batch", n, d), "encoder_hidden_states": ("batch", text_len, cfg["joint_attention_dim"]),
         "pooled_projections": ("batch", cfg["pooled_projection_dim"]), "timestep": ("batch",),
         "img_ids": (n, 3), "txt_ids": (text_len, 3)}
    if lora:
        s["size_index"] = (1,)
    if guidance:
        s["guidance"] = ("batch",)
    return s


def make_plan(cfg: dict, geom: TokenGeometry, sizes, text_len: int, dtype: str, lora_rank: int,
              settings=None, precision: str | None = None) -> dict:
    """The plan for ``sizes`` of a model config at one resolution (see the module docstring for the layout).
    ``dtype``: the graphs' float type; ``precision``: int8 / fp8 for Q/DQ graphs (default: ``dtype``)."""
    from ..settings import TrtSettings

    settings = settings or TrtSettings()
    precision = precision or dtype
    if dtype not in DTYPE_BYTES:
        raise ConfigError(f"unknown dtype {dtype!r}")
    if precision != dtype and precision not in QUANT_BYTES:
        raise ConfigError(f"unknown precision {precision!r} for {dtype} graphs (one of {dtype}, "
                          f"{', '.join(QUANT_BYTES)})")
    sizes = tuple(sorted(int(k) for k in sizes))
    missing = [k for k in sizes if not geom.available(k)]
    if missing:
        raise ConfigError(f"patch size(s) {missing} do not divide the token grid {geom.grid}")
    guidance, lora = bool(cfg.get("guidance_embeds")), lora_rank > 0 and any(k > 1 for k in sizes)
    batch = _batch(settings)
    wb = weight_bytes(cfg, sizes, lora_rank, dtype, precision)
    n1, c, d = geom.tokens(1), geom.token_channels, _dims(cfg)["d"]
    fine_shapes = _trunk_shapes(cfg, geom, 1, text_len, guidance, lora)
    wan = is_wan(cfg)
    trunk = {"name": "trunk", "role": "trunk", "onnx": TRUNK_ONNX, "plan": f"{ENGINE_DIR}/trunk.plan",
             "sizes": list(sizes), "inputs": list(trunk_inputs(guidance, lora, wan)), "outputs": ["trunk_out"],
             "batch_inputs": [n for n, s in fine_shapes.items() if s[0] == "batch"],
             "token_axes": {"hidden": 1, "pos_ids": 0} if wan else TOKEN_AXES,
             "shared": True, "weights_bytes": wb["trunk_engine_bytes"],
             "profiles": [{"size": k, "tokens": geom.tokens(k),
                           "shapes": _profile(_trunk_shapes(cfg, geom, k, text_len, guidance, lora), batch)}
                          for k in sizes]}
    engines = [trunk]
    for k in sizes:
        nk = geom.tokens(k)
        head_in = {"trunk_out": ("batch", nk, d)} | ({"hidden_states": ("batch", n1, c)} if k > 1 else {})
        for role, onnx_file, shapes, outs in (
                ("stem", stem_onnx(k), {"hidden_states": ("batch", n1, c)}, ["hidden"]),
                ("head", head_onnx(k), head_in, ["velocity"])):
            engines.append({"name": f"{role}_k{k}", "role": role, "size": k, "onnx": onnx_file,
                            "plan": f"{ENGINE_DIR}/{role}_k{k}.plan", "inputs": list(shapes), "outputs": outs,
                            "batch_inputs": list(shapes), "token_axes": {},
                            "shared": False, "weights_bytes": wb[f"{role}_bytes"][str(k)],
                            "profiles": [{"size": k, "tokens": nk, "shapes": _profile(shapes, batch)}]})
    return {"plan_version": PLAN_VERSION, "layout": LAYOUT, "precision": precision, "dtype": dtype,
            "sizes": list(sizes),
            "size_index": {str(k): i for i, k in enumerate(sizes)} if lora else {},
            "grid": list(geom.grid), "tokens": {str(k): geom.tokens(k) for k in sizes}, "text_len": text_len,
            "batch": {"min": batch[0], "opt": batch[1], "max": batch[2]},
            "flags": _flags(dtype, settings, precision), "engines": engines, "weights": wb,
            "memory": _memory(cfg, geom, sizes, text_len, dtype, batch[2], guidance, engines), "build": None}


def _flags(dtype: str, settings, precision: str | None = None) -> dict:
    precision = precision or dtype
    return {"strongly_typed": True,  # precision comes from the exported ONNX dtypes (always so in TensorRT 11)
            # Q/DQ graphs: explicit quantization under strong typing; "precision-control build flags are not
            # required and should not be specified" (TensorRT "Explicit Quantization"): no INT8/FP8 builder flag
            "precision": precision, "quantization": "explicit Q/DQ" if precision in QUANT_BYTES else None,
            "tf32": bool(settings.tf32 and dtype == "fp32"),
            "builder_optimization_level": settings.optimization_level,
            "timing_cache": settings.timing_cache or f"{ENGINE_DIR}/timing.cache",
            "strip_plan": settings.strip_plan,  # weight-stripped plans, refitted at load from weights.bin
            "refit_identical": settings.strip_plan,  # not REFIT: it may drop GEMM biases and blocks fusions
            "workspace_bytes": int(settings.workspace_gib * 2**30) if settings.workspace_gib else None}


def _memory(cfg, geom, sizes, text_len, dtype, max_batch, guidance, engines) -> dict:
    """I/O buffers, pre-allocated once: the largest size of each tensor, shared by every context that uses it."""
    b, bb = max_batch, DTYPE_BYTES[dtype]
    n1, c, d = geom.tokens(1), geom.token_channels, _dims(cfg)["d"]
    io = {"latent": b * n1 * c, "velocity": b * n1 * c, "hidden": b * n1 * d, "trunk_out": b * n1 * d,
          "timestep": b}
    if is_wan(cfg):
        io["encoder_hidden_states"] = b * text_len * cfg["text_dim"]
    else:
        io.update(encoder_hidden_states=b * text_len * cfg["joint_attention_dim"],
                  pooled_projections=b * cfg["pooled_projection_dim"], txt_ids=text_len * 3)
    if guidance:
        io["guidance"] = b
    io = {k: v * bb for k, v in io.items()}
    ids = "pos_ids" if is_wan(cfg) else "img_ids"
    io.update({f"{ids}_k{k}": geom.tokens(k) * 3 * bb for k in sizes})  # constant per size, written at load
    contexts = [f"{e['name']}/profile{i}" for e in engines for i in range(len(e["profiles"]))]
    return {"activations": {"strategy": "one user-managed buffer (ExecutionContextAllocationStrategy.USER_MANAGED)",
                            "size_rule": "max over contexts of engine.get_device_memory_size_for_profile_v2(p), "
                                         "known only after the build; recorded in plan['build']",
                            "contexts": contexts},
            "io": io, "io_bytes": sum(io.values())}


def plan_from_manifest(manifest, settings=None) -> dict:
    """The plan of a built ONNX bundle (its config, resolution, sizes, dtype and text length)."""
    from ..shapes import geometry_from_entry

    m = manifest.model
    geom = geometry_from_entry(m)
    return make_plan(m["transformer_config"], geom, manifest.sizes, m["text_len"], manifest.dtype,
                     m["lora_rank"], settings, precision=manifest.effective_precision)


# ---- manifest I/O: the plan lives in manifest.json under PLAN_KEY --------------------------------------------
def update_manifest(folder, *, plan: dict | None = None, files: dict | None = None, tensors: dict | None = None):
    """Rewrite manifest.json atomically with the plan, more file hashes and more tensor tables. Goes through the
    raw JSON, not :class:`Manifest`, so that keys this version of ``bundle.py`` does not model survive."""
    from ..bundle import MANIFEST

    path = Path(folder) / MANIFEST
    d = json.loads(path.read_text())
    if plan is not None:
        d[PLAN_KEY] = plan
    d["files"].update(files or {})
    d.setdefault("tensors", {}).update(tensors or {})
    tmp = path.with_name(f".{MANIFEST}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(d, indent=1))
    tmp.replace(path)


def summary(plan: dict) -> str:
    """Human lines: engines, profiles and the weights in GPU memory (computed, not measured); for a quantized plan
    also each graph's matmuls per precision and the weights measured from the bundle's Q/DQ graphs."""
    w = plan["weights"]
    dtype = plan.get("dtype", plan["precision"])
    typed = "" if dtype == plan["precision"] else f" ({dtype} graphs, explicit Q/DQ, strongly typed)"
    lines = [f"TensorRT plan ({plan['layout']}, {plan['precision']}{typed}, sizes {plan['sizes']}):"]
    for e in plan["engines"]:
        prof = ", ".join(f"k={p['size']}:{p['tokens']} tok" for p in e["profiles"])
        lines.append(f"  {e['name']:<8} {fmt_bytes(e['weights_bytes']):>10}  profiles [{prof}]")
    lines.append(f"  weights in GPU memory: {fmt_bytes(w['plan_total_bytes'])} (trunk once) vs "
                 f"{fmt_bytes(w['naive_total_bytes'])} for one engine per size ({w['source']})")
    if "unquantized_total_bytes" in w:
        lines.append(f"    unquantized ({dtype}): {fmt_bytes(w['unquantized_total_bytes'])} "
                     f"({w['plan_total_bytes'] / w['unquantized_total_bytes']:.2f}x)")
    return "\n".join(lines + quantized_lines(plan.get("quantization")))


def quantized_lines(q: dict | None) -> list[str]:
    """The plan's ``quantization`` section (``trt_qdq.quantize_plan``) as lines."""
    if not q:
        return []
    lines = ["  precision per layer (matmuls; INT8/FP8 where both inputs are Q/DQ, else the graphs' float type):"]
    for graph, row in q["layers"].items():
        counts = ", ".join(f"{n} {t}" for t, n in row["matmuls"].items())
        lines.append(f"    {graph}: {counts} ({row['qdq_nodes']} Q/DQ nodes)")
    m = q["weights_measured"]
    parts = lambda r: f"{fmt_bytes(r['quantized'])} {m['precision']} + {fmt_bytes(r['scales'])} scales + " \
                      f"{fmt_bytes(r['float'])} float"  # noqa: E731
    lines.append(f"  weights measured from the bundle: {fmt_bytes(m['plan_total_bytes'])} (fp32: "
                 f"{fmt_bytes(m['fp32_total_bytes'])}, {m['plan_total_bytes'] / max(m['fp32_total_bytes'], 1):.2f}x); "
                 f"trunk {parts(m['trunk'])}")
    a = q["activation_scales"]
    if a["trunk_matmuls"]:
        lines.append(f"  activation scales: {a['differ_between_sizes']} of {a['trunk_matmuls']} trunk matmuls differ "
                     f"between sizes (max {a['max_ratio']:.2f}x): {a['note']}")
    return lines


def fmt_bytes(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"
