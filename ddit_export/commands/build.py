"""``ddit-export build``: export every patch-size variant of the transformer into one bundle."""
import click

from ..settings import DEFAULT_MODEL


@click.command()
@click.option("--model", default=DEFAULT_MODEL, show_default=True,
              help="flux-mini-64, flux-mini, tiny, random-20m, flux (with --weights); video: wan-mini, tiny-wan, "
                   "wan (with --weights); or a model folder.")
@click.option("--weights", type=click.Path(), help="Local diffusers folder: FLUX.1-dev for --model flux, Wan 2.1 "
                                                   "for --model wan.")
@click.option("--adapters", type=click.Path(), help="Adapter safetensors (default: the model's own).")
@click.option("--sizes", help="Patch sizes to export, in fine tokens (each must divide the token grid). Default: "
                               "those of 1,2,4 that divide it; a dropped size is named in one warning line.")
@click.option("--height", type=int, help="Image height (default: the model's).")
@click.option("--width", type=int, help="Image width (default: the model's).")
@click.option("--frames", type=int, help="Video models: the clip length the graphs are built for (default: the "
                                         "model's).")
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), help="The graphs' dtype (default fp32); "
                                                                            "same as --precision fp32|fp16|bf16.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16", "int8", "fp8"]),
              help="fp32 (default), fp16, bf16 (as --dtype); int8: QDQ graphs calibrated on the model's own "
                   "generations at every patch size, run by ONNX Runtime on the CPU; fp8: TensorRT/GPU only, refused "
                   "here.")
@click.option("--calibration-prompts", type=click.Path(), help="--precision int8: calibration captions, one a line "
              "(default: the shipped ddit_export/calibration/prompts-flux-mini.txt).")
@click.option("--calibration-samples", type=int, default=8, show_default=True,
              help="--precision int8: calibration generations (the first N captions).")
@click.option("--int8-activations", type=click.Choice(["u8", "s8"]),
              help="--precision int8: u8 (default) uint8 activations with zero points, best for ONNX Runtime's CPU "
                   "kernels; s8 int8 symmetric activations (zero point 0), the layout TensorRT takes (passes "
                   "`ddit-export trt-check`'s Q/DQ lint).")
@click.option("--text-len", type=int, help="Text tokens (FLUX.1-dev: T5 length, default 512).")
@click.option("--backend", type=click.Choice(["onnx", "trt", "aoti"]), default="onnx", show_default=True,
              help="onnx: ONNX graphs + shared weights (ONNX Runtime). trt: also TensorRT engines (needs tensorrt). "
                   "aoti: also an AOTInductor package for the C++ runtime (needs a C++ compiler).")
@click.option("--device", default="cpu", show_default=True, help="With --backend aoti: cpu or cuda, the device "
                                                                 "AOTInductor compiles for.")
@click.option("--out", type=click.Path(), help="Bundle folder (default: engines/<model>).")
@click.option("--profile", type=click.Path(), help="A calibrated profile (`ddit-export calibrate`'s JSON, e.g. "
              "calibration/wan-mini-stack.json) written into the bundle: its schedule and its step cache become "
              "the bundle's defaults (else the model's own schedule, no cache).")
