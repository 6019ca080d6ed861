"""The versioned bundle format: the one contract between ``build`` and every runtime backend.

A bundle is a folder::

    manifest.json          format + version, model config, variants, schedule defaults, file hashes, tool versions
    weights.bin            every large tensor of every graph, stored once (ONNX external data, 64-byte aligned);
                           manifest "tensors" lists, per graph, each one's name, offset, length, dtype and shape
    transformer_k1.onnx    one graph per patch size; same inputs and outputs at every size
    transformer_k2.onnx
    text_encoder.onnx      pixel models (flux-mini): the word-level text encoder, so ORT alone generates images

Readers check ``format_version`` first and refuse a newer one with a message naming it. See engines/README.md.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import BundleError
from .shapes import parse_resolutions

FORMAT = "ddit-bundle"
#: Version 2 added video bundles (model kinds in VIDEO_KINDS: Wan graphs, ``model.frames``, (F, h, w) variant
#: grids). Image bundles are still written as version 1, unchanged, so readers from before video keep reading them;
#: a video bundle is refused by those readers with the "newer format" message instead of failing mid-run.
FORMAT_VERSION = 2
IMAGE_FORMAT_VERSION = 1
VIDEO_KINDS = ("wan-pixel", "wan")  # wan-pixel: text encoder inside (wan-mini); wan: transformer only (+ --weights)
MANIFEST = "manifest.json"
WEIGHTS = "weights.bin"
# numpy has no bfloat16: a tensor whose dtype is "bfloat16" (bf16 bundles) is stored as its raw 16-bit patterns,
# the high half of the float32 with the same sign and exponent; read it as uint16 and widen with bf16_to_float32
STORAGE_DTYPES = {"bfloat16": np.uint16}
ONNX_BFLOAT16 = 16  # onnx.TensorProto.BFLOAT16, for OrtValue.ortvalue_from_numpy_with_onnx_type
# the AOTInductor section (build --backend aoti; export/aoti.py): its own version, checked by the readers that use
# it (the Python aoti backend, runtime/cpp), so an ONNX Runtime reader is not refused for a section it never reads
AOTI_KEY = "aoti"
AOTI_VERSION = 1


def is_video(manifest) -> bool:
    """A bundle of a video model (Wan): its graphs take (latents, timestep, text states) and its grids are 3-D."""
    return manifest.model.get("kind") in VIDEO_KINDS


def storage_dtype(name: str) -> np.dtype:
    """The numpy dtype to read a tensor of dtype ``name`` (a tensor table or TensorSpec dtype) from the bundle."""
    return np.dtype(STORAGE_DTYPES.get(name, name))


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32, exactly: the 16 bits become the float32's high half."""
    return (np.asarray(bits, np.uint16).astype(np.uint32) << 16).view(np.float32)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple  # ints, or "batch" for the dynamic batch axis
    dtype: str  # numpy dtype name

    @classmethod
    def from_dict(cls, d) -> "TensorSpec":
        return cls(d["name"], tuple(d["shape"]), d["dtype"])


@dataclass(frozen=True)
class Variant:
    size: int
    file: str
    tokens: int
    grid: tuple
    inputs: tuple
    outputs: tuple
    parity_max_abs: float | None = None

    @classmethod
    def from_dict(cls, d) -> "Variant":
        return cls(int(d["size"]), d["file"], int(d["tokens"]), tuple(d["grid"]),
                   tuple(TensorSpec.from_dict(x) for x in d["inputs"]),
                   tuple(TensorSpec.from_dict(x) for x in d["outputs"]), d.get("parity_max_abs"))


