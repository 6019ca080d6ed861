"""``build --precision int8`` (issue 22): calibrate on the model's own generations at every patch size, then quantize
each exported fp32 variant graph with ONNX Runtime's static quantizer (QDQ, per-channel int8 weights).

Why ONNX Runtime's quantizer and not NVIDIA ModelOpt: ``modelopt.torch.quantization`` (0.47) quantizes the model on
the CPU, but its fake-quant op runs as an autograd.Function on CPU tensors that ``torch.export`` cannot trace
(``torch.onnx.export(dynamo=True)`` fails in step 1), and the TorchScript exporter has no ``aten::rms_norm`` (FLUX's
RMSNorm): no QDQ graph came out (README "INT8 bundles").

Calibration: a few generations on calibration captions with a static schedule that rotates through the sizes
(prompt i takes size ``sizes[(step + i) % n]`` at each step), so every size sees every noise level on trajectories
the model itself produced; each step's graph inputs are recorded for that size. Every size is calibrated on its own
inputs (its own activation scales: tiny); the weights' int8 payloads and scales depend on the weight alone
(symmetric per-channel), so the trunk's quantized weights are identical bytes in every graph and the shared weights
file stores them once. The activation ranges of each size are kept in the bundle (``calibration/ranges_k<k>.json``,
ONNX Runtime's calibration-cache format) with a per-size summary in the manifest.

Activations (``build --int8-activations``): ``u8`` (default) uint8 per tensor with a zero point (asymmetric MinMax),
the layout ONNX Runtime's CPU kernels are tuned for; ``s8`` int8 per tensor with zero point 0 (symmetric: the scale
covers max(|lowest|, |highest|)), the only activation layout TensorRT's ONNX parser takes (``trt_qdq``). The weights
and the calibration are the same in both.

Only the weight matmuls are quantized: the activation x activation ones (attention's Q.K^T and P.V) stay fp32
(:func:`activation_matmuls`; on flux-mini-64 that took the fine graph's velocity error from 9.5 % to 3.7 % and made
the int8 fine step faster instead of slower, README "INT8 bundles").
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..runtime.backends.base import BackendBase, variant_feeds

CALIBRATION_DIR = "calibration"
OP_TYPES = ("MatMul", "Gemm")  # the matmuls: ORT CPU fuses DQ -> MatMul -> Q into integer matmuls (VNNI)
QUANTIZER = "onnxruntime.quantization.quantize_static"
#: the matmul groups (:func:`matmul_groups`) given int8 weights and fp32 activations: on flux-mini-64 quantizing
#: their activations per tensor cost most of the coarse graphs' error (velocity rel. RMS k4 0.172 -> 0.055, k2
#: 0.135 -> 0.034 weight-only; docs/results/int8-sensitivity-flux-mini-64.md); they are a small share of the time
WEIGHT_ONLY_GROUPS = ("embed", "unembed", "low_rank", "conditioning", "text")
#: ``--int8-activations`` -> (onnxruntime QuantType name, ActivationSymmetric, the manifest's description)
ACTIVATIONS = {"u8": ("QUInt8", False, "uint8 asymmetric per-tensor, MinMax, each size its own ranges"),
               "s8": ("QInt8", True, "int8 symmetric per-tensor (zero point 0), MinMax, each size its own ranges")}


def calibration_scenes(model, settings, log=print) -> tuple[list, Path]:
    """The calibration captions the build will generate, checked before any export: the file exists, holds scene
    captions, and the model reads every one of the first ``calibration_samples`` (else one ``error:`` line)."""
    from ..quality.calibrate import readable
    from ..quality.policies import default_prompts_path, read_prompts

    path = Path(settings.calibration_prompts) if settings.calibration_prompts else default_prompts_path()
    if model.extras.get("text_encoder") is None:
        raise ConfigError(f"--precision {settings.precision} calibrates on generated images: model {model.name} "
                          f"has no text encoder in this package (pixel models: flux-mini-64, flux-mini, tiny)")
    scenes = read_prompts(path)[:settings.calibration_samples]
    readable(model, scenes, drop=False, log=log)
    return scenes, path


def calibration_schedule(sizes: tuple, steps: int, offset: int) -> tuple:
    """The static schedule of calibration generation ``offset``: sizes rotated so each size sees every step."""
    sizes = sorted(sizes)
    return tuple(sizes[(i + offset) % len(sizes)] for i in range(steps))


class RecordingBackend(BackendBase):
    """The torch backend, recording every call's graph inputs (numpy, as the ONNX Runtime backend feeds them)."""

    name = "record"

    def __init__(self, model, guidance: bool):
        from ..runtime.backends.torch import TorchBackend

        self.inner = TorchBackend(model)
        self.sizes = self.inner.sizes
        self.guidance = guidance
        self.feeds: dict[int, list[dict]] = {}

    def run(self, size, latents, cond, timestep, guidance, grid):
        f = variant_feeds(False, latents, cond, timestep, guidance, grid, self.guidance)
        self.feeds.setdefault(size, []).append(
            {k: v.detach().cpu().float().numpy().copy() for k, v in f.items()})
        return self.inner.run(size, latents, cond, timestep, guidance, grid)


