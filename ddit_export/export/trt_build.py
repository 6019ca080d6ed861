"""``build --backend trt``: split export (trunk / stems / heads) into the bundle, then TensorRT engines.

1. :func:`export_split` writes the graphs of the plan (``trt_plan``) from a ``MultiPatchFlux`` (or a ``MultiPatchWan``:
   its trunk takes the tokens' positions ``pos_ids`` for RoPE instead of FLUX's ids): ONE trunk graph with
   a dynamic token axis and the per-size LoRA stacked and picked by ``size_index``, and a static stem and head graph
   per size. Their large tensors go into the bundle's existing ``weights.bin``, deduplicated by content, so the
   trunk adds nothing on disk (only the stacked LoRA is new).
2. :func:`split_parity` checks stem -> trunk -> head on ONNX Runtime against each size's full variant graph.
3. :func:`engine_loaders` / :func:`build_engines` build the engines with polygraphy's lazy loaders
   (``NetworkFromOnnxPath`` -> ``CreateConfig`` -> ``EngineFromNetwork`` -> ``SaveEngine``); nothing imports
   TensorRT until a loader is called.
"""
from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import torch

from ..bundle import WEIGHTS, sha256_file
from ..errors import DDiTError
from . import trt_plan
from .shared_weights import SharedWeightsWriter
from .trt_graphs import HeadGraph, StemGraph, TrunkGraph, WanStemGraph, WanTrunkGraph

NP_TO_TORCH = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def require_tensorrt():
    """Fail fast (before a long export) when TensorRT cannot build here."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        raise DDiTError("--backend trt needs TensorRT (pip install 'ddit-export[trt]' on a machine with an NVIDIA "
                        "GPU); without it, build the ONNX bundle and check it with `ddit-export trt-check`") from None
    if not torch.cuda.is_available():
        raise DDiTError("--backend trt needs a CUDA GPU: TensorRT builds engines for the GPU they will run on")


def _example(shapes: dict, dtype, seed: int = 0) -> tuple:
    """Random inputs in the plan's input shapes ("batch" -> the export batch; size_index -> 0)."""
    from .onnx import EXPORT_BATCH

    g = torch.Generator().manual_seed(seed)
    out = []
    for name, shape in shapes.items():
        dims = [EXPORT_BATCH if d == "batch" else d for d in shape]
        out.append(torch.zeros(dims, dtype=torch.int32) if name == "size_index" else
                   torch.randn(dims, generator=g).to(dtype))
    return tuple(out)


def symbolic_shapes(engine: dict) -> dict:
    """The engine's input shapes with "batch" for the batch axis, from its first profile."""
    return {n: (("batch",) + tuple(s[0][1:]) if n in engine["batch_inputs"] else tuple(s[0]))
            for n, s in engine["profiles"][0]["shapes"].items()}


def _export(module, args, names, outputs, dynamic, rope=None):
    from .onnx import OPSET, float32_rope, quiet_export

    with (rope or float32_rope)(), torch.no_grad(), quiet_export():
        return torch.onnx.export(module.eval(), args, dynamo=True, opset_version=OPSET, input_names=list(names),
                                 output_names=list(outputs), dynamic_shapes=dynamic, verbose=False)


def _graph_specs(mp, plan: dict):
    """(file, module, input shapes, outputs, dynamic axes) of every split graph, from the plan."""
    grid = tuple(plan["grid"])
    batch = torch.export.Dim("batch", min=1, max=64)
    tokens = torch.export.Dim("tokens", min=1, max=max(plan["tokens"].values()))
    for e in plan["engines"]:
        shapes = symbolic_shapes(e)  # the trunk's first profile is size 1's: the most tokens
        dyn = {n: ({0: batch} if n in e["batch_inputs"] else {}) for n in shapes}
        for n, axis in e["token_axes"].items():
            dyn[n][axis] = tokens
        dyn = tuple(v or None for v in dyn.values())  # positional: the trunk's optional inputs are extra1/2
        wan = getattr(mp, "family", "flux") == "wan"
        if e["role"] == "trunk":
            module = WanTrunkGraph(mp, plan["sizes"]) if wan else \
                TrunkGraph(mp, plan["sizes"], bool(mp.config.get("guidance_embeds")))
        else:
            module = ((WanStemGraph if wan else StemGraph) if e["role"] == "stem" else HeadGraph)(mp, e["size"], grid)
        yield e["onnx"], module, shapes, e["outputs"], dyn


