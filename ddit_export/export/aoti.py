"""``build --backend aoti``: every patch-size variant compiled by AOTInductor into one ``.pt2`` package, for the
C++ runtime (runtime/cpp) and the Python ``aoti`` backend.

The weights are NOT compiled into the shared objects (``aot_inductor.package_constants_in_so=False``): each
variant's constants (by fully qualified name) are appended to the bundle's one ``weights.bin``, deduplicated by
content against what is already there (the ONNX graphs' tensors), and the manifest's ``aoti`` section maps every
constant name to its (offset, length, dtype, shape). A runtime maps ``weights.bin`` once and hands the same tensors
to every variant as user-managed constants, so the trunk's weights exist once in memory.

The steps are small lazy callables (nothing compiles until called), as the TensorRT build's loaders are:
``ExportedVariant`` -> ``CompiledVariant`` -> :func:`package_variants`. A pixel model's word-level text encoder
(``ExportedTextEncoder``) is compiled into the same package as model ``text_encoder``, its constants in the same
``weights.bin`` (section ``aoti.text_encoder``), so the C++ runtime takes prompts and the Python ``aoti`` backend
encodes them with the same kernels.

A kind "flux" bundle (FLUX.1-dev-shaped ``--weights`` folder) also gets the folder's VAE decoder in the same
package (model ``vae_decoder``, ``ExportedVaeDecoder`` -> ``CompiledVariant``): :class:`VaeDecodeModule`, the
Python FLUX decode up to the PIL conversion; its constants go through the same writer and the manifest lists it as
``aoti.vae_decoder``. The C++ runtime decodes with it (runtime/cpp/src/vae.cpp); Python keeps diffusers' decode.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

from ..bundle import AOTI_KEY, AOTI_VERSION, MANIFEST, WEIGHTS, sha256_file
from ..errors import DDiTError
from .parity import aoti_parity

AOTI_DIR = "aoti"
PACKAGE = f"{AOTI_DIR}/transformer.pt2"
ALIGN = 64
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# weights stay out of the .so (they come from weights.bin at load time); one multi-model package for all sizes
INDUCTOR_CONFIGS = {"aot_inductor.package": True, "aot_inductor.package_constants_in_so": False,
                    "cpp.dynamic_threads": True}  # OpenMP threads read at run time (ddit_open_ex threads)


TEXT_MODEL = "text_encoder"  # the word encoder's model name inside the package (pixel models)


def model_name(size: int) -> str:
    """The model name of size ``size`` inside the package (``AOTIModelPackageLoader(path, name)``)."""
    return f"k{size}"


def require_compiler():
    """Fail fast (before a long export) when AOTInductor has no C++ compiler to call."""
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        cxx = get_cpp_compiler()
    except Exception as e:  # torch raises its own errors when no compiler is found
        raise DDiTError(f"--backend aoti needs a C++ compiler (g++ or clang++; set CXX): {e}") from None
    if shutil.which(cxx) is None and not Path(cxx).is_file():
        raise DDiTError(f"--backend aoti needs a C++ compiler: {cxx!r} is not on PATH (install g++ or set CXX)")


class ExportedVariant:
    """Lazy: size ``k`` of a MultiPatchFlux or MultiPatchWan as a ``torch.export`` program (dynamic batch, float32
    RoPE): the same module, inputs and names as the ONNX export (``export/onnx.py``)."""

    def __init__(self, mp, k: int, geom, text_len: int, dtype, device: str = "cpu"):
        self.mp, self.k, self.geom, self.text_len, self.dtype, self.device = mp, k, geom, text_len, dtype, device

    def context(self):
        """Float32 RoPE while exporting and compiling: FLUX's patch, or the Wan wrapper's own."""
        from .onnx import rope_context

        return rope_context(self.mp)

    def __call__(self):
        from .onnx import variant_input_names, variant_inputs, variant_module

        names = variant_input_names(self.mp)
        module = variant_module(self.mp, self.k, self.geom).eval()
        args = tuple(a.to(self.device) for a in variant_inputs(self.mp, self.geom, self.text_len, self.dtype))
        batch = torch.export.Dim("batch", min=1, max=64)
        dynamic = {n: (None if n in ("img_ids", "txt_ids") else {0: batch}) for n in names}
        with self.context(), torch.no_grad():
            return torch.export.export(module, args, dynamic_shapes=dynamic, strict=False)


class ExportedTextEncoder:
    """Lazy: a pixel model's word-level text encoder (ids int64, mask bool; (B, text_len) each) as a
    ``torch.export`` program with a dynamic batch."""

    def __init__(self, encoder, text_len: int, device: str = "cpu"):
        self.encoder, self.text_len, self.device = encoder, text_len, device

    def __call__(self):
        from .onnx import EXPORT_BATCH, TEXT_INPUTS, TextModule

        ids = torch.ones(EXPORT_BATCH, self.text_len, dtype=torch.long, device=self.device)
        mask = torch.ones(EXPORT_BATCH, self.text_len, dtype=torch.bool, device=self.device)
        batch = torch.export.Dim("batch", min=1, max=64)
        module = TextModule(self.encoder.to(self.device)).eval()
        with torch.no_grad():
            return torch.export.export(module, (ids, mask), dynamic_shapes={n: {0: batch} for n in TEXT_INPUTS},
                                       strict=False)


class CompiledVariant:
    """Lazy: AOTInductor's files (shared object, kernels, metadata; no weights) for one exported program."""

    def __init__(self, exported):
        self.exported = exported
        self.program = None

    def __call__(self) -> list:
        from .onnx import float32_rope

        self.program = self.exported()
        args, kwargs = self.program.example_inputs
        context = getattr(self.exported, "context", float32_rope)  # a transformer variant: its model's RoPE patch
        with context(), torch.no_grad():
            return torch._inductor.aot_compile(self.program.module(), args, kwargs, options=dict(INDUCTOR_CONFIGS))