@dataclass
class Manifest:
    model: dict
    variants: list
    schedule: dict
    dtype: str
    files: dict = field(default_factory=dict)  # relative path -> sha256
    text_encoder: dict | None = None
    tools: dict = field(default_factory=dict)
    tensors: dict = field(default_factory=dict)  # graph file -> [[name, offset, length, dtype, dims], ...]
    tensorrt: dict | None = None  # the TensorRT plan and engines (export/trt_plan.py), when built with --backend trt
    cache: dict | None = None  # default step-cache profile (settings.CacheSettings fields); None: no cache
    aoti: dict | None = None  # AOTInductor package and constant tables (build --backend aoti); read via aoti_section
    format_version: int = FORMAT_VERSION
    # quantized bundles (build --precision int8, issue 22): QDQ graphs with fp32 inputs and outputs (``dtype`` stays
    # the graphs' I/O dtype, fp32), int8 weights in weights.bin; ``quantization``: method, calibration, per-size
    # ranges. Both optional and written only when quantized: fp32/fp16/bf16 manifests are unchanged (no version bump;
    # a reader that ignores them still runs the graphs on ONNX Runtime, which is all a QDQ graph needs)
    precision: str | None = None
    quantization: dict | None = None

    @property
    def effective_precision(self) -> str:
        return self.precision or self.dtype

    @property
    def quantized(self) -> bool:
        return self.effective_precision in QUANTIZED_PRECISIONS

    @property
    def int8_activations(self) -> str | None:
        """How an int8 bundle's activations are quantized (``build --int8-activations``): ``u8`` (uint8 with a zero
        point) or ``s8`` (int8, zero point 0: what TensorRT takes). Bundles from before the field are ``u8``; None
        for a bundle that is not int8."""
        if self.effective_precision != "int8":
            return None
        return (self.quantization or {}).get("int8_activations", "u8")

    def variant(self, size: int) -> Variant:
        for v in self.variants:
            if v.size == size:
                return v
        raise BundleError(f"bundle has no variant for patch size {size} (has {[v.size for v in self.variants]})")

    @property
    def sizes(self) -> tuple:
        return tuple(sorted(v.size for v in self.variants))

    @property
    def trained_resolutions(self) -> tuple[tuple[int, int], ...]:
        """The (h, w) pairs the weights were trained at: the optional ``model.trained_resolutions``; bundles
        without it: the resolution the bundle was built for."""
        return parse_resolutions(self.model.get("trained_resolutions", [[self.model["height"], self.model["width"]]]))

    @property
    def trained_frames(self) -> tuple[int, ...] | None:
        """Video: the clip lengths the weights were trained at (optional ``model.trained_frames``), else None."""
        f = self.model.get("trained_frames")
        if f is None:
            return None
        if not isinstance(f, list) or not f or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                                       for v in f):
            raise ValueError(f"'trained_frames' must be a non-empty list of positive integers, got {f!r}")
        return tuple(f)

    @property
    def schedule_resolution(self) -> tuple[int, int] | None:
        """The (h, w) the schedule profile was calibrated at (optional ``model.schedule_resolution``), else None."""
        r = self.model.get("schedule_resolution")
        return None if r is None else parse_resolutions([r])[0]

    @property
    def schedule_frames(self) -> int | None:
        """Video: the clip length the schedule profile was calibrated at (optional ``model.schedule_frames``)."""
        f = self.model.get("schedule_frames")
        if f is not None and (isinstance(f, bool) or not isinstance(f, int) or f < 1):
            raise ValueError(f"'schedule_frames' must be a positive integer, got {f!r}")
        return f

    def to_json(self) -> str:
        d = {"format": FORMAT, "format_version": self.format_version, "model": self.model, "dtype": self.dtype,
             "schedule": self.schedule, "variants": [_variant_dict(v) for v in self.variants],
             "text_encoder": self.text_encoder, "files": self.files, "tools": self.tools,
             "tensors": self.tensors, "tensorrt": self.tensorrt}
        if self.cache is not None:
            d["cache"] = self.cache
        if self.aoti is not None:
            d[AOTI_KEY] = self.aoti
        if self.precision is not None:
            d["precision"] = self.precision
        if self.quantization is not None:
            d["quantization"] = self.quantization
        return json.dumps(d, indent=1)


def _variant_dict(v: Variant) -> dict:
    spec = lambda t: {"name": t.name, "shape": list(t.shape), "dtype": t.dtype}  # noqa: E731
    return {"size": v.size, "file": v.file, "tokens": v.tokens, "grid": list(v.grid),
            "inputs": [spec(t) for t in v.inputs], "outputs": [spec(t) for t in v.outputs],
            "parity_max_abs": v.parity_max_abs}


