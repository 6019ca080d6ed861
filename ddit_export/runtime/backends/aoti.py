"""AOTInductor backend: runs the bundle's compiled variants (``build --backend aoti``) through
``torch._inductor.package.load_package``, the weights held once in memory for all of them.

``weights.bin`` is mapped once (a private copy-on-write mapping: no copy is made unless a page is written, which
nothing does); every variant gets its constants as user-managed views of that mapping (``load_constants(...,
user_managed=True)``), and a constant two variants share (the trunk) is one tensor. On CUDA each distinct constant
is copied to the GPU once and shared the same way. The C++ runtime (runtime/cpp) does the same in C++.
"""
from __future__ import annotations

import mmap
from pathlib import Path

import torch

from ... import bundle as bundle_mod
from ...errors import BundleError, ConfigError
from .base import BackendBase, variant_feeds

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                "float64": torch.float64, "int64": torch.int64, "int32": torch.int32, "int8": torch.int8,
                "uint8": torch.uint8, "bool": torch.bool}


def map_weights(path: Path) -> torch.Tensor:
    """``weights.bin`` as one uint8 tensor over a private mapping of the file (pages load on first touch)."""
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    return torch.frombuffer(mm, dtype=torch.uint8)


def constant_views(entry: dict, weights: torch.Tensor, device: str, cache: dict) -> dict:
    """{constant name: tensor} of one variant; equal (offset, dtype, shape) give the same tensor (``cache``)."""
    out = {}
    for name, offset, length, dtype, dims in entry["constants"]:
        key = (offset, dtype, tuple(dims))
        if key not in cache:
            if offset + length > weights.numel():
                raise BundleError(f"weights.bin is truncated: constant {name!r} ends at byte {offset + length}, "
                                  f"the file has {weights.numel()}")
            t = weights[offset:offset + length].view(TORCH_DTYPES[dtype]).view(dims)
            cache[key] = t if device == "cpu" else t.to(device)
        out[name] = cache[key]
    return out


def load_variant(package: Path, entry: dict, weights: torch.Tensor, *, device: str = "cpu", cache: dict):
    """One compiled variant with its constants loaded as user-managed (shared, not copied) tensors."""
    from torch._inductor.package import load_package

    try:
        compiled = load_package(str(package), entry["model"])
    except Exception as e:  # torch raises RuntimeError with the loader's message
        raise BundleError(f"cannot load AOTInductor model {entry['model']!r} from {package}: "
                          f"{str(e).splitlines()[0]}") from None
    consts = constant_views(entry, weights, device, cache)
    compiled.load_constants(consts, check_full_update=True, user_managed=True)
    return compiled


class AotiTextEncoder:
    """The package's compiled word encoder (model ``text_encoder``, pixel bundles built with this version): what
    ``open_bundle(..., backend="aoti")`` encodes prompts with, the same kernels as the C++ runtime's ddit_encode.
    Loaded on first use and kept (the transformer backend's activate/deactivate do not touch it)."""

    def __init__(self, folder, section: dict):
        self.folder, self.section, self.model, self.weights = Path(folder), section, None, None

    @staticmethod
    def available(section: dict) -> bool:
        return isinstance(section.get("text_encoder"), dict)

    def activate(self):
        if self.model is None:
            if self.section["device"].startswith("cuda") and not torch.cuda.is_available():
                raise ConfigError(f"this bundle's AOTInductor package was compiled for {self.section['device']}, "
                                  f"and torch sees no GPU here; rebuild it with `build --backend aoti` here")
            self.weights = map_weights(self.folder / bundle_mod.WEIGHTS)
            self.model = load_variant(self.folder / self.section["package"], self.section["text_encoder"],
                                      self.weights, device=self.section["device"], cache={})

    def encode_words(self, ids, mask):
        """(states, pooled) as float32 numpy arrays for word ids (B, L) int64 and mask (B, L) bool (numpy)."""
        self.activate()
        dev = self.section["device"]
        with torch.inference_mode():
            states, pooled = self.model(torch.as_tensor(ids, dtype=torch.long).to(dev).contiguous(),
                                        torch.as_tensor(mask, dtype=torch.bool).to(dev).contiguous())
        return states.float().cpu().numpy(), pooled.float().cpu().numpy()


class AotiBackend(BackendBase):
    name = "aoti"

    def __init__(self, folder, *, verify: bool = True, manifest=None, threads: int | None = None):
        if threads is not None and threads < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}")
        self.threads = threads  # intra-op threads of the runs (None: torch's); the C++ runtime's ddit_open_ex threads
        self.folder = Path(folder)
        self.manifest = manifest if manifest is not None else bundle_mod.load(self.folder, hashes=verify)
        self.section = bundle_mod.aoti_section(self.folder, self.manifest)
        self.sizes = self.manifest.sizes
        self.device = self.section["device"]
        self.dtype = TORCH_DTYPES[{"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[self.section["dtype"]]]
        self.models: dict[int, object] = {}
        self.weights = None

    def activate(self):
        if self.models:
            return
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"this bundle's AOTInductor package was compiled for {self.device}, and torch sees no "
                              f"GPU here; rebuild it with `build --backend aoti` on this machine")
        self.weights = map_weights(self.folder / bundle_mod.WEIGHTS)
        cache: dict = {}
        package = self.folder / self.section["package"]
        for entry in self.section["variants"]:
            self.models[int(entry["size"])] = load_variant(package, entry, self.weights, device=self.device,
                                                           cache=cache)

    def deactivate(self):
        self.models.clear()
        self.weights = None

    def run(self, size, latents, cond, timestep, guidance, grid):
        if size not in self.models:
            if not self.models:
                raise BundleError("backend not active: use it as a context manager or call activate()")
            raise BundleError(f"bundle {self.folder} has no AOTInductor variant for patch size {size} "
                              f"(has {sorted(self.models)})")
        dev, dt = self.device, self.dtype
        feeds = variant_feeds(bundle_mod.is_video(self.manifest), latents, cond, timestep, guidance, grid,
                              "guidance" in self.section["inputs"])
        args = [feeds[n].to(dev, dt).contiguous() for n in self.section["inputs"]]
        if self.threads and torch.get_num_threads() != self.threads:
            # the package is compiled with dynamic OpenMP threads: its kernels read this count at run time
            torch.set_num_threads(self.threads)
        with torch.inference_mode():
            out = self.models[size](*args)
        out = out[0] if isinstance(out, (list, tuple)) else out
        return out.to(latents.device, torch.float32)
