"""``ddit-export build``: export every patch-size variant into one bundle folder, atomically.

The bundle is written into a temporary sibling folder and renamed into place at the end, so an interrupted or
failed build never leaves a half bundle that looks valid, and an existing bundle is replaced only by a complete one.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

from ..bundle import (FORMAT, FORMAT_VERSION, IMAGE_FORMAT_VERSION, MANIFEST, WEIGHTS, Manifest, TensorSpec, Variant,
                      sha256_file)
from ..errors import ConfigError, DDiTError
from ..fsutil import (OutputError, check_replaceable, remove_stale, replace_dir, sigterm_as_exit, temp_dir_for,
                      write_failure)
from ..settings import BuildSettings

ENGINES = Path("engines")


def default_out(settings: BuildSettings) -> Path:
    name = Path(settings.model).name if Path(settings.model).is_dir() else settings.model
    return ENGINES / name


def is_bundle(folder: Path) -> bool:
    """A folder ``build`` wrote: its manifest names the bundle format. Only such a folder is ever replaced."""
    try:
        return json.loads((Path(folder) / MANIFEST).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_out(out: Path):
    """Refuse, before any export work, an output that is not ours to replace: a file, a folder that is neither
    empty nor a bundle, the current folder or one above it."""
    full, cwd = Path(out).resolve(), Path.cwd().resolve()
    if full == cwd or full in cwd.parents:
        raise OutputError(f"--out {out} is the current folder or one above it; a build replaces its output folder "
                          f"as a whole: give a new folder or an existing bundle (default engines/<model>)")
    check_replaceable(Path(out), is_bundle, "ddit bundle")


def build_bundle(settings: BuildSettings, *, progress: bool = True, log=print, model=None, finish=None,
                 warn=None) -> Path:
    """Export, check, and write the bundle; returns its folder. ``model``: the model of ``settings``, already
    loaded (``build --backend trt`` loads it once for both steps). ``finish(folder)``: more parts of the bundle
    (AOTInductor package, TensorRT engines), added to the complete ONNX bundle in the temporary folder before it
    replaces ``out``: an old bundle at ``out`` is replaced only by a bundle with every part. ``warn``: where the one
    warning line about default sizes the resolution cannot use goes (default: stderr)."""
    out = Path(settings.out) if settings.out else default_out(settings)
    check_out(out)
    with sigterm_as_exit():  # SIGTERM cleans up like Ctrl-C; SIGKILL's leftovers go at the next build
        remove_stale(out, is_bundle)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = temp_dir_for(out)  # also proves the folder is writable before the expensive export
        except OSError as e:
            raise write_failure(out, e) from None
        try:
            _build_into(tmp, out, settings, progress, log, model, finish, warn)
        except DDiTError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        except OSError as e:  # full disk, read-only folder
            shutil.rmtree(tmp, ignore_errors=True)
            raise write_failure(out, e) from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out


def _build_into(tmp: Path, out: Path, settings: BuildSettings, progress: bool, log, model, finish=None, warn=None):
    from ..models.registry import load_config_only, load_model
    from ..runtime.generate import model_geometry

    if model is None:
        stub = load_config_only(settings.model, settings.weights)
        if stub is not None:  # --model wan: frames, sides, RoPE and sizes checked before the whole pipeline loads
            build_sizes(settings, model_geometry(stub, settings), warn=lambda line: None)
        model = load_model(settings.model, settings.weights, adapters=settings.adapters,
                           sizes=settings.load_sizes)
    geom = model_geometry(model, settings)
    have = tuple(getattr(model.transformer, "sizes", None) or settings.load_sizes)  # what its adapters cover
    settings = dataclasses.replace(settings, sizes=build_sizes(settings, geom, warn or _stderr, have))
    if settings.quantized:  # the calibration captions are checked before the export, not after it
        from .quantize import calibration_scenes

        calibration_scenes(model, settings, log)
    manifest = _write_bundle(tmp, model, geom, settings, progress, log)
    (tmp / MANIFEST).write_text(manifest.to_json())
    if finish is not None:
        finish(tmp)
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private
    replace_dir(tmp, out, is_bundle)


def build_sizes(settings: BuildSettings, geom, warn, have=None) -> tuple[int, ...]:
    """The sizes to export at ``geom``: ``--sizes`` as given (each must divide the token grid: else an error), or
    the default sizes (``have``: the model's, else 1, 2, 4) that divide it, the dropped ones named in one
    ``warning:`` line."""
    grid = "x".join(map(str, geom.grid[-2:]))  # the spatial token grid (a video's per frame)
    if settings.sizes is not None:
        missing = [k for k in settings.sizes if not geom.available(k)]
        if missing:
            raise ConfigError(f"patch size(s) {missing} do not divide the {grid} token grid of "
                              f"{geom.height}x{geom.width}; choose other --sizes or another resolution")
        return settings.sizes
    have = tuple(have or settings.load_sizes)
    sizes = tuple(k for k in have if geom.available(k))
    dropped = [k for k in have if k not in sizes]
    if dropped:
        warn(f"warning: patch size(s) {dropped} are not built at {geom.height}x{geom.width}: they do not divide its "
             f"{grid} token grid (building sizes {list(sizes)}; --sizes chooses them)")
    return sizes


def _stderr(line: str):
    import sys

    print(line, file=sys.stderr)


def _write_bundle(folder: Path, model, geom, settings: BuildSettings, progress: bool, log) -> Manifest:
    import onnx
    from tqdm.auto import tqdm

    from .onnx import export_text_encoder, export_variant, variant_input_names
    from .parity import variant_parity
    from .shared_weights import SharedWeightsWriter

    dtype = settings.torch_dtype
    mp = model.transformer.to(dtype)
    text = model.extras.get("text_encoder")
    text_len = settings.text_len or (text.config.max_length if text is not None else 512)
    writer = SharedWeightsWriter(folder)
    # int8: the fp32 graphs go to a scratch folder of their own first (checked against torch, calibrated, then
    # quantized into the bundle); the scratch folder lives inside the temporary bundle folder, so it goes with it
    fp32_dir, fp32_writer = folder, writer
    if settings.quantized:
        fp32_dir = folder / "_fp32"
        fp32_dir.mkdir()
        fp32_writer = SharedWeightsWriter(fp32_dir)
    variants, tensors = [], {}
    try:
        for k in tqdm(settings.sizes, desc="export variants", disable=not progress):
            file = f"transformer_k{k}.onnx"
            tensors[file] = _save_shared(export_variant(mp, k, geom, text_len, dtype), fp32_writer, fp32_dir, file)
            variants.append((k, file))
        text_entry = None
        if text is not None:
            tensors["text_encoder.onnx"] = _save_shared(export_text_encoder(text, text_len), writer, folder,
                                                        "text_encoder.onnx")
            text_entry = {"file": "text_encoder.onnx", "vocab": list(text.config.vocab),
                          "max_length": text_len, "inputs": ["input_ids", "attention_mask"],
                          "outputs": ["states", "pooled"]}
    finally:
        fp32_writer.close()
        if not settings.quantized:
            writer.close()
    for _, file in variants:
        onnx.checker.check_model(str(fp32_dir / file))
    cfg = dict(mp.config)
    names = variant_input_names(mp)
    np_dtype = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[settings.dtype]
    shapes = _input_shapes(cfg, geom, text_len)
    spec_in = tuple(TensorSpec(n, shapes[n], np_dtype) for n in names)
    spec_out = (TensorSpec("velocity", ("batch", geom.tokens(1), geom.token_channels), np_dtype),)
    manifest_variants = []
    for k, file in tqdm(variants, desc="parity", disable=not progress):
        diff = variant_parity(fp32_dir / file, mp, k, geom, text_len, dtype)
        if diff is not None and not diff <= settings.tolerance:
            raise DDiTError(f"variant k={k}: ONNX differs from torch by {diff:.3g} (> {settings.tolerance:g}); "
                            f"bundle not written")
        manifest_variants.append(Variant(k, file, geom.tokens(k), geom.grid_at(k), spec_in, spec_out, diff))
    for v in manifest_variants:
        log(f"k={v.size}: {v.tokens} tokens, ONNX vs torch max abs diff "
            f"{'not run (bf16 on ORT CPU)' if v.parity_max_abs is None else f'{v.parity_max_abs:.2e}'}"
            f"{' (the fp32 graph, before quantization)' if settings.quantized else ''}")
    quantization, extra_files = None, []
    if settings.quantized:
        try:
            fp32_tables = {f: tensors[f] for _, f in variants}
            quantization, extra_files = _quantize_into(folder, fp32_dir, variants, tensors, fp32_tables, writer,
                                                       model, settings, progress, log)
        finally:
            writer.close()
    files = [WEIGHTS] + [f for _, f in variants] + ([text_entry["file"]] if text_entry else []) + extra_files
    entry = _model_entry(model, geom, text_len, cfg)
    video = entry["kind"] in ("wan-pixel", "wan")
    return Manifest(
        model=entry, variants=manifest_variants, format_version=FORMAT_VERSION if video else IMAGE_FORMAT_VERSION,
        schedule=_schedule_entry(model.schedule_defaults, video),
        dtype=settings.dtype, files={f: sha256_file(folder / f) for f in files}, text_encoder=text_entry,
        tools=_tool_versions(), tensors=tensors, precision=settings.precision if settings.quantized else None,
        quantization=quantization)


def _quantize_into(folder: Path, fp32_dir: Path, variants, tensors: dict, fp32_tables: dict, writer, model,
                   settings: BuildSettings, progress: bool, log) -> tuple[dict, list[str]]:
    """Calibrate on the model's own generations, quantize each fp32 graph of ``fp32_dir`` and write it into the
    bundle (its int8 weights into the bundle's shared file, ``tensors`` updated); returns the manifest's
    ``quantization`` section and the calibration files it adds. The fp32 scratch folder is removed at the end."""
    import onnx
    from tqdm.auto import tqdm

    from . import quantize as q
    from .onnx import strip_metadata

    scenes, prompts_path = q.calibration_scenes(model, settings, log)
    feeds = q.collect(model, scenes, settings.sizes, progress=progress)
    cal = folder / q.CALIBRATION_DIR
    cal.mkdir()
    shutil.copyfile(prompts_path, cal / "prompts.txt")
    ranges, per_size, added = {}, {}, [f"{q.CALIBRATION_DIR}/prompts.txt"]
    for k, file in tqdm(variants, desc="quantize", disable=not progress):
        scratch = folder / f"_int8_k{k}"
        cache = cal / f"ranges_k{k}.json"
        excluded, weight_only = q.quantize_graph(fp32_dir / file, scratch / "model.onnx", feeds[k], cache,
                                                 activations=settings.int8_activations)
        err = q.velocity_error(fp32_dir / file, scratch / "model.onnx", feeds[k])
        proto = strip_metadata(onnx.load(str(scratch / "model.onnx"), load_external_data=False))
        tensors[file] = writer.externalize(proto, scratch)
        onnx.save(proto, folder / file)
        shutil.rmtree(scratch)
        ranges[k] = q.keyed_ranges(q.range_summary(cache), q.matmul_inputs(fp32_dir / file, fp32_tables[file]))
        per_size[str(k)] = {"calibration_calls": len(feeds[k]), "velocity_rel_rms_vs_fp32": round(err, 5),
                            "activation_matmuls_excluded": len(excluded),
                            "weight_only_matmuls": {g: len(v) for g, v in weight_only.items()},
                            "ranges": f"{q.CALIBRATION_DIR}/ranges_k{k}.json"}
        added.append(f"{q.CALIBRATION_DIR}/ranges_k{k}.json")
        log(f"k={k}: int8 ({settings.int8_activations} activations), {len(feeds[k])} calibration calls, "
            f"{len(excluded)} activation x activation matmuls left in fp32, "
            f"{sum(len(v) for v in weight_only.values())} weight-only, velocity vs fp32 graph: relative RMS "
            f"{err:.2e}")
    shutil.rmtree(fp32_dir)
    comparison = q.compare_ranges(ranges)
    for k, c in comparison.items():
        per_size[k].update(c)
    section = {"precision": settings.precision, "method": q.QUANTIZER, "format": "QDQ",
               "weights": "int8 symmetric per-channel (depends on the weight alone: stored once)",
               "activations": q.ACTIVATIONS[settings.int8_activations][2],
               "int8_activations": settings.int8_activations,  # absent in older bundles: u8
               "op_types": list(q.OP_TYPES),
               "excluded": "MatMul/Gemm nodes whose both inputs are activations (attention Q.K^T, P.V) stay fp32; "
                           "per size: activation_matmuls_excluded",
               "weight_only": "int8 weights, fp32 activations (DequantizeLinear on the weight only) for the matmul "
                              f"groups {', '.join(q.WEIGHT_ONLY_GROUPS)} (export.quantize.matmul_groups); per size: "
                              "weight_only_matmuls",
               "calibration": {"prompts": f"{q.CALIBRATION_DIR}/prompts.txt", "prompts_source": Path(prompts_path).name,
                               "prompts_sha256": q.sha256_text(prompts_path), "samples": len(scenes),
                               "steps": model.default_steps, "schedule": "static, sizes rotated per prompt"},
               "per_size": per_size}
    return section, added


def _schedule_entry(schedule, video: bool) -> dict:
    """The manifest's schedule: every knob; an image bundle leaves out the video-only ``video_std`` (so its manifest
    stays version 1 exactly as before, and readers from before video keep reading it)."""
    from ..settings import OMIT_AT_DEFAULT, ScheduleSettings

    d = dataclasses.asdict(schedule)
    if not video:
        d.pop("video_std", None)
    for k in OMIT_AT_DEFAULT:  # the rule's variants and carry only when set: older readers (the C++ runtime) see them
        if d[k] == getattr(ScheduleSettings, k):
            d.pop(k)
    return d


def _save_shared(prog, writer, folder: Path, file: str):
    """Write one exported graph into the bundle with its large weights in the shared file; returns their table."""
    import onnx

    from .onnx import program_to_proto

    scratch = folder / f"_scratch_{Path(file).stem}"
    proto = program_to_proto(prog, scratch)
    table = writer.externalize(proto, scratch)
    onnx.save(proto, folder / file)
    shutil.rmtree(scratch)
    return table


def _input_shapes(cfg, geom, text_len) -> dict:
    if getattr(geom, "is_video", False):
        return {"hidden_states": ("batch", geom.tokens(1), geom.token_channels), "timestep": ("batch",),
                "encoder_hidden_states": ("batch", text_len, cfg["text_dim"])}
    shapes = {"hidden_states": ("batch", geom.tokens(1), geom.token_channels),
              "encoder_hidden_states": ("batch", text_len, cfg["joint_attention_dim"]),
              "pooled_projections": ("batch", cfg["pooled_projection_dim"]), "timestep": ("batch",),
              "img_ids": (geom.tokens(1), 3), "txt_ids": (text_len, 3), "guidance": ("batch",)}
    return shapes


def _jsonable(cfg: dict) -> dict:
    """A diffusers config as plain JSON, without the local path it was loaded from."""
    drop = {"_name_or_path", "_use_default_values"}
    return json.loads(json.dumps({k: v for k, v in dict(cfg).items() if k not in drop}, default=str))


def _model_entry(model, geom, text_len, cfg) -> dict:
    if getattr(model, "family", "flux") == "wan":
        kind = "wan" if model.vae_scale > 1 else "wan-pixel"
    else:
        kind = "flux" if model.vae_scale > 1 else "pixel"
    entry = {"name": model.name, "kind": kind,
            "transformer_config": _jsonable(cfg),
            "lora_rank": model.transformer.adapter_settings.rank, "vae_scale": model.vae_scale,
            "latent_channels": model.latent_channels, "height": geom.height, "width": geom.width,
            "default_steps": model.default_steps, "guidance_embeds": model.guidance_embeds,
            "scheduler_config": _jsonable(model.scheduler_config),
            "text_len": text_len, "default_prompt": model.default_prompt}
    if getattr(geom, "is_video", False):  # format version 2: the clip the graphs are built for
        entry.update(frames=geom.frames, vae_temporal=geom.vae_temporal, patch=list(geom.patch))
    trained = getattr(model, "trained_resolutions", None)
    if trained:  # optional: readers without it take height x width
        entry["trained_resolutions"] = [list(r) for r in trained]
    frames = getattr(model, "trained_frames", None)
    if frames:  # optional (video): the clip lengths the weights were trained at (generate warns at another)
        entry["trained_frames"] = [int(f) for f in frames]
    calibrated = getattr(model, "schedule_resolution", None)
    if calibrated:  # optional: the size the schedule profile was calibrated at (generate warns at another)
        entry["schedule_resolution"] = list(calibrated)
    if calibrated and getattr(model, "schedule_frames", None):  # video: and the clip length
        entry["schedule_frames"] = int(model.schedule_frames)
    return entry


def _tool_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("ddit-export", "torch", "diffusers", "onnx", "onnxscript", "onnxruntime"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out