def collect(model, scenes, sizes: tuple, *, seed: int = 0, progress: bool = False) -> dict[int, list[dict]]:
    """Generate each calibration caption (batch 1) with its rotated schedule; returns {size: [feeds, ...]}."""
    from tqdm.auto import tqdm

    from ..api import build_settings
    from ..runtime.generate import generate

    rec = RecordingBackend(model.transformer, bool(model.guidance_embeds))
    for i, s in enumerate(tqdm(scenes, desc="calibrate", disable=not progress)):
        gs = build_settings(model, prompts=[s.caption], seed=seed + i,
                            static=calibration_schedule(sizes, model.default_steps, i), cache={"mode": "off"})
        generate(model, rec, gs, progress=False, decode=False)
    missing = [k for k in sizes if not rec.feeds.get(k)]
    if missing:
        raise ConfigError(f"calibration never ran size(s) {missing}: give more --calibration-samples or steps")
    return rec.feeds


class FeedReader:
    """onnxruntime.quantization.CalibrationDataReader over recorded feeds (only the inputs the graph takes)."""

    def __init__(self, feeds: list[dict], names: list[str]):
        self.feeds, self.names, self.i = feeds, names, 0

    def get_next(self):
        if self.i >= len(self.feeds):
            return None
        f = self.feeds[self.i]
        self.i += 1
        return {n: f[n] for n in self.names}

    def __len__(self):
        return len(self.feeds)

    def set_range(self, start_index: int, end_index: int):  # CalibStridedMinMax
        self.feeds = self.feeds[start_index:end_index]
        self.i = 0

    def rewind(self):
        self.i = 0


def weight_tensors(graph) -> set[str]:
    """The names of a graph's tensors that are weights: its initializers, Constant outputs, and the outputs of
    nodes whose every input is a weight (a Transpose / Cast / DequantizeLinear of an initializer). Everything
    else (graph inputs and what is computed from them) is an activation. ONNX graphs list nodes in topological
    order, so one pass decides every tensor."""
    weights = {t.name for t in graph.initializer}
    for n in graph.node:
        ins = [i for i in n.input if i]
        if n.op_type == "Constant" or (ins and all(i in weights for i in ins)):
            weights.update(o for o in n.output if o)
    return weights


def activation_matmuls(graph) -> list[str]:
    """The names of the MatMul / Gemm nodes whose two (first) inputs are both activations: attention's Q·Kᵀ and
    P·V. They are left in fp32 (``nodes_to_exclude``): quantizing both operands of a matmul per-tensor (softmax
    probabilities to uint8 among them) costs most of the int8 error and, on ONNX Runtime's CPU, no time is saved
    there; only the weight matmuls are quantized."""
    weights = weight_tensors(graph)
    out = []
    for n in graph.node:
        if n.op_type in OP_TYPES and len(n.input) > 1 and n.input[0] not in weights and n.input[1] not in weights:
            if not n.name:
                raise ConfigError(f"cannot leave an activation x activation {n.op_type} out of int8: it has no "
                                  f"node name (inputs {n.input[0]}, {n.input[1]})")
            out.append(n.name)
    return out