class AppendingWeights(SharedWeightsWriter):
    """A :class:`SharedWeightsWriter` that appends to a bundle's existing ``weights.bin`` and reuses every tensor
    already in it (so the trunk graph points at the variants' copy). ``rollback`` restores the file."""

    def __init__(self, folder: Path, tables: dict):
        from onnx import TensorProto, helper

        self.path = Path(folder) / WEIGHTS
        self._index, self.unique_bytes, self.referenced_bytes = {}, 0, 0
        types = {}
        for v in TensorProto.DataType.values():
            with contextlib.suppress(Exception):
                types.setdefault(helper.tensor_dtype_to_np_dtype(v).name, v)
        done = set()
        with open(self.path, "rb") as f:
            for table in tables.values():
                for _, offset, length, dtype, _ in table:
                    if offset in done:
                        continue
                    done.add(offset)
                    f.seek(offset)
                    key = hashlib.sha256(f.read(length)).hexdigest() + f":{types[dtype]}"
                    self._index.setdefault(key, (offset, length))
        self.original_size = self.path.stat().st_size
        self._f = open(self.path, "r+b")
        self._f.seek(0, 2)

    def rollback(self):
        self._f.truncate(self.original_size)
        self._f.close()


def export_split(mp, plan: dict, folder: Path, tables: dict, *, log=print) -> tuple[dict, int]:
    """Write every split graph of ``plan`` into the bundle ``folder``; returns (tensor tables, bytes appended)."""
    import onnx

    from .build import _save_shared

    folder = Path(folder)
    dtype = NP_TO_TORCH[plan.get("dtype", plan["precision"])]
    writer = AppendingWeights(folder, tables)
    new, written = {}, []
    try:
        from .onnx import rope_context

        for file, module, shapes, outputs, dyn in _graph_specs(mp, plan):
            log(f"export {file}")
            prog = _export(module, _example(shapes, dtype), shapes, outputs, dyn, rope=lambda: rope_context(mp))
            written.append(folder / file)
            new[file] = _save_shared(prog, writer, folder, file)
            onnx.checker.check_model(str(folder / file))
    except BaseException:
        writer.rollback()
        for p in written:
            p.unlink(missing_ok=True)
        raise
    writer.close()
    return new, writer.path.stat().st_size - writer.original_size


# ---- parity of the split on ONNX Runtime ------------------------------------------------------------------
def _feeds(spec_shapes: dict, rng, dtype):
    import numpy as np

    return {n: rng.standard_normal([1 if d == "batch" else d for d in s]).astype(dtype)
            for n, s in spec_shapes.items()}


def split_parity(folder, plan: dict, manifest, *, seed: int = 0) -> dict:
    """Max |stem -> trunk -> head - full variant| per size on ONNX Runtime (CPU), on the same random inputs."""
    import numpy as np
    import onnxruntime as ort

    from ..bundle import is_video
    from ..models.wan import token_positions
    from ..runtime.backends.tensorrt import coarse_image_ids

    folder = Path(folder)
    sess = lambda f: ort.InferenceSession(str(folder / f), providers=["CPUExecutionProvider"])  # noqa: E731
    trunk = sess(plan["engines"][0]["onnx"])
    dt = {"fp32": np.float32, "fp16": np.float16}[plan.get("dtype", plan["precision"])]
    grid, wan = tuple(plan["grid"]), is_video(manifest)
    out = {}
    for k in plan["sizes"]:
        v = manifest.variant(k)
        feeds = _feeds({s.name: s.shape for s in v.inputs}, np.random.default_rng(seed), dt)
        if wan:  # Wan's timestep is the scheduler's 0..1000
            feeds["timestep"] = np.full((1,), 700.0, dt)
        else:
            feeds.update(timestep=np.full((1,), 0.7, dt), img_ids=coarse_image_ids(grid, 1).astype(dt),
                         txt_ids=np.zeros_like(feeds["txt_ids"]))
        if "guidance" in feeds:
            feeds["guidance"] = np.full((1,), 3.5, dt)
        full = sess(v.file).run(["velocity"], feeds)[0]
        hidden = sess(trt_plan.stem_onnx(k)).run(["hidden"], {"hidden_states": feeds["hidden_states"]})[0]
        tf = {n: feeds[n] for n in plan["engines"][0]["inputs"] if n in feeds}
        if wan:
            tf.update(hidden=hidden, pos_ids=token_positions(grid, k).numpy().astype(dt))
        else:
            tf.update(hidden=hidden, img_ids=coarse_image_ids(grid, k).astype(dt))
        if "size_index" in plan["engines"][0]["inputs"]:
            tf["size_index"] = np.array([plan["size_index"][str(k)]], np.int32)
        t_out = trunk.run(["trunk_out"], tf)[0]
        head_feeds = {"trunk_out": t_out} | ({"hidden_states": feeds["hidden_states"]} if k > 1 else {})
        got = sess(trt_plan.head_onnx(k)).run(["velocity"], head_feeds)[0]
        out[str(k)] = float(np.abs(got.astype(np.float64) - full).max())
    return out


