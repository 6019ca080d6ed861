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
@click.option("--sizes", default="1,2,4", show_default=True, help="Patch sizes to export, in fine tokens.")
@click.option("--height", type=int, help="Image height (default: the model's).")
@click.option("--width", type=int, help="Image width (default: the model's).")
@click.option("--frames", type=int, help="Video models: the clip length the graphs are built for (default: the "
                                         "model's).")
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True)
@click.option("--text-len", type=int, help="Text tokens (FLUX.1-dev: T5 length, default 512).")
@click.option("--backend", type=click.Choice(["onnx", "trt", "aoti"]), default="onnx", show_default=True,
              help="onnx: ONNX graphs + shared weights (ONNX Runtime). trt: also TensorRT engines (needs tensorrt). "
                   "aoti: also an AOTInductor package for the C++ runtime (needs a C++ compiler).")
@click.option("--device", default="cpu", show_default=True, help="With --backend aoti: cpu or cuda, the device "
                                                                 "AOTInductor compiles for.")
@click.option("--out", type=click.Path(), help="Bundle folder (default: engines/<model>).")
def command(model, weights, adapters, sizes, height, width, frames, dtype, text_len, backend, device, out):
    """Export each patch-size variant (ONNX, shared weights) into a bundle, checked against torch."""
    from ..api import model_family
    from ..cli import _ints
    from ..errors import ConfigError
    from ..export.build import build_bundle
    from ..settings import BuildSettings

    if device != "cpu":  # a build runs on the CPU unless AOTInductor compiles for the GPU: never a silent fall-back
        from ..api import check_device

        check_device(device)
        if backend != "aoti":
            raise ConfigError(f"--device {device} applies to --backend aoti (the device AOTInductor compiles "
                              f"for); --backend {backend} exports on the CPU: leave --device out")
    if backend != "onnx" and model_family(model, weights) == "wan":
        raise ConfigError(f"--backend {backend} is not built for video (Wan) models yet: build the ONNX bundle "
                          f"(--backend onnx) and check its graphs and TensorRT plan with `ddit-export trt-check "
                          f"BUNDLE`; README 'Wan 2.1' says what has run")

    if backend == "trt":
        from ..export.trt_build import build_with_tensorrt
        from ..settings import TrtSettings

        settings = BuildSettings(model=model, weights=weights, adapters=adapters, sizes=_ints(sizes, "--sizes"),
                                 height=height, width=width, frames=frames, dtype=dtype, out=out,
                                 text_len=text_len)
        path = build_with_tensorrt(settings, TrtSettings(), log=click.echo)  # checks for TensorRT first
        click.echo(f"wrote bundle {path} with TensorRT engines")
        return
    settings = BuildSettings(model=model, weights=weights, adapters=adapters, sizes=_ints(sizes, "--sizes"),
                             height=height, width=width, frames=frames, dtype=dtype, out=out,
                                 text_len=text_len)
    if backend == "aoti":
        from ..api import check_device
        from ..export.aoti import build_with_aoti

        check_device(device)
        path = build_with_aoti(settings, device=device, log=click.echo)  # checks for a compiler first
        click.echo(f"wrote bundle {path} with an AOTInductor package")
        return
    path = build_bundle(settings, log=click.echo)
    click.echo(f"wrote bundle {path}")
    if dtype == "bf16":  # the graphs are for TensorRT; ONNX Runtime's CPU provider has no bf16 MatMul
        click.echo("note: ONNX Runtime on the CPU cannot run bf16 graphs; for the CPU build with --backend aoti")