def command(model, weights, adapters, sizes, height, width, frames, dtype, precision, calibration_prompts,
            calibration_samples, int8_activations, text_len, backend, device, out, profile):
    """Export each patch-size variant (ONNX, shared weights) into a bundle, checked against torch."""
    from ..api import model_family
    from ..parsing import int_list as _ints
    from ..errors import ConfigError
    from ..export.build import build_bundle
    from ..settings import BuildSettings

    if profile is not None:  # before anything loads or exports
        from ..cli_options import read_profile_option

        profile = read_profile_option(profile, model, weights)

    if dtype is not None and precision is not None and dtype != precision:
        raise ConfigError(f"--precision {precision} and --dtype {dtype} disagree: give one of them")
    quant = dict(precision=precision, calibration_prompts=calibration_prompts,
                 calibration_samples=calibration_samples, int8_activations=int8_activations)
    dtype = dtype or "fp32"
    if precision == "fp8":
        from ..export.trt_plan import FP8_REFUSED
        from ..settings import FP8_UNSUPPORTED

        raise ConfigError(FP8_REFUSED if backend == "trt" else FP8_UNSUPPORTED)
    if precision != "int8" and (calibration_prompts is not None or calibration_samples != 8):
        raise ConfigError("--calibration-prompts and --calibration-samples apply to --precision int8")
    if precision != "int8" and int8_activations is not None:
        raise ConfigError(f"--int8-activations applies to --precision int8 (got --precision {precision or dtype})")
    loaded = None
    if precision == "int8":
        if backend != "onnx":
            if backend == "trt":
                from ..export.trt_plan import INT8_REFUSED

                raise ConfigError(f"--precision int8 --backend trt: {INT8_REFUSED}; build with --backend onnx")
            raise ConfigError(f"--precision int8 builds QDQ ONNX graphs for ONNX Runtime; --backend {backend} "
                              f"cannot take them yet: build with --backend onnx")
        if model_family(model, weights) == "wan":
            raise ConfigError("--precision int8 calibrates on generated images: not built for video (Wan) models")
        from ..export.quantize import calibration_scenes
        from ..models.registry import load_model

        settings = BuildSettings(model=model, weights=weights, adapters=adapters, sizes=_ints(sizes, "--sizes"),
                                 height=height, width=width, frames=frames, dtype=dtype, out=out,
                                 text_len=text_len, **quant)  # settings errors before the model loads
        loaded = load_model(model, weights, adapters=adapters, sizes=settings.load_sizes)
        calibration_scenes(loaded, settings, click.echo)  # unreadable captions: one error line before the export
    if device != "cpu":  # a build runs on the CPU unless AOTInductor compiles for the GPU: never a silent fall-back
        from ..api import check_device

        check_device(device)
        if backend != "aoti":
            raise ConfigError(f"--device {device} applies to --backend aoti (the device AOTInductor compiles "
                              f"for); --backend {backend} exports on the CPU: leave --device out")

    if backend == "trt":
        from ..export.trt_build import build_with_tensorrt
        from ..settings import TrtSettings

        settings = BuildSettings(model=model, weights=weights, adapters=adapters, sizes=_ints(sizes, "--sizes"),
                                 height=height, width=width, frames=frames, dtype=dtype, out=out,
                                 text_len=text_len)
        path = build_with_tensorrt(settings, TrtSettings(), log=click.echo)  # checks for TensorRT first
        _apply_profile(path, profile)
        click.echo(f"wrote bundle {path} with TensorRT engines")
        return
    settings = BuildSettings(model=model, weights=weights, adapters=adapters, sizes=_ints(sizes, "--sizes"),
                             height=height, width=width, frames=frames, dtype=dtype, out=out,
                             text_len=text_len, **quant)
    if backend == "aoti":
        from ..api import check_device
        from ..export.aoti import build_with_aoti

        check_device(device)
        path = build_with_aoti(settings, device=device, log=click.echo)  # checks for a compiler first
        _apply_profile(path, profile)
        click.echo(f"wrote bundle {path} with an AOTInductor package")
        return
    path = build_bundle(settings, log=click.echo, model=loaded)
    _apply_profile(path, profile)
    click.echo(f"wrote bundle {path}{' (int8)' if settings.quantized else ''}")
    if settings.dtype == "bf16":  # the graphs are for TensorRT; ONNX Runtime's CPU provider has no bf16 MatMul
        click.echo("note: ONNX Runtime on the CPU cannot run bf16 graphs; for the CPU build with --backend aoti")


def _apply_profile(bundle, profile: dict | None):
    """--profile: the profile becomes the built bundle's defaults (its manifest's schedule and cache), said in one line."""
    if profile is None:
        return
    from ..quality.calibrate import apply_profile
    from ..settings import CacheSettings, ScheduleSettings, policy_spec

    apply_profile(bundle, profile)
    c = CacheSettings.from_dict(profile.get("cache"))
    cache = (f"the step cache ({c.mode}, one step in {c.interval} computed{', switch refresh' if c.switch else ''})"
             if c.enabled else "no step cache")
    click.echo(f"bundle defaults from the profile: {policy_spec(ScheduleSettings(**profile['schedule']))}, {cache}")