def read_manifest(folder: str | Path) -> Manifest:
    """Parse and check ``manifest.json``; raises BundleError naming the file or field at fault."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise BundleError(f"bundle folder not found: {folder}")
    if not path.is_file():
        raise BundleError(f"not a bundle: {path} is missing")
    try:
        d = json.loads(path.read_text())
    except ValueError as e:
        raise BundleError(f"{path}: not valid JSON ({e})") from None
    if d.get("format") != FORMAT:
        raise BundleError(f"{path}: field 'format' is {d.get('format')!r}, expected {FORMAT!r}")
    version = d.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise BundleError(f"{path}: field 'format_version' is {version!r}, expected an integer")
    if version > FORMAT_VERSION:
        raise BundleError(f"{path}: bundle format version {version} is newer than this ddit-export reads "
                          f"({FORMAT_VERSION}); upgrade ddit-export or rebuild the bundle")
    try:
        variants = [Variant.from_dict(v) for v in d["variants"]]
        m = Manifest(model=d["model"], variants=variants, schedule=d["schedule"], dtype=d["dtype"],
                     files=d["files"], text_encoder=d.get("text_encoder"), tools=d.get("tools", {}),
                     tensors=d["tensors"], tensorrt=d.get("tensorrt"), cache=d.get("cache"),
                     aoti=d.get(AOTI_KEY), format_version=version, precision=d.get("precision"),
                     quantization=d.get("quantization"))
        _check_manifest(folder, m)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise BundleError(f"{path}: missing or malformed field {e}") from None
    return m


#: dtypes a bundle may name: the bundle's precision, and each tensor's (numpy names; bfloat16 as ml_dtypes has it)
BUNDLE_DTYPES = ("fp32", "fp16", "bf16")
BUNDLE_PRECISIONS = BUNDLE_DTYPES + ("int8",)
QUANTIZED_PRECISIONS = ("int8",)
#: what a backend that cannot run QDQ graphs says about a quantized bundle (aoti, the C++ runtime, TensorRT here)
def quantized_unsupported(backend: str, precision: str = "int8") -> str:
    return (f"the {backend} backend cannot run a {precision} bundle (quantized QDQ ONNX graphs run on ONNX Runtime "
            f"only): use --backend onnxruntime, or build an fp32/bf16 bundle for {backend}")


TENSOR_DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int8", "uint8", "bool")


def runtime_files(folder: Path, m: Manifest) -> list[str]:
    """Every file of the bundle a runtime reads: weights.bin, each variant graph, the text encoder, and those of
    the TensorRT graphs and engines that are present (a plan is recorded on the CPU, engines built on a GPU)."""
    need = [WEIGHTS] + [v.file for v in m.variants] + ([m.text_encoder["file"]] if m.text_encoder else [])
    trt = [f for e in (m.tensorrt or {}).get("engines", []) for f in (e["onnx"], e["plan"])]
    need += [f for f in list(m.tensors) + trt if (folder / f).exists()]
    if isinstance(m.aoti, dict) and isinstance(m.aoti.get("package"), str):
        need.append(m.aoti["package"])
    return list(dict.fromkeys(need))


def _check_manifest(folder: Path, m: Manifest):
    """Refuse what a load could not check or would silently get wrong: an unknown dtype, a file the runtime reads
    that has no hash, a graph without its table of shared weights."""
    path = folder / MANIFEST
    if "trained_resolutions" in m.model:
        try:
            parse_resolutions(m.model["trained_resolutions"])
        except ValueError as e:
            raise BundleError(f"{path}: field 'model': {e}") from None
    if "trained_frames" in m.model:
        try:
            m.trained_frames
        except ValueError as e:
            raise BundleError(f"{path}: field 'model': {e}") from None
    if "schedule_resolution" in m.model:
        try:
            m.schedule_resolution
        except ValueError as e:
            raise BundleError(f"{path}: field 'model.schedule_resolution': {e}") from None
    try:
        m.schedule_frames
    except ValueError as e:
        raise BundleError(f"{path}: field 'model': {e}") from None
    if m.dtype not in BUNDLE_DTYPES:
        raise BundleError(f"{path}: field 'dtype' is {m.dtype!r}, expected one of {', '.join(BUNDLE_DTYPES)}")
    if m.precision is not None and m.precision not in BUNDLE_PRECISIONS:
        raise BundleError(f"{path}: field 'precision' is {m.precision!r}, expected one of "
                          f"{', '.join(BUNDLE_PRECISIONS)}")
    if m.quantized and m.dtype != "fp32":
        raise BundleError(f"{path}: a {m.precision} bundle has fp32 graph inputs; field 'dtype' is {m.dtype!r}")
    if is_video(m) and not (isinstance(m.model.get("frames"), int) and m.format_version >= 2):
        raise BundleError(f"{path}: a video bundle (kind {m.model.get('kind')!r}) needs format_version >= 2 and an "
                          f"integer 'model.frames'")
    if not isinstance(m.files, dict) or not isinstance(m.tensors, dict):
        raise BundleError(f"{path}: fields 'files' and 'tensors' must be objects")
    specs = [t for v in m.variants for t in v.inputs + v.outputs]
    for where, dtype in ([(f"tensor {t.name!r}", t.dtype) for t in specs]
                         + [(f"{g}: tensor {row[0]!r}", row[3]) for g, rows in m.tensors.items() for row in rows]):
        if dtype not in TENSOR_DTYPES:
            raise BundleError(f"{path}: {where} has dtype {dtype!r}, not one of {', '.join(TENSOR_DTYPES)}")
    for v in m.variants:
        if v.file not in m.files:
            raise BundleError(f"{path}: variant k={v.size} names {v.file!r}, which is not among the bundle's files")
    unhashed = [f for f in runtime_files(folder, m) if f not in m.files]
    if unhashed:
        raise BundleError(f"{path}: 'files' has no sha256 for {', '.join(unhashed)}, which the runtime reads; "
                          f"the bundle cannot be verified: rebuild it")
    graphs = [v.file for v in m.variants] + ([m.text_encoder["file"]] if m.text_encoder else [])
    untabled = [g for g in graphs if g not in m.tensors]
    if untabled:
        raise BundleError(f"{path}: 'tensors' has no table for {', '.join(untabled)}; its weights would not be "
                          f"shared from weights.bin: rebuild the bundle")


def aoti_section(folder: str | Path, m: Manifest) -> dict:
    """The bundle's AOTInductor section, checked: refuses a bundle without one and a newer section version."""
    path = Path(folder) / MANIFEST
    a = m.aoti
    if a is None:
        raise BundleError(f"{path}: the bundle has no AOTInductor package; rebuild it with "
                          f"`ddit-export build --backend aoti`")
    version = a.get("aoti_version") if isinstance(a, dict) else None
    if not isinstance(version, int) or version < 1:
        raise BundleError(f"{path}: field 'aoti.aoti_version' is {version!r}, expected an integer")
    if version > AOTI_VERSION:
        raise BundleError(f"{path}: AOTInductor section version {version} is newer than this ddit-export reads "
                          f"({AOTI_VERSION}); upgrade ddit-export or rebuild with --backend aoti")
    try:
        sizes = sorted(int(v["size"]) for v in a["variants"])
        for v in a["variants"]:
            for name, offset, length, dtype, dims in v["constants"]:
                if dtype not in TENSOR_DTYPES:
                    raise BundleError(f"{path}: aoti constant {name!r} has dtype {dtype!r}")
        str(a["package"]), list(a["inputs"]), str(a["device"])
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"{path}: missing or malformed aoti field {e}") from None
    if sizes != sorted(m.sizes):
        raise BundleError(f"{path}: the AOTInductor package has sizes {sizes}, the bundle {list(m.sizes)}: rebuild")
    return a


def verify_files(folder: str | Path, manifest: Manifest, *, hashes: bool = True) -> dict:
    """Check every file the manifest lists exists (and matches its sha256). Returns {file: bytes}."""
    folder = Path(folder)
    sizes = {}
    for rel, digest in manifest.files.items():
        p = folder / rel
        if not p.is_file():
            raise BundleError(f"bundle file missing: {p}")
        if hashes and sha256_file(p) != digest:
            raise BundleError(f"hash mismatch: {p} (sha256 differs from manifest.json; the file is damaged "
                              f"or was changed after the build)")
        sizes[rel] = p.stat().st_size
    return sizes


def load(folder: str | Path, *, hashes: bool = True) -> Manifest:
    m = read_manifest(folder)
    verify_files(folder, m, hashes=hashes)
    return m