def matmul_groups(graph, image_input: str = "hidden_states", text_input: str = "encoder_hidden_states") -> dict:
    """The weight matmuls of a variant graph by role, found from the graph's structure (not the exporter's names):

    - ``embed``: those whose activation comes from the image input through no other matmul (the size's patch
      embedding and, in a coarse graph, its stem's residual map of the latent); ``unembed``: those the graph's
      output follows through no other matmul (the size's projection out);
    - ``low_rank``: adapter chains, a weight matmul feeding straight into another weight matmul (LoRA down, up);
    - ``conditioning``: those that see neither the image nor the text tokens (timestep, pooled text, the adaLN
      modulations: one row per sample); ``text``: those that see the text tokens and not yet the image (the context
      embedder and the first double block's context projections, before the joint attention);
    - ``trunk``: the rest (the image stream and the joint tokens of the single blocks).

    Returns ``{group: [node names]}`` (a node in the first group it matches, in the order above)."""
    weights = weight_tensors(graph)
    sees: dict[str, int] = {image_input: 1, text_input: 2}  # bit 1: image tokens, bit 2: text tokens
    after_matmul: dict[str, bool] = {}  # the tensor is downstream of a weight matmul on the image path
    producer = {}
    mm = [n for n in graph.node if n.op_type in OP_TYPES and len(n.input) > 1 and n.input[1] in weights
          and n.input[0] not in weights]
    mm_names = {id(n) for n in mm}
    for n in graph.node:
        ins = [i for i in n.input if i]
        s = 0
        for i in ins:
            s |= sees.get(i, 0)
        down = any(after_matmul.get(i, False) for i in ins) or id(n) in mm_names and bool(s & 1)
        for o in n.output:
            if o:
                sees[o] = s
                after_matmul[o] = down
                producer[o] = n
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    # the matmuls the output reaches through non-matmul ops only
    last, stack, seen = set(), [o.name for o in graph.output], set()
    while stack:
        t = stack.pop()
        n = producer.get(t)
        if n is None or id(n) in seen:
            continue
        seen.add(id(n))
        if id(n) in mm_names:
            last.add(id(n))
            continue
        stack.extend(i for i in n.input if i and i not in weights)
    groups = {g: [] for g in ("embed", "unembed", "low_rank", "conditioning", "text", "trunk")}
    for n in mm:
        a = n.input[0]
        feeds_mm = any(id(c) in mm_names and c.input[0] == o for o in n.output for c in consumers.get(o, []))
        fed_by_mm = id(producer.get(a)) in mm_names if a in producer else False
        if sees.get(a, 0) & 1 and not after_matmul.get(a, False):
            g = "embed"
        elif id(n) in last:
            g = "unembed"
        elif feeds_mm or fed_by_mm:
            g = "low_rank"
        elif not sees.get(a, 0):
            g = "conditioning"
        elif sees.get(a, 0) == 2:
            g = "text"
        else:
            g = "trunk"
        if not n.name:
            raise ConfigError(f"cannot group an unnamed {n.op_type} node (inputs {n.input[0]}, {n.input[1]})")
        groups[g].append(n.name)
    return groups


