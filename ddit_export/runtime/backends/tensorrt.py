"""TensorRT backend: the bundle's trunk engine (one profile per size) and per-size stem/head engines.

One execution context per (engine, profile, batch), all sharing ONE user-managed activation buffer (they run one
after the other on one stream), so a context's shapes and addresses are set once and never change under a captured
CUDA graph; I/O buffers allocated once at the largest shape and shared by every context that uses them (a tensor's
input and output never share one: the trunk reads ``hidden`` and writes ``trunk_out``); per variant (size, batch) a
CUDA graph of stem -> trunk -> head, captured at its first step and replayed after, or plain enqueues where capture
fails. Weight-stripped plans are refitted at load from the bundle's ONNX graphs and ``weights.bin``.

TensorRT is imported lazily: this module, its error messages and its version checks work without it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ... import bundle as bundle_mod
from ...errors import BundleError, ConfigError, DDiTError
from .base import BackendBase

REBUILD = "rebuild the engines on this machine: ddit-export build --backend trt"
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class TensorRTUnavailable(DDiTError):
    """tensorrt or a CUDA GPU is missing."""


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise TensorRTUnavailable("the TensorRT backend needs the tensorrt package (pip install 'ddit-export[trt]') "
                                  "and an NVIDIA GPU; run the bundle with ONNX Runtime instead") from None
    return trt


def coarse_image_ids(grid: tuple[int, int], k: int) -> np.ndarray:
    """RoPE ids of the size-k tokens: the centre of the fine positions each covers (models.patching.coarse_ids)."""
    h, w = grid[0] // k, grid[1] // k
    ids = np.zeros((h, w, 3), np.float32)
    ids[..., 1] = (np.arange(h) * k + (k - 1) / 2)[:, None]
    ids[..., 2] = (np.arange(w) * k + (k - 1) / 2)[None, :]
    return ids.reshape(h * w, 3)


# ---- what the engines were built for vs this machine (pure logic, tested without TensorRT) -------------------
def current_env() -> dict:
    """TensorRT version, GPU name and compute capability of this machine (needs tensorrt and CUDA)."""
    trt = import_tensorrt()
    if not torch.cuda.is_available():
        raise TensorRTUnavailable("the TensorRT backend needs a CUDA GPU; torch.cuda.is_available() is False")
    return {"tensorrt": trt.__version__, "device": torch.cuda.get_device_name(),
            "compute_capability": list(torch.cuda.get_device_capability())}


def env_problems(built: dict | None, current: dict) -> list[str]:
    """Why engines built in ``built`` cannot run in ``current`` (empty: they can)."""
    if not built:
        return [f"the bundle has a TensorRT plan but no engines; {REBUILD}"]
    out = []
    b, c = str(built.get("tensorrt")), str(current.get("tensorrt"))
    if b.split(".")[:3] != c.split(".")[:3]:
        out.append(f"engines were built with TensorRT {b}, this machine has {c}: TensorRT engines only load in the "
                   f"version that built them; {REBUILD} (or install tensorrt=={b})")
    bc, cc = tuple(built.get("compute_capability") or ()), tuple(current.get("compute_capability") or ())
    if bc != cc:
        out.append(f"engines were built for compute capability {'.'.join(map(str, bc))} ({built.get('device')}), "
                   f"this GPU is {'.'.join(map(str, cc))} ({current.get('device')}); {REBUILD}")
    return out


def missing_files(folder: Path, plan: dict) -> list[str]:
    return [e["plan"] for e in plan["engines"] if not (Path(folder) / e["plan"]).is_file()]


def check_latents(plan: dict, latents_shape, text_len: int | None = None):
    """A latent of another batch, token count or channel count than every profile allows: say what to rebuild."""
    b = plan["batch"]
    n1 = plan["tokens"]["1"] if "1" in plan["tokens"] else max(plan["tokens"].values())
    stem = next(e for e in plan["engines"] if e["role"] == "stem")
    c = stem["profiles"][0]["shapes"]["hidden_states"][0][2]
    shape = tuple(latents_shape)
    if len(shape) != 3 or shape[1:] != (n1, c):
        raise ConfigError(f"latents of shape {shape} are outside every TensorRT profile: the engines take "
                          f"(batch, {n1}, {c}) fine tokens (grid {'x'.join(map(str, plan['grid']))}); rebuild "
                          f"the bundle with --height/--width for this resolution")
    if not b["min"] <= shape[0] <= b["max"]:
        raise ConfigError(f"batch {shape[0]} is outside the engines' profiles (batch {b['min']}..{b['max']}); "
                          f"rebuild with a larger TrtSettings.max_batch")
    if text_len is not None and text_len != plan["text_len"]:
        raise ConfigError(f"text conditioning has {text_len} tokens, the engines were built for "
                          f"{plan['text_len']}; rebuild with --text-len {text_len}")


# ---- the backend ---------------------------------------------------------------------------------------------
@dataclass
class _Variant:
    size: int
    batch: int
    contexts: list  # (context, engine name) for stem, trunk profile, head; shapes and addresses set at creation
    graph: object = None
    extra: dict = field(default_factory=dict)


class TensorRTBackend(BackendBase):
    name = "tensorrt"

    def __init__(self, folder, *, cuda_graphs: bool = True, verify: bool = True):
        from ...plan import read_plan

        self.folder = Path(folder)
        self.manifest = bundle_mod.load(self.folder, hashes=verify)
        self.plan = read_plan(self.folder)
        if self.plan is None:
            raise BundleError(f"bundle {self.folder} has no TensorRT plan; {REBUILD}")
        missing = missing_files(self.folder, self.plan)
        if missing:
            raise BundleError(f"bundle {self.folder} lacks TensorRT engine(s) {', '.join(missing)}; {REBUILD}")
        self.sizes = tuple(self.plan["sizes"])
        self.video = bundle_mod.is_video(self.manifest)  # Wan engines: pos_ids, no pooled/txt_ids inputs
        self.cuda_graphs = cuda_graphs
        self.device = "cuda"
        self.log = print
        self.engines, self.contexts, self.buffers, self.variants = {}, {}, {}, {}
        self.activation = None
        self.stream = None
        self._capture_failed = False  # said once

    # ---- lifecycle -----------------------------------------------------------------------------------------
    def activate(self):
        if self.engines:
            return
        trt = import_tensorrt()
        problems = env_problems(self.plan.get("build"), current_env())
        if problems:
            raise BundleError("; ".join(problems))
        self._check_memory()
        try:
            self._load(trt)
        except torch.cuda.OutOfMemoryError:
            self.deactivate()
            raise BundleError(self._oom_message()) from None
        except BaseException:
            self.deactivate()
            raise

    def deactivate(self):
        self.variants.clear()
        self.contexts.clear()
        self.engines.clear()
        self.buffers.clear()
        self.activation = None
        self.stream = None

    def _check_memory(self):
        free, _ = torch.cuda.mem_get_info()
        need = self._need_bytes()
        if need > free:
            raise BundleError(self._oom_message(free))

    def _need_bytes(self) -> int:
        build, w = self.plan.get("build") or {}, self.plan["weights"]
        weights = (w.get("measured") or {}).get("device_bytes") or w["plan_total_bytes"]  # measured at build if so
        return (weights + self.plan["memory"]["io_bytes"]
                + build.get("activation_buffer_bytes", 0))

    def _oom_message(self, free: int | None = None) -> str:
        free = torch.cuda.mem_get_info()[0] if free is None else free
        return (f"not enough GPU memory to load the TensorRT engines of {self.folder}: they need about "
                f"{self._need_bytes() / 2**30:.2f} GiB (weights, I/O and activations), {free / 2**30:.2f} GiB is "
                f"free; free GPU memory, or rebuild with fewer --sizes, a smaller TrtSettings.max_batch or "
                f"--dtype bf16/fp16")

    def _load(self, trt):
        logger = trt.Logger(trt.Logger.WARNING)
        self.engines = load_engines(trt, self.folder, self.plan, logger)
        self._trt = trt
        self.stream = self._new_stream()
        size = self.plan["build"].get("activation_buffer_bytes") or max(
            _device_memory(self.engines[e["name"]], p) for e in self.plan["engines"] for p in range(len(e["profiles"])))
        self.activation = torch.empty(max(int(size), 1), dtype=torch.uint8, device=self.device)
        self._allocate_io()
        self.stream.synchronize()

    def _allocate_io(self):
        dt = TORCH_DTYPES[self.plan.get("dtype", self.plan["precision"])]
        b, n1 = self.plan["batch"]["max"], max(self.plan["tokens"].values())
        trunk = self.plan["engines"][0]
        shapes = {n: s[0] for n, s in trunk["profiles"][0]["shapes"].items()}  # size 1 = the most tokens
        stem = next(e for e in self.plan["engines"] if e["role"] == "stem")
        c = stem["profiles"][0]["shapes"]["hidden_states"][0][2]
        buf = {"latent": (b, n1, c), "velocity": (b, n1, c)}
        buf.update({n: ((b,) + tuple(s[1:]) if n in trunk["batch_inputs"] else tuple(s)) for n, s in shapes.items()
                    if n not in ("img_ids", "pos_ids", "size_index")})
        buf["trunk_out"] = buf["hidden"]  # the same SHAPE; its own memory below (no in-place I/O in TensorRT)
        self.buffers = {n: torch.zeros(s, dtype=dt, device=self.device) for n, s in buf.items()}
        grid = tuple(self.plan["grid"])
        for k in self.sizes:  # the tokens' RoPE coordinates per size, constant: written once here
            if self.video:  # Wan: (frame, row, column) positions
                from ...models.wan import token_positions

                self.buffers[f"pos_ids_k{k}"] = token_positions(grid, k).to(self.device, dt)
            else:
                self.buffers[f"img_ids_k{k}"] = torch.from_numpy(coarse_image_ids(grid, k)).to(self.device, dt)
            if self.plan["size_index"]:
                self.buffers[f"size_index_k{k}"] = torch.tensor([self.plan["size_index"][str(k)]], dtype=torch.int32,
                                                                device=self.device)

    # ---- one variant: three contexts bound to the shared buffers, captured as one CUDA graph -----------------
    def _bindings(self, e: dict, k: int) -> dict:
        if e["role"] == "stem":
            return {"hidden_states": "latent", "hidden": "hidden"}
        if e["role"] == "head":
            return {"trunk_out": "trunk_out", "hidden_states": "latent", "velocity": "velocity"}
        names = {n: n for n in e["inputs"]} | {"img_ids": f"img_ids_k{k}", "pos_ids": f"pos_ids_k{k}",
                                               "size_index": f"size_index_k{k}", "trunk_out": "trunk_out"}
        return names

    def _new_stream(self):
        return torch.cuda.Stream()

    def _context(self, e: dict, p: int, batch: int, k: int):
        """The context of engine ``e``, profile ``p`` for ``batch``: created once, its shapes and addresses set
        once, so that a CUDA graph captured on it never sees them change (another batch gets another context)."""
        key = (e["name"], p, batch)
        if key in self.contexts:
            return self.contexts[key]
        trt = self._trt
        ctx = self.engines[e["name"]].create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if ctx is None:
            raise torch.cuda.OutOfMemoryError("create_execution_context returned None")
        if hasattr(ctx, "set_device_memory"):
            ctx.set_device_memory(self.activation.data_ptr(), self.activation.numel())
        else:
            ctx.device_memory = self.activation.data_ptr()
        what = f"TensorRT engine {e['name']} (profile {p}, batch {batch})"
        if ctx.set_optimization_profile_async(p, self.stream.cuda_stream) is False:
            raise BundleError(f"{what}: could not select optimization profile {p}; {REBUILD}")
        shapes = {n: [batch if (i == 0 and n in e["batch_inputs"]) else d for i, d in enumerate(s[0])]
                  for n, s in e["profiles"][p]["shapes"].items()}
        for name, shape in shapes.items():
            if not ctx.set_input_shape(name, shape):
                raise BundleError(f"{what}: input {name!r} of shape {tuple(shape)} was refused (outside the "
                                  f"engine's profile; see the TensorRT log above); {REBUILD}")
        for name, buffer in self._bindings(e, k).items():
            if name in shapes or name in e["outputs"]:
                if not ctx.set_tensor_address(name, self.buffers[buffer].data_ptr()):
                    raise BundleError(f"{what}: TensorRT refused the address of tensor {name!r} (buffer "
                                      f"{buffer!r}; see the TensorRT log above)")
        self.contexts[key] = ctx
        return ctx

    def _variant(self, k: int, batch: int) -> _Variant:
        key = (k, batch)
        if key in self.variants:
            return self.variants[key]
        contexts = []
        try:
            for e in self._engines_for(k):
                p = e["sizes"].index(k) if e["role"] == "trunk" else 0
                contexts.append((self._context(e, p, batch, k), e["name"]))
        except torch.cuda.OutOfMemoryError:
            raise BundleError(self._oom_message()) from None
        v = _Variant(k, batch, contexts)
        self._enqueue(v)  # first run outside capture: TensorRT may do one-time work on a new shape
        self.stream.synchronize()
        if self.cuda_graphs:
            try:
                v.graph = self._capture(v)
            except Exception as e:  # noqa: BLE001 - any capture failure: run without a graph
                v.graph = None
                self.stream.synchronize()
                if not self._capture_failed:
                    self._capture_failed = True
                    self.log(f"TensorRT: CUDA graph capture failed ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}); running without CUDA graphs")
        self.variants[key] = v
        return v

    def _capture(self, v: _Variant):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self.stream):
            self._enqueue(v)
        return graph

    def _engines_for(self, k: int) -> list[dict]:
        by = {e["name"]: e for e in self.plan["engines"]}
        return [by[f"stem_k{k}"], by["trunk"], by[f"head_k{k}"]]

    def _enqueue(self, v: _Variant):
        for ctx, name in v.contexts:
            if not ctx.execute_async_v3(self.stream.cuda_stream):
                raise DDiTError(f"TensorRT failed to run {name} of variant k={v.size}, batch {v.batch} "
                                f"(see its log above)")

    # ---- running -------------------------------------------------------------------------------------------
    def run(self, size, latents, cond, timestep, guidance, grid):
        if size not in self.sizes:
            raise BundleError(f"the schedule picked patch size {size}, but bundle {self.folder} has TensorRT engines "
                              f"for sizes {list(self.sizes)} only; rebuild with --backend trt --sizes including {size}")
        if not self.engines:
            raise BundleError("backend not active: use it as a context manager or call activate()")
        check_latents(self.plan, latents.shape, cond.states.shape[1])
        b = latents.shape[0]
        v = self._variant(size, b)
        buf = self.buffers
        self.stream.wait_stream(torch.cuda.current_stream())  # the inputs were made on the caller's stream
        with torch.cuda.stream(self.stream):
            buf["latent"][:b].copy_(latents)
            buf["encoder_hidden_states"][:b].copy_(cond.states)
            buf["timestep"][:b].copy_(timestep)
            if not self.video:  # FLUX's other conditioning; Wan takes the text states and the timestep only
                buf["pooled_projections"][:b].copy_(cond.pooled)
                buf["txt_ids"].copy_(cond.txt_ids)
            if "guidance" in buf:
                buf["guidance"][:b].copy_(guidance)
            if v.graph is not None:
                v.graph.replay()
            else:
                self._enqueue(v)
            out = buf["velocity"][:b].to(torch.float32, copy=True)  # the buffer is overwritten next step
        torch.cuda.current_stream().wait_stream(self.stream)
        return out.to(latents.device)


def load_engines(trt, folder: Path, plan: dict, logger) -> dict:
    """{name: ICudaEngine} of the plan; weight-stripped plans are refitted from the bundle's ONNX graphs (and so
    from ``weights.bin``)."""
    runtime = trt.Runtime(logger)
    engines = {}
    for e in plan["engines"]:
        engine = runtime.deserialize_cuda_engine((folder / e["plan"]).read_bytes())
        if engine is None:
            raise BundleError(f"TensorRT could not load {folder / e['plan']} (see its log above); {REBUILD}")
        if plan["flags"]["strip_plan"]:
            refitter = trt.Refitter(engine, logger)
            parser = trt.OnnxParserRefitter(refitter, logger)
            if not parser.refit_from_file(str(folder / e["onnx"])) or not refitter.refit_cuda_engine():
                raise BundleError(f"refitting {e['plan']} from {e['onnx']} failed: the weights no longer match "
                                  f"the engine; {REBUILD}")
        engines[e["name"]] = engine
    return engines


def _device_memory(engine, profile: int) -> int:
    if hasattr(engine, "get_device_memory_size_for_profile_v2"):
        return engine.get_device_memory_size_for_profile_v2(profile)
    return getattr(engine, "device_memory_size_v2", engine.device_memory_size)


def open_tensorrt(folder, *, fallback: str | None = None, log=print, **kw):
    """An active TensorRT backend for ``folder``; with ``fallback="onnxruntime"`` (and only then), an active ONNX
    Runtime backend when TensorRT cannot run the bundle here, saying why."""
    if fallback not in (None, "onnxruntime"):
        raise ConfigError(f"fallback must be None or 'onnxruntime', got {fallback!r}")
    try:
        backend = TensorRTBackend(folder, **kw)
        backend.activate()
        return backend
    except DDiTError as e:
        if fallback is None:
            raise
        log(f"TensorRT backend unavailable ({e}); falling back to ONNX Runtime as asked")
    from .onnxruntime import OrtBundleBackend

    backend = OrtBundleBackend(folder, verify=kw.get("verify", True))
    backend.activate()
    return backend