# ---- prepare (CPU) and build (GPU) ------------------------------------------------------------------------
def prepare_tensorrt(folder, settings, trt_settings=None, *, model=None, log=print) -> dict:
    """Plan, export the split graphs into a built ONNX bundle, check them (TensorRT rules + parity) and record
    the plan in its manifest. Runs on a CPU; returns the plan."""
    from .. import bundle as bundle_mod
    from ..settings import PARITY_TOL
    from .trt_compat import report
    from .trt_lint import check_bundle

    folder = Path(folder)
    manifest = bundle_mod.load(folder)
    plan = trt_plan.plan_from_manifest(manifest, trt_settings)
    trt_plan.require_buildable(plan)  # before the model loads or anything is exported
    if model is None:
        from ..models.registry import load_model

        model = load_model(settings.model, settings.weights, adapters=settings.adapters, sizes=manifest.sizes)
    mp = model.transformer.to(NP_TO_TORCH[manifest.dtype]).eval()
    before = (folder / WEIGHTS).stat().st_size
    tables, added = export_split(mp, plan, folder, manifest.tensors, log=log)
    files = {f: sha256_file(folder / f) for f in list(tables) + [WEIGHTS]}
    try:
        problems = check_bundle(folder, plan)
        if problems:
            raise DDiTError(f"the graphs are not TensorRT-ready:\n{report(problems)}")
        if manifest.dtype != "bf16":
            plan["parity"] = split_parity(folder, plan, manifest)
            tol = settings.tolerance if settings is not None else PARITY_TOL[manifest.dtype]
            bad = {k: d for k, d in plan["parity"].items() if not d <= tol}
            if bad:
                raise DDiTError(f"stem -> trunk -> head differs from the full variant by {bad} (> {tol:g})")
    except BaseException:
        _undo(folder, tables, before)
        raise
    plan["weights"]["appended_to_weights_bin"] = added
    trt_plan.update_manifest(folder, plan=plan, files=files, tensors=tables)
    log(trt_plan.summary(plan))
    return plan


def _undo(folder: Path, tables: dict, size: int):
    for f in tables:
        (folder / f).unlink(missing_ok=True)
    with open(folder / WEIGHTS, "r+b") as f:
        f.truncate(size)


EXTRA_PROFILE_MEMORY_TARGET = 0.0  # profiles after the first: no extra weight memory (a hint to TensorRT)


def _profiles(engine: dict):
    """polygraphy Profiles of the engine; every profile after the first asks TensorRT (>= 10.0,
    ``IOptimizationProfile.extra_memory_target``) for no weight memory of its own, so the trunk's size profiles
    share one copy of its weights. Whether they did is measured after the build (:func:`measure_weights`)."""
    from polygraphy.backend.trt import Profile

    class SharedWeightsProfile(Profile):
        extra_memory_target = None

        def to_trt(self, builder, network):
            prof = super().to_trt(builder, network)
            if self.extra_memory_target is not None and hasattr(prof, "extra_memory_target"):
                prof.extra_memory_target = self.extra_memory_target
            return prof

    out = []
    for i, p in enumerate(engine["profiles"]):
        prof = SharedWeightsProfile()
        if i > 0:
            prof.extra_memory_target = EXTRA_PROFILE_MEMORY_TARGET
        for name, (lo, opt, hi) in p["shapes"].items():
            prof.add(name, min=lo, opt=opt, max=hi)
        out.append(prof)
    return out


def _refit_identical(builder, network, config):
    import tensorrt as trt

    config.set_flag(trt.BuilderFlag.REFIT_IDENTICAL)


def _workspace(bytes_):
    import tensorrt as trt

    return {trt.MemoryPoolType.WORKSPACE: bytes_}