def weight_only(path: Path, nodes: list[str]) -> int:
    """Give the named fp32 matmuls of the graph at ``path`` int8 weights and fp32 activations, in place: each weight
    initializer becomes symmetric per-output-channel int8 + an fp32 scale behind a DequantizeLinear (the layout
    ``quantize_static`` gives its weights, so the payload depends on the weight alone and is stored once; TensorRT
    reads it as weight-only quantization). The activation is not quantized: for inputs whose range moves with the
    noise level (the conditioning path, one row per sample) one calibrated per-tensor scale is what costs accuracy.
    Returns the number of weights converted."""
    import onnx
    from onnx import helper, numpy_helper

    if not nodes:
        return 0
    locations = {e.value for t in onnx.load(str(path), load_external_data=False).graph.initializer
                 for e in t.external_data if e.key == "location"}
    model = onnx.load(str(path))  # with its external data
    g = model.graph
    init = {t.name: t for t in g.initializer}
    by_name = {n.name: n for n in g.node}
    done: dict[str, str] = {}
    new_nodes = []
    for name in nodes:
        n = by_name.get(name)
        if n is None:
            raise ConfigError(f"weight-only int8: no node {name!r} in {Path(path).name}")
        w = n.input[1]
        if w not in init:
            raise ConfigError(f"weight-only int8: {name}'s weight {w!r} is not an initializer")
        if w not in done:
            trans_b = n.op_type == "Gemm" and any(a.name == "transB" and a.i for a in n.attribute)
            axis = 0 if trans_b else 1  # the output channels: Gemm(transB) holds [N, K], MatMul [K, N]
            arr = numpy_helper.to_array(init[w]).astype(np.float32)
            amax = np.abs(arr).max(axis=1 - axis)
            scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
            shape = (-1, 1) if axis == 0 else (1, -1)
            q = np.clip(np.rint(arr / scale.reshape(shape)), -127, 127).astype(np.int8)
            g.initializer.extend([numpy_helper.from_array(q, w + "_quantized"),
                                  numpy_helper.from_array(scale, w + "_scale"),
                                  numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), w + "_zero_point")])
            new_nodes.append(helper.make_node("DequantizeLinear", [w + "_quantized", w + "_scale", w + "_zero_point"],
                                              [w + "_dequantized"], name=w + "_DequantizeLinear", axis=axis))
            done[w] = w + "_dequantized"
        n.input[1] = done[w]
    used = {i for n in list(g.node) + new_nodes for i in n.input}
    keep = [t for t in g.initializer if t.name in used]  # the fp32 weights now dequantized go
    del g.initializer[:]
    g.initializer.extend(keep)
    nodes_now = new_nodes + list(g.node)  # DQ of initializers first: topological order holds
    del g.node[:]
    g.node.extend(nodes_now)
    for loc in locations:  # rewritten below without the dropped fp32 weights
        (Path(path).parent / loc).unlink(missing_ok=True)
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location=Path(path).name + ".data", size_threshold=1024)
    return len(done)


def quantize_graph(fp32_path: Path, out_path: Path, feeds: list[dict], cache_path: Path, *,
                   ranges_from: Path | None = None, activations: str = "u8") -> tuple[list[str], dict]:
    """Quantize one fp32 variant graph (external data beside it) into ``out_path`` (external data beside it);
    writes the activation ranges to ``cache_path``. ``ranges_from``: reuse another calibration's ranges instead of
    calibrating (measurements: one set of scales for every size). ``activations``: a key of :data:`ACTIVATIONS`
    (``u8`` / ``s8``).

    The trunk's weight matmuls are quantized (int8 weights and activations); the activation x activation matmuls
    (:func:`activation_matmuls`) stay fp32; the matmuls of :data:`WEIGHT_ONLY_GROUPS` get int8 weights with fp32
    activations (:func:`weight_only`). Returns the names left fp32 and ``{group: [names]}`` made weight-only."""
    import onnx

    graph = onnx.load(str(fp32_path), load_external_data=False).graph
    names = [i.name for i in graph.input]
    excluded = activation_matmuls(graph)
    groups = matmul_groups(graph)
    wo = {g: groups[g] for g in WEIGHT_ONLY_GROUPS if groups[g]}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if ranges_from is not None:
        shutil.copyfile(ranges_from, cache_path)
    with _quiet_root_log():
        _quantize_static(fp32_path, out_path, None if ranges_from is not None else FeedReader(feeds, names),
                         cache_path, excluded + [n for v in wo.values() for n in v], activations)
    weight_only(out_path, [n for v in wo.values() for n in v])
    cache_path.chmod(0o644)  # ORT writes it private (mkstemp); it is a bundle file like the others
    return excluded, wo