VAE_MODEL = "vae_decoder"  # the FLUX VAE decoder's model name in the package (kind "flux" bundles)
VAE_PARITY_TOL = 1e-3  # decoded pixels in [0, 1]: well under one uint8 level (1/255)


class VaeDecodeModule(torch.nn.Module):
    """FLUX's decode up to the PIL conversion (``models.registry._load_flux``'s ``decode``): packed fine-token
    latents (B, tokens, 4C) -> unpack to (B, C, h, w) -> / scaling_factor + shift_factor -> ``vae.decode`` ->
    ``image_processor``'s denormalize and NHWC float32: (B, H, W, 3) in [0, 1]. A runtime's uint8 pixels are then
    ``round(x * 255)``, as diffusers' ``numpy_to_pil`` makes them."""

    def __init__(self, vae, height: int, width: int, vae_scale: int):
        super().__init__()
        self.vae, self.height, self.width, self.vae_scale = vae, height, width, vae_scale

    def forward(self, latents):
        from diffusers import FluxPipeline

        lat = FluxPipeline._unpack_latents(latents, self.height, self.width, self.vae_scale)
        lat = lat / self.vae.config.scaling_factor + self.vae.config.shift_factor
        image = self.vae.decode(lat.to(self.vae.dtype), return_dict=False)[0]
        return (image * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float()


class ExportedVaeDecoder:
    """Lazy: :class:`VaeDecodeModule` as a ``torch.export`` program (dynamic batch), on ``device``."""

    def __init__(self, vae, geom, device: str = "cpu"):
        self.vae, self.geom, self.device = vae, geom, device

    def module(self):
        g = self.geom
        return VaeDecodeModule(self.vae.to(self.device).eval(), g.height, g.width, g.vae_scale).eval()

    def input_shape(self, batch) -> list:
        return [batch, self.geom.grid[0] * self.geom.grid[1], self.geom.latent_channels * 4]

    def output_shape(self, batch) -> list:
        return [batch, self.geom.height, self.geom.width, 3]

    def example(self, batch: int = 2, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        return (torch.randn(*self.input_shape(batch), generator=g).to(self.device),)

    def __call__(self):
        batch = torch.export.Dim("batch", min=1, max=32)  # diffusers' Upsample2D branches at batch 64
        with torch.no_grad():
            return torch.export.export(self.module(), self.example(), dynamic_shapes={"latents": {0: batch}},
                                       strict=False)


def package_variants(path: Path, compiled: dict) -> Path:
    """Compile every ``{name: CompiledVariant}`` and write them into one ``.pt2`` package at ``path``."""
    from torch._inductor.package import package_aoti

    files = {name: step() for name, step in compiled.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    package_aoti(str(path), files)
    return path


class ConstantsWriter:
    """Appends tensors to a bundle's ``weights.bin``, reusing bytes already there (identical content and dtype);
    ``rollback`` restores the file."""

    def __init__(self, folder: Path, tables):
        self.path = Path(folder) / WEIGHTS
        self._index: dict[str, tuple[int, int]] = {}
        self.original_size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            for table in tables:
                for _, offset, length, dtype, _ in table:
                    f.seek(offset)
                    self._index.setdefault(_key(f.read(length), dtype), (offset, length))
        self._f = open(self.path, "r+b")
        self._f.seek(0, 2)

    def add(self, name: str, tensor: torch.Tensor) -> list:
        """Store ``tensor`` (or find its bytes); returns its table row [name, offset, length, dtype, dims]."""
        t = tensor.detach().cpu().contiguous()
        dtype = "bfloat16" if t.dtype == torch.bfloat16 else str(t.numpy().dtype)
        raw = (t.view(torch.uint16) if t.dtype == torch.bfloat16 else t).numpy().tobytes()
        key = _key(raw, dtype)
        if key not in self._index:
            self._f.write(b"\0" * ((-self._f.tell()) % ALIGN))
            self._index[key] = (self._f.tell(), len(raw))
            self._f.write(raw)
        offset, length = self._index[key]
        return [name, offset, length, dtype, list(t.shape)]

    def close(self):
        self._f.close()

    def rollback(self):
        self._f.truncate(self.original_size)
        self._f.close()


def _key(raw: bytes, dtype: str) -> str:
    return hashlib.sha256(raw).hexdigest() + ":" + dtype


def _constants(program) -> dict:
    """Every tensor the exported program lifted (parameters, buffers, tensor constants), by fully qualified name."""
    out = dict(program.state_dict)
    out.update({k: v for k, v in program.constants.items() if isinstance(v, torch.Tensor)})
    return out


def prepare_aoti(folder, settings, *, model=None, device: str = "cpu", log=print) -> dict:
    """Compile every variant of a built ONNX bundle with AOTInductor into ``aoti/transformer.pt2``, append the
    constants to ``weights.bin``, check each variant against torch and record the ``aoti`` manifest section."""
    from .. import bundle as bundle_mod

    require_compiler()
    folder = Path(folder)
    manifest = bundle_mod.load(folder)
    if model is None:
        from ..models.registry import load_model

        model = load_model(settings.model, settings.weights, adapters=settings.adapters, sizes=manifest.sizes)
    from ..runtime.generate import model_geometry

    dtype = TORCH_DTYPES[manifest.dtype]
    mp = model.transformer.to(device=device, dtype=dtype).eval()
    geom, text_len = model_geometry(model, settings), manifest.model["text_len"]  # (frames,) height, width
    steps = {model_name(k): CompiledVariant(ExportedVariant(mp, k, geom, text_len, dtype, device))
             for k in manifest.sizes}
    text = model.extras.get("text_encoder") if manifest.text_encoder else None
    if text is not None:
        steps[TEXT_MODEL] = CompiledVariant(ExportedTextEncoder(text.float().eval(), text_len, device))
    vae = _vae_decoder_step(manifest, model, geom, device)
    if vae is not None:
        steps[VAE_MODEL] = CompiledVariant(vae)
    writer = ConstantsWriter(folder, manifest.tensors.values())
    try:
        log(f"AOTInductor: compiling sizes {list(manifest.sizes)}{' and the VAE decoder' if vae else ''} for "
            f"{device} (weights kept out of the code)")
        package_variants(folder / PACKAGE, steps)
        variants = [{"size": k, **_constant_entry(folder, steps, model_name(k), f"variant k={k}", writer)}
                    for k in manifest.sizes]
        text_entry = _constant_entry(folder, steps, TEXT_MODEL, "text encoder", writer) if text else None
        vae_entry = _vae_decoder_entry(folder, vae, steps, writer)
        writer.close()
    except BaseException:
        writer.rollback()
        shutil.rmtree(folder / AOTI_DIR, ignore_errors=True)
        raise
    section = {"aoti_version": AOTI_VERSION, "package": PACKAGE, "device": device, "dtype": manifest.dtype,
               "torch": torch.__version__, "inputs": [s.name for s in manifest.variants[0].inputs],
               "output": "velocity", "variants": variants,
               "weights": {"appended_to_weights_bin": (folder / WEIGHTS).stat().st_size - writer.original_size}}
    if text_entry is not None:
        section[TEXT_MODEL] = text_entry
    if vae_entry is not None:
        section[VAE_MODEL] = vae_entry
    try:
        if text_entry is not None:
            text_entry["parity_max_abs"] = _text_parity(folder, section, text, text_len, manifest.text_encoder,
                                                        device)
            if not text_entry["parity_max_abs"] <= settings.tolerance:
                raise DDiTError(f"AOTInductor text encoder differs from torch by {text_entry['parity_max_abs']:.3g} "
                                f"(> {settings.tolerance:g}); aoti section not written")
        for v in variants:
            v["parity_max_abs"], v["parity_ref_abs_max"] = aoti_parity(folder, section, mp, v["size"], geom,
                                                                       text_len, dtype)
            limit = _parity_limit(settings.tolerance, manifest.dtype, v["parity_ref_abs_max"])
            if not v["parity_max_abs"] <= limit:
                raise DDiTError(f"AOTInductor variant k={v['size']} differs from torch by {v['parity_max_abs']:.3g} "
                                f"(> {limit:.3g}); aoti section not written")
        if vae_entry is not None:
            vae_entry["parity_max_abs"] = _vae_parity(folder, section, vae, device)
            if not vae_entry["parity_max_abs"] <= VAE_PARITY_TOL:
                raise DDiTError(f"the AOTInductor VAE decoder differs from diffusers by "
                                f"{vae_entry['parity_max_abs']:.3g} in [0, 1] pixels (> {VAE_PARITY_TOL:g}); "
                                f"aoti section not written")
    except BaseException:
        _undo(folder, writer.original_size)
        raise
    _update_manifest(folder, section, {PACKAGE: sha256_file(folder / PACKAGE), WEIGHTS: sha256_file(folder / WEIGHTS)})
    for v in variants:
        log(f"k={v['size']}: AOTInductor vs torch max abs diff {v['parity_max_abs']:.2e}, "
            f"{len(v['constants'])} constants from weights.bin")
    if text_entry is not None:
        log(f"text encoder: AOTInductor vs torch max abs diff {text_entry['parity_max_abs']:.2e}, "
            f"{len(text_entry['constants'])} constants from weights.bin")
    if vae_entry is not None:
        log(f"vae_decoder: AOTInductor vs diffusers max abs diff {vae_entry['parity_max_abs']:.2e} (pixels in "
            f"[0, 1]), {len(vae_entry['constants'])} constants from weights.bin")
    return section


def _constant_entry(folder: Path, steps: dict, name: str, what: str, writer: ConstantsWriter) -> dict:
    """{model, constants} of one compiled model of the package: the constants it reads, appended to weights.bin."""
    names = _used_constants(folder / PACKAGE, name)
    consts = _constants(steps[name].program)
    lacking = [n for n in names if n not in consts]
    if lacking:
        raise DDiTError(f"AOTInductor {what} needs constants the export did not lift: {lacking[:3]}")
    return {"model": name, "constants": [writer.add(n, consts[n]) for n in names]}


def _vae_decoder_step(manifest, model, geom, device: str):
    """The VAE decoder's export step for a kind "flux" bundle (its VAE is the --weights folder's), else None."""
    pipe = getattr(model, "extras", {}).get("pipeline")
    if manifest.model.get("kind") != "flux" or pipe is None or getattr(pipe, "vae", None) is None:
        return None
    return ExportedVaeDecoder(pipe.vae, geom, device)


def _vae_decoder_entry(folder: Path, vae, steps: dict, writer) -> dict | None:
    """The manifest's ``aoti.vae_decoder``: model name, constants (appended through ``writer``), shapes."""
    if vae is None:
        return None
    return {**_constant_entry(folder, steps, VAE_MODEL, "VAE decoder", writer),
            "input": {"name": "latents", "shape": vae.input_shape("batch"), "dtype": "float32"},
            "output": {"name": "image", "shape": vae.output_shape("batch"), "dtype": "float32", "range": [0, 1],
                       "uint8": "round(x * 255)"}}


def _vae_parity(folder: Path, section: dict, vae, device: str) -> float:
    """Max |AOTInductor - diffusers| of the decoded image (in [0, 1]) on one random latent, weights from
    weights.bin."""
    from ..runtime.backends.aoti import load_variant, map_weights

    (x,) = vae.example(batch=1, seed=123)
    with torch.no_grad():
        ref = vae.module()(x).float()
    compiled = load_variant(folder / section["package"], section[VAE_MODEL], map_weights(folder / WEIGHTS),
                            device=device, cache={})
    out = compiled(x)
    out = out[0] if isinstance(out, (list, tuple)) else out
    return float((out.float() - ref).abs().max())


def _used_constants(package: Path, name: str) -> list[str]:
    """The constant names the compiled model asks for (it prunes those its size never reads)."""
    from torch._inductor.package import load_package

    return list(load_package(str(package), name).get_constant_fqns())


def _parity_limit(tolerance: float, dtype: str, ref_abs_max: float) -> float:
    """The largest AOTInductor-vs-torch difference a build accepts. fp32: ``tolerance`` as is. bf16/fp16: two
    implementations round differently (Inductor fuses and accumulates in float32, eager rounds every op), and the
    difference grows with the values (bf16 keeps 8 bits: one rounding is 2^-9 of the value), so the tolerance is
    relative to the output's scale, max(1, max|torch|) (flux-mini-64 at 64x64: 0.16 at k=2)."""
    return tolerance if dtype == "fp32" else tolerance * max(1.0, ref_abs_max)


def _text_parity(folder: Path, section: dict, encoder, text_len: int, entry: dict, device: str) -> float:
    """Max |AOTInductor - torch| of the word encoder's states and pooled on two real prompts of its vocabulary."""
    from ..models.text import tokenize
    from ..runtime.backends.aoti import load_variant, map_weights

    vocab = entry["vocab"]
    prompts = [" ".join(vocab[:3]), " ".join(vocab[-min(len(vocab), text_len):])]
    ids, mask = (torch.from_numpy(a).to(device) for a in tokenize(vocab, text_len, prompts))
    with torch.no_grad():
        ref = encoder.float()(ids, mask)
    compiled = load_variant(folder / section["package"], section[TEXT_MODEL], map_weights(folder / WEIGHTS),
                            device=device, cache={})
    out = compiled(ids, mask)
    return max(float((o.float() - r.float()).abs().max()) for o, r in zip(out, ref))


def _update_manifest(folder: Path, section: dict, files: dict):
    """Rewrite manifest.json atomically with the aoti section and the new hashes (raw JSON: keys this version of
    bundle.py does not model survive)."""
    path = folder / MANIFEST
    d = json.loads(path.read_text())
    d[AOTI_KEY] = section
    d["files"].update(files)
    tmp = path.with_name(f".{MANIFEST}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(d, indent=1))
    tmp.replace(path)


def _undo(folder: Path, weights_size: int):
    shutil.rmtree(folder / AOTI_DIR, ignore_errors=True)
    with open(folder / WEIGHTS, "r+b") as f:
        f.truncate(weights_size)


def build_with_aoti(settings, *, device: str = "cpu", log=print) -> Path:
    """The whole ``build --backend aoti``: the ONNX bundle, then the AOTInductor package in it, both in the build's
    temporary folder: an existing bundle at the output is replaced only once both are complete."""
    from ..models.registry import load_model
    from .build import build_bundle, check_out, default_out

    require_compiler()
    check_out(Path(settings.out) if settings.out else default_out(settings))  # before the model loads
    model = load_model(settings.model, settings.weights, adapters=settings.adapters,
                       sizes=settings.load_sizes)
    return build_bundle(settings, log=log, model=model,
                        finish=lambda folder: prepare_aoti(folder, settings, model=model, device=device, log=log))