def engine_loaders(folder, plan: dict, only: str | None = None):
    """[(engine entry, SaveEngine loader)] for the plan (or its engine ``only``): polygraphy's lazy loaders,
    nothing built or imported yet. All share one timing cache file."""
    from polygraphy.backend.trt import (CreateConfig, EngineFromNetwork, NetworkFromOnnxPath, PostprocessConfig,
                                        SaveEngine)

    trt_plan.require_buildable(plan)
    folder, flags = Path(folder), plan["flags"]
    cache = folder / flags["timing_cache"]
    out = []
    for e in plan["engines"]:
        if only is not None and e["name"] != only:
            continue
        network = NetworkFromOnnxPath(str(folder / e["onnx"]), strongly_typed=flags["strongly_typed"])
        config = CreateConfig(profiles=_profiles(e), builder_optimization_level=flags["builder_optimization_level"],
                              tf32=flags["tf32"], strip_plan=flags["strip_plan"],
                              load_timing_cache=str(cache) if cache.is_file() else None,
                              memory_pool_limits=_workspace(flags["workspace_bytes"]) if flags["workspace_bytes"]
                              else None)
        if flags["refit_identical"]:
            config = PostprocessConfig(config, _refit_identical)
        engine = EngineFromNetwork(network, config=config, save_timing_cache=str(cache))
        out.append((e, SaveEngine(engine, str(folder / e["plan"]))))
    return out


def build_engines(folder, *, log=print) -> dict:
    """Build every engine of the bundle's plan on this GPU; record versions and activation sizes in the plan."""
    require_tensorrt()
    from ..runtime.backends.tensorrt import current_env

    folder = Path(folder)
    plan = trt_plan.read_plan(folder)
    if plan is None:
        raise DDiTError(f"{folder} has no TensorRT plan: run prepare_tensorrt (or build --backend trt) first")
    (folder / trt_plan.ENGINE_DIR).mkdir(exist_ok=True)
    activation = {}
    for entry in plan["engines"]:  # one at a time, so each build loads the timing cache the previous one saved
        [(e, loader)] = engine_loaders(folder, plan, only=entry["name"])
        log(f"build {e['plan']} ({len(e['profiles'])} profile(s))")
        engine = loader()
        activation[e["name"]] = [int(_device_memory(engine, p)) for p in range(len(e["profiles"]))]
    plan["build"] = current_env() | {"activation_bytes": activation,
                                     "activation_buffer_bytes": max(max(v) for v in activation.values())}
    plan["weights"]["measured"] = measure_weights(folder, plan)
    log(f"engines loaded: {plan['weights']['measured']['device_bytes'] / 2**20:.1f} MiB of GPU memory (measured) vs "
        f"{plan['weights']['plan_total_bytes'] / 2**20:.1f} MiB computed for the trunk held once")
    files = {e["plan"]: sha256_file(folder / e["plan"]) for e in plan["engines"]}
    trt_plan.update_manifest(folder, plan=plan, files=files)
    return plan


def measure_weights(folder, plan: dict) -> dict:
    """GPU memory the plan's engines take once loaded (deserialized and, for stripped plans, refitted), measured with
    ``torch.cuda.mem_get_info`` before and after in this process: the weights the "trunk once" layout really
    holds (plus TensorRT's small per-engine overhead; no execution context, so no activations)."""
    import tensorrt as trt

    from ..runtime.backends.tensorrt import load_engines

    torch.cuda.synchronize()
    free_before = torch.cuda.mem_get_info()[0]
    engines = load_engines(trt, Path(folder), plan, trt.Logger(trt.Logger.WARNING))
    torch.cuda.synchronize()
    used = free_before - torch.cuda.mem_get_info()[0]
    streamable = {n: int(getattr(e, "streamable_weights_size", 0) or 0) for n, e in engines.items()}
    del engines
    return {"device_bytes": int(used), "how": "torch.cuda.mem_get_info before/after loading every engine, at build",
            "streamable_weights_bytes": streamable}


def _device_memory(engine, profile: int) -> int:
    if hasattr(engine, "get_device_memory_size_for_profile_v2"):
        return engine.get_device_memory_size_for_profile_v2(profile)
    return getattr(engine, "device_memory_size_v2", engine.device_memory_size)


def build_with_tensorrt(settings, trt_settings=None, *, log=print) -> Path:
    """The whole ``build --backend trt``: ONNX bundle, split graphs + plan, engines. TensorRT is checked first. All
    of it is built in the build's temporary folder: an existing bundle is replaced only by a complete one."""
    from ..models.registry import load_model
    from .build import build_bundle

    require_tensorrt()
    model = load_model(settings.model, settings.weights, adapters=settings.adapters,
                       sizes=settings.load_sizes)

    def finish(folder):
        prepare_tensorrt(folder, settings, trt_settings, log=log, model=model)
        build_engines(folder, log=log)

    return build_bundle(settings, log=log, model=model, finish=finish)  # loaded once, for both steps
