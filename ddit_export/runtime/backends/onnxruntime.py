"""ONNX Runtime backend: runs a bundle's variants, the weights held once in memory for all of them.

Two memory modes (``memory=``; ``generate --memory``):

- ``"shared"`` (default): the shared weights file is read once into one buffer; every session is given numpy views
  of it as shared initializers (``SessionOptions.add_initializer``), so no session reads or copies the weights
  itself. Pre-packing is disabled on those sessions (it would make a private, re-laid-out copy per session).
- ``"fast"``: every session loads its own weights from ``weights.bin`` and pre-packs its MatMul weights, as a
  standalone session does: standalone speed, but the trunk's weights are held once per size. ONNX Runtime's
  Python API has no shared pre-packed weights container (the C API's ``CreateSessionWithPrepackedWeightsContainer``),
  which would give both; README "The bundle on ONNX Runtime" has the measured numbers of both modes. CUDA and
TensorRT execution providers are used when onnxruntime-gpu is installed and sees a GPU.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ... import bundle as bundle_mod
from ...errors import BundleError, ConfigError
from .base import BackendBase, variant_feeds

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
# measured with onnxruntime 1.32: a bf16 transformer graph does not load on the CPU provider ("Could not find an
# implementation for MatMul(13)"), and numpy has no bfloat16 to feed its inputs with
BF16_UNSUPPORTED = ("the ONNX Runtime backend cannot run a bf16 bundle (its CPU provider has no bfloat16 MatMul); "
                    "on the CPU run it with --backend aoti (a bundle built with `build --dtype bf16 --backend aoti`), "
                    "on a GPU with --backend tensorrt, or rebuild with --dtype fp16 or fp32")
MEMORY_MODES = ("shared", "fast")


def default_providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in GPU_PROVIDERS if p in available] + ["CPUExecutionProvider"]


class SharedWeights:
    """One in-memory copy of ``weights.bin`` and the OrtValues that view it, shared by every session."""

    def __init__(self, folder: Path, manifest):
        import onnxruntime as ort

        path = Path(folder) / bundle_mod.WEIGHTS
        self.buffer = np.fromfile(path, dtype=np.uint8)
        # keyed by (offset, dtype, shape): identical bytes are stored once, and two tensors of different shapes
        # can share them (all-zero initial LoRA and residual weights do)
        self._values: dict[tuple, object] = {}
        self.tables = manifest.tensors
        for file, table in self.tables.items():
            for name, offset, length, dtype, dims in table:
                if offset + length > self.buffer.size:
                    raise BundleError(f"{path} is truncated: tensor {name!r} of {file} ends at byte "
                                      f"{offset + length}, the file has {self.buffer.size}")
                key = (offset, dtype, tuple(dims))
                if key not in self._values:
                    arr = self.buffer[offset:offset + length].view(bundle_mod.storage_dtype(dtype)).reshape(dims)
                    self._values[key] = (
                        ort.OrtValue.ortvalue_from_numpy_with_onnx_type(arr, bundle_mod.ONNX_BFLOAT16)
                        if dtype == "bfloat16" else ort.OrtValue.ortvalue_from_numpy(arr))

    def apply(self, options, file: str):
        # add_initializer makes the session use this memory as is (measured on random-20m: 3 sessions 102 MB after
        # load vs 95 MB for one); add_external_initializers copied it into every session (340 MB).
        for name, offset, _, dtype, dims in self.tables.get(file, []):
            options.add_initializer(name, self._values[(offset, dtype, tuple(dims))])

    @property
    def nbytes(self) -> int:
        return int(self.buffer.nbytes)


class OrtBundleBackend(BackendBase):
    name = "onnxruntime"

    def __init__(self, folder, *, threads: int | None = None, providers=None, verify: bool = True,
                 share_weights: bool = True, memory: str = "shared"):
        if memory not in MEMORY_MODES:
            raise ConfigError(f"memory must be one of {', '.join(MEMORY_MODES)}, got {memory!r}")
        share_weights = share_weights and memory == "shared"
        self.memory = "shared" if share_weights else "fast"
        self.folder = Path(folder)
        self.manifest = bundle_mod.load(self.folder, hashes=verify)
        self.sizes = self.manifest.sizes
        self.threads, self.providers, self.share_weights = threads, providers, share_weights
        self.sessions: dict[int, object] = {}
        self.text_session = None
        self.text_only = False  # only the text encoder (another backend runs the transformer)
        self.weights: SharedWeights | None = None

    # ---- lifecycle -----------------------------------------------------------------------------------------
    def activate(self):
        if self.sessions or self.text_session is not None:
            return
        if self.manifest.dtype == "bf16" and not self.text_only:
            raise ConfigError(BF16_UNSUPPORTED)
        self.weights = SharedWeights(self.folder, self.manifest) if self.share_weights else None
        for v in ([] if self.text_only else self.manifest.variants):
            self.sessions[v.size] = self._session(v.file)
        if self.manifest.text_encoder:
            self.text_session = self._session(self.manifest.text_encoder["file"])

    def deactivate(self):
        self.sessions.clear()
        self.text_session = None
        self.weights = None

    def _session(self, file: str):
        import onnxruntime as ort

        path = self.folder / file
        if not path.is_file():
            raise BundleError(f"bundle file missing: {path}")
        so = ort.SessionOptions()
        if self.threads:
            so.intra_op_num_threads = self.threads
            so.inter_op_num_threads = 1
        # One thread pool per session: a pool still spinning after its run steals the cores from the next
        # variant's (random-20m on 2 cores: +31 ms per switched step). ORT's process-wide pool would avoid both
        # costs but forces every other session in the process onto it, so it is left to the application.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if self.weights is not None:
            so.add_session_config_entry("session.disable_prepacking", "1")
            self.weights.apply(so, file)
        try:
            return ort.InferenceSession(str(path), so, providers=self.providers or default_providers())
        except Exception as e:  # ORT raises its own Fail/InvalidGraph types
            raise BundleError(f"cannot load {path}: {str(e).splitlines()[0]}") from None

    # ---- running -------------------------------------------------------------------------------------------
    def run_numpy(self, size: int, feeds: dict) -> np.ndarray:
        """Run variant ``size`` on numpy inputs named as in the manifest; inputs are checked first."""
        if size not in self.sessions:
            if not self.sessions:
                raise BundleError("backend not active: use it as a context manager or call activate()")
            raise BundleError(f"bundle {self.folder} has no variant for patch size {size} "
                              f"(has {list(self.sessions)}); rebuild with --sizes including {size}")
        variant = self.manifest.variant(size)
        check_inputs(variant, feeds)
        sess = self.sessions[size]
        binding = sess.io_binding()
        for name, arr in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(arr))
        binding.bind_output("velocity")
        sess.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def run(self, size, latents, cond, timestep, guidance, grid):
        dt = np_dtype(self.manifest.dtype)
        feeds = variant_feeds(bundle_mod.is_video(self.manifest), latents, cond, timestep, guidance, grid,
                              bool(self.manifest.model.get("guidance_embeds")))
        feeds = {k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v).astype(dt, copy=False)
                 for k, v in feeds.items()}
        return torch.from_numpy(self.run_numpy(size, feeds)).to(latents.device, torch.float32)

    def encode_words(self, ids: np.ndarray, mask: np.ndarray):
        if self.text_session is None:
            raise BundleError(f"bundle {self.folder} has no text encoder")
        return self.text_session.run(["states", "pooled"], {"input_ids": ids, "attention_mask": mask})


def np_dtype(name: str):
    if name == "bf16":
        raise ConfigError(BF16_UNSUPPORTED)
    return {"fp32": np.float32, "fp16": np.float16}[name]


def check_inputs(variant, feeds: dict):
    """One-line errors for a missing input or a wrong shape/dtype, naming the input."""
    for spec in variant.inputs:
        if spec.name not in feeds:
            raise BundleError(f"input {spec.name!r} missing for variant k={variant.size}")
        arr = feeds[spec.name]
        if arr.dtype != bundle_mod.storage_dtype(spec.dtype):
            raise BundleError(f"input {spec.name!r}: dtype {arr.dtype} but the bundle expects {spec.dtype}")
        want = spec.shape
        if len(arr.shape) != len(want) or any(w != "batch" and w != a for w, a in zip(want, arr.shape)):
            raise BundleError(f"input {spec.name!r}: shape {tuple(arr.shape)} but the bundle expects "
                              f"{tuple(want)}")