@contextlib.contextmanager
def _quiet_root_log():
    """ORT's quantizer warns on the root logger ("consider pre-processing"): the graphs are already shape-inferred
    dynamo exports; keep the build's output readable."""
    log = logging.getLogger()
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _quantize_static(fp32_path, out_path, reader, cache_path, exclude=(), activations="u8"):
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if activations not in ACTIVATIONS:
        raise ConfigError(f"int8 activations must be one of {', '.join(ACTIVATIONS)}, got {activations!r}")
    act_type, act_symmetric, _ = ACTIVATIONS[activations]

    # QuantizeBias off: an int32 bias is bias / (activation scale x weight scale), so it would differ per size and
    # break the one copy of the trunk's weights; the fp32 bias is the same bytes in every graph
    quantize_static(str(fp32_path), str(out_path), reader,
                    quant_format=QuantFormat.QDQ, op_types_to_quantize=list(OP_TYPES), per_channel=True,
                    activation_type=getattr(QuantType, act_type), weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, use_external_data_format=True,
                    calibration_cache_path=str(cache_path), nodes_to_exclude=list(exclude),
                    extra_options={"CalibMaxIntermediateOutputs": 8, "WeightSymmetric": True,
                                   "ActivationSymmetric": act_symmetric, "QuantizeBias": False})


def range_summary(cache_path: Path) -> dict:
    """{tensor: [lowest, highest]} of one size's calibration cache (ONNX Runtime's TensorsData JSON)."""
    d = json.loads(Path(cache_path).read_text())
    out = {}
    for name, td in d["data"].items():
        lo, hi = td.get("lowest"), td.get("highest")
        val = lambda v: float(np.asarray(v["data"] if isinstance(v, dict) else v).reshape(-1)[0])  # noqa: E731
        if lo is not None and hi is not None:
            out[name] = [val(lo), val(hi)]
    return out


def matmul_inputs(fp32_path: Path, table: list) -> dict[str, str]:
    """{weight key: activation input name} of a graph's matmuls with a shared weight. The key is the weight's
    offset in the (content-deduplicated) weights file, so the same trunk matmul has the same key in every size's
    graph even where the exporter named its tensors differently."""
    import onnx

    g = onnx.load(str(fp32_path), load_external_data=False).graph
    offset = {row[0]: str(row[1]) for row in table}
    return {offset[n.input[1]]: n.input[0] for n in g.node
            if n.op_type in OP_TYPES and len(n.input) > 1 and n.input[1] in offset}


def keyed_ranges(ranges: dict, inputs: dict[str, str]) -> dict:
    """One size's ranges of its matmuls' activation inputs, keyed by weight (see :func:`matmul_inputs`)."""
    return {key: ranges[name] for key, name in inputs.items() if name in ranges}


def compare_ranges(per_size: dict[int, dict]) -> dict:
    """How far each size's activation ranges are from the finest size's, over the matmul inputs every size has
    (keyed by weight): the median / min / max ratio of range widths, and the fraction more than 2x apart."""
    sizes = sorted(per_size)
    base = per_size[sizes[0]]
    out = {}
    for k in sizes:
        common = [n for n in base if n in per_size[k]]
        w = lambda r: max(r[1] - r[0], 1e-12)  # noqa: E731
        ratios = np.array([w(per_size[k][n]) / w(base[n]) for n in common]) if common else np.ones(1)
        lo = min(r[0] for r in per_size[k].values())
        hi = max(r[1] for r in per_size[k].values())
        out[str(k)] = {"matmul_inputs": len(per_size[k]), "common_with_finest": len(common),
                       "width_ratio_vs_finest_median": round(float(np.median(ratios)), 4),
                       "width_ratio_vs_finest_max": round(float(ratios.max()), 4),
                       "width_ratio_vs_finest_min": round(float(ratios.min()), 4),
                       "over_2x_apart": round(float(np.mean((ratios > 2) | (ratios < 0.5))), 4),
                       "lowest": round(lo, 4), "highest": round(hi, 4)}
    return out


def sha256_text(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def velocity_error(fp32_path: Path, int8_path: Path, feeds: list[dict], n: int = 4) -> float:
    """Relative RMS error of the int8 graph's velocity vs the fp32 graph's on the last ``n`` recorded feeds."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    a = ort.InferenceSession(str(fp32_path), so, providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(int8_path), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in a.get_inputs()]
    num = den = 0.0
    for f in feeds[-n:]:
        feed = {k: f[k] for k in names}
        x, y = a.run(None, feed)[0], b.run(None, feed)[0]
        num += float(((x - y) ** 2).sum())
        den += float((x ** 2).sum())
    return float(np.sqrt(num / max(den, 1e-30)))
