"""The ``ddit-export`` command line. Thin: each command builds a settings object and calls one function.

Every :class:`~ddit_export.errors.DDiTError`, and every usage error click itself finds (a bad value for a typed
option, an unknown option or command, a missing argument), becomes a one-line ``error: ...`` and exit code 2.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from .cli_options import cache_dict, cache_options, profile_settings, read_profile_option, threads_at_least_1
from .errors import ConfigError, DDiTError
from .parsing import coarse_first as _coarse
from .parsing import int_list as _ints
from .settings import DEFAULT_MODEL


def _usage_error(e: click.UsageError):
    """click's usage error (its own "Usage: ... Error: ..." block) as the CLI's one ``error:`` line, exit code 2."""
    message = " ".join(e.format_message().split()).rstrip(".")
    message = message[:1].lower() + message[1:]
    command = e.ctx.command_path if e.ctx is not None else "ddit-export"
    click.echo(f"error: {message} (see {command} --help)", err=True)
    raise click.exceptions.Exit(2)


class _Group(click.Group):
    def make_context(self, info_name, args, parent=None, **extra):
        try:  # the group's own options (e.g. ddit-export --bogus)
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as e:
            _usage_error(e)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except DDiTError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(2)
        except click.UsageError as e:  # a command's options and arguments, an unknown command
            _usage_error(e)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ddit-export")
def main():
    """ddit-export: dynamic patch scheduling (DDiT) for FLUX-class diffusion transformers."""


def model_options(f):
    f = click.option("--model", default=DEFAULT_MODEL, show_default=True,
                     help="flux-mini-64 (trained, shipped; 64x64, also trained at 32x32), flux-mini (trained, "
                          "shipped; 32x32), tiny (random weights, for tests), flux (needs --weights); video: "
                          "wan-mini (trained, shipped; 8 frames 32x32), tiny-wan (random), wan (needs --weights); "
                          "or a model folder.")(f)
    f = click.option("--weights", type=click.Path(), help="Local diffusers folder: FLUX.1-dev for --model flux, "
                                                          "Wan 2.1 for --model wan.")(f)
    f = click.option("--adapters", type=click.Path(), help="Adapter safetensors (default: the model's own, if "
                                                           "any, else training-free init).")(f)
    f = click.option("--sizes", help="Patch sizes in fine tokens, powers of two including 1 (default: all the "
                                     "model's adapters or the bundle has; 1,2,4 for a model without adapters).")(f)
    return f




@main.command()
@model_options
@click.option("--prompt", "prompts", multiple=True, help="Prompt (repeat for a batch).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--steps", type=int, help="Denoising steps (default: the model's).")
@click.option("--height", type=int, help="Image height in pixels (default: the model's).")
@click.option("--width", type=int, help="Image width in pixels (default: the model's).")
@click.option("--frames", type=int, help="Video models: frames of the clip (default: the model's; Wan 2.1: 4n+1).")
@click.option("--fps", type=int, default=8, show_default=True, help="Video models: frames per second of the file "
                                                                     "(1..120).")
@click.option("--guidance", type=float, help="Guidance: FLUX's distilled guidance (default 3.5); Wan 2.1's "
                                             "classifier-free guidance scale (default 5; 1 turns CFG off).")
@click.option("--tau", type=float, help="DDiT threshold τ (default: the model's calibrated value).")
@click.option("--eps", type=float, help="DDiT percentile ε in (0, 1) (default: the model's).")
@click.option("--warmup", type=int, help="Fine steps before the rule decides (>= 3).")
@click.option("--window", type=click.Choice(["any", "same-size"]),
              help="any: decide every step (the paper). same-size: decide only after three steps of one size.")
@click.option("--policy", help="Schedule policy and knobs, NAME[:KNOB=VALUE,...]: ddit (the paper's rule; knobs "
                                "tau, eps, warmup, window), ladder (static: head fine, n4 at size 4, size 2, tail "
                                "fine), probe (adaptive), fine (every step at size 1: fine-only). Default: the "
                                "model's calibrated profile.")
@click.option("--schedule", "static", help="Static schedule instead of the rule: one size per step, e.g. 4,4,2,1.")
@click.option("--coarse-first", help="FlexiDiT-style static schedule K[:SIZE]: SIZE (default 2) for K steps.")
@click.option("--carry", type=click.Choice(["off", "fine"]),
              help="Detail carry (any schedule): fine = a coarse step takes the last fine step's velocity plus the "
                   "coarse variant's per-block mean change; off = the coarse variant's velocity as it is. Default: "
                   "the model's profile.")
@cache_options
@click.option("--out", type=click.Path(), help="Image path (default out/image.png), or for a video model .gif/.mp4 "
                                                "(default out/video.gif); a batch writes NAME_0.png, NAME_1.png, ...")
@click.option("--trace", type=click.Path(), help="Write the per-step trace JSON here.")
@click.option("--bundle", type=click.Path(), help="Run a built bundle (ONNX Runtime) instead of PyTorch.")
@click.option("--backend", type=click.Choice(["auto", "torch", "onnxruntime", "tensorrt", "aoti"]), default="auto",
              show_default=True, help="auto: TensorRT for a bundle with engines when tensorrt is installed, else "
                                      "ONNX Runtime; PyTorch without --bundle. aoti: the bundle's AOTInductor "
                                      "package (build --backend aoti).")
@click.option("--fallback-ort", is_flag=True, help="With --backend tensorrt: fall back to ONNX Runtime (saying "
                                                   "why) when TensorRT cannot run the bundle here.")
@click.option("--threads", type=int, callback=threads_at_least_1,
              help="Intra-op threads with --bundle: ONNX Runtime's, or torch's for --backend aoti.")
@click.option("--memory", type=click.Choice(["shared", "fast"]), default="shared", show_default=True,
              help="With --bundle on ONNX Runtime: shared = the weights held once for all sizes; fast = each size's "
                   "session pre-packs its own copy (standalone speed, more memory; README has both numbers).")
@click.option("--device", default="cpu", show_default=True, help="PyTorch device (cpu, cuda, cuda:N); an error "
                                                                 "when this machine has no such device.")
@click.option("--profile", type=click.Path(), help="A calibrated profile (`ddit-export calibrate`'s JSON, e.g. "
              "calibration/wan-mini-stack.json) instead of the model's or bundle's: its schedule and its step cache "
              "(off if it has none); --policy, --tau, --cache... given as well apply over it.")
def generate(model, weights, adapters, sizes, prompts, seed, steps, height, width, frames, fps, guidance, tau, eps,
             warmup, window, policy, static, coarse_first, carry, cache, cache_interval, cache_order, cache_warmup,
             cache_tail, cache_threshold, cache_switch, out, trace, bundle, backend, fallback_ort, threads, memory,
             device, profile):
    """Generate images (or a video clip, with a video model) with dynamic patch scheduling and write the trace."""
    from click.core import ParameterSource

    from .api import generate_images, model_family
    from .settings import ScheduleSettings, policy_spec

    if bundle and click.get_current_context().get_parameter_source("model") == ParameterSource.DEFAULT:
        model = None  # the bundle says what it holds; only a --model given explicitly is checked against it
    if out is None:
        out = "out/video.gif" if model_family(model, weights, bundle) == "wan" else "out/image.png"
    settings_kw = dict(seed=seed, steps=steps, height=height, width=width, frames=frames, guidance=guidance,
                       tau=tau, eps=eps,
                       warmup=warmup, window=window, policy=policy, static=_ints(static, "--schedule"),
                       coarse_first=_coarse(coarse_first), carry=carry,
                       cache=cache_dict(cache, cache_interval, cache_order, cache_warmup, cache_tail,
                                        cache_threshold, cache_switch))
    if profile is not None:  # checked before the model loads
        settings_kw.update(profile_settings(read_profile_option(profile, model, weights, bundle),
                                            settings_kw["cache"]))
    result, paths = generate_images(model=model, weights=weights, adapters=adapters, sizes=_ints(sizes, "--sizes"),
                                    prompts=prompts or None, out=out, trace_path=trace, bundle=bundle, device=device,
                                    threads=threads, backend=backend, fallback=fallback_ort, memory=memory,
                                    fps=fps, **settings_kw)
    t = result.trace
    sched = t.settings["generate"]["schedule"]
    if t.settings["generate"]["static"] is None and t.settings["generate"]["coarse_first"] is None:
        click.echo(f"policy {policy_spec(ScheduleSettings(**sched))}")
    click.echo(f"sizes per step: {','.join(map(str, t.sizes))}")
    if t.cached_fraction:
        click.echo(f"steps per kind: {''.join('c' if k == 'cached' else 'm' for k in t.kinds)} (m: model, c: cached)")
    click.echo(f"coarse steps {t.coarse_fraction:.0%}, cached steps {t.cached_fraction:.0%}, "
               f"FLOPs x{t.flops_ratio:.3f} of fine-only")
    for p in paths:
        click.echo(f"wrote {p}")
    if trace:
        click.echo(f"wrote {trace}")


@main.command()
@click.argument("trace_path", metavar="TRACE", type=click.Path())
@click.option("--plot", type=click.Path(), help="PNG path (default: TRACE.schedule.png, e.g. out/x.json -> "
                                                 "out/x.schedule.png); its folder must exist.")
@click.option("--overwrite", is_flag=True, help="Replace an existing plot file (without it: an error).")
def schedule(trace_path, plot, overwrite):
    """Show a trace: a table of size, tokens, FLOPs and σ per step, and a PNG plot (TRACE.schedule.png)."""
    from .fsutil import check_writable, write_file_atomic
    from .schedule.plot import plot as plot_trace
    from .schedule.plot import plot_path, table
    from .schedule.trace import Trace

    t = Trace.load(trace_path)
    png = check_writable(plot or plot_path(trace_path), overwrite=overwrite, make_folders=False)
    click.echo(table(t))
    write_file_atomic(png, lambda tmp: plot_trace(t, tmp, fmt=png.suffix[1:] or "png"))
    click.echo(f"wrote {png}")


@main.command()
@model_options
@click.option("--pareto", "pareto_out", type=click.Path(), help="Pareto mode: whole generations of every method "
              "(fine-only, DDiT rule, static ladders, step cache, diffusers' caches, stacked) -> OUT/pareto.{md,json,png}.")
@click.option("--replay", "replay_from", type=click.Path(), help="Replay mode: time the schedules and cache decisions "
              "recorded in a pareto.json on --model (e.g. random-20m): measured vs FLOP-bound speed-up.")
@click.option("--repeats", type=int, help="Timed runs per size (default 7) / interleaved rounds (pareto, replay: 3).")
@click.option("--threads", type=int, callback=threads_at_least_1,
              help="torch (and ONNX Runtime) intra-op threads (default: torch's; pareto: 1).")
@click.option("--height", type=int)
@click.option("--width", type=int)
@click.option("--n-prompts", type=int, default=64, show_default=True, help="Pareto: held-out captions for quality.")
@click.option("--seeds", default="0", show_default=True, help="Pareto: comma-separated noise seeds.")
@click.option("--wall-prompts", type=int, default=4, show_default=True,
              help="Pareto/replay: prompts per timed round.")
@click.option("--bundle", type=click.Path(), help="Pareto: a built bundle of the model for the ONNX Runtime column.")
@click.option("--no-peers", is_flag=True, help="Pareto: leave out diffusers' caches.")
@click.option("--cache-dit", is_flag=True, help="Pareto: add cache-dit's DBCache (pip install 'ddit-export[peers]').")
@click.option("--methods", "methods_file", type=click.Path(), help="Pareto: JSON list of method rows "
              "({name, family, generate, cache, peer, bundle}) instead of the default rows; the first must be fine-only; a row "
              "with a bundle runs on that ONNX Runtime bundle (an int8 build: a precision row).")
@click.option("--append", "append_to", type=click.Path(), help="Pareto: an earlier pareto.json of the same prompts; "
              "its rows not run now join the report (new rows on an existing chart).")
@click.option("--oracle", type=float, help="Pareto: also search the per-prompt oracle (the best monotone ladder per "
              "prompt by PSNR) at this FLOP budget, e.g. 0.5; quality columns only.")
@click.option("--graded", is_flag=True, help="Pareto: the graded held-out captions (evaluate --graded) instead of the "
              "held-out complexity buckets; per-grade FLOPs, PSNR and adherence in the report.")
@click.option("--grades", help="Pareto, with --graded: the detail grades drawn in turn (default 1,2,3: grade 4 needs a "
              "model continued on the graded grammar).")
def bench(model, weights, adapters, sizes, pareto_out, replay_from, repeats, threads, height, width, n_prompts,
          seeds, wall_prompts, bundle, no_peers, cache_dit, methods_file, append_to, oracle, graded, grades):
    """Median time of one transformer call at each patch size (PyTorch backend), sizes interleaved; or, with
    --pareto, the speed/quality chart of every method; with --replay, recorded schedules on a speed config."""
    import torch

    if pareto_out and replay_from:
        raise ConfigError("give --pareto or --replay, not both")
    if repeats is not None and repeats < 1:
        raise ConfigError(f"--repeats must be >= 1, got {repeats}")
    if pareto_out:
        if bundle is not None:  # the bundle must hold the benchmarked model: checked before anything loads
            from .api import check_family

            check_family(model, bundle)
        if grades and not graded:
            raise ConfigError("--grades applies with --graded")
        return _bench_pareto(model, weights, adapters, pareto_out, repeats, threads, n_prompts, seeds,
                             wall_prompts, bundle, no_peers, cache_dit, methods_file, append_to, oracle,
                             (_ints(grades, "--grades") or (1, 2, 3)) if graded else None)
    if replay_from:
        from .pareto_replay import replay_report

        if threads:
            torch.set_num_threads(threads)
        res = replay_report(replay_from, model=model, weights=weights, repeats=repeats or 3,
                            prompts=wall_prompts, log=click.echo)
        click.echo(res["markdown"])
        return None
    from .bench import format_table, step_times
    from .models.registry import load_model
    from .runtime.backends.torch import TorchBackend
    from .settings import DEFAULT_SIZES

    repeats = repeats or 7
    if threads:
        torch.set_num_threads(threads)
    loaded = load_model(model, weights, adapters=adapters, sizes=_ints(sizes, "--sizes") or DEFAULT_SIZES)
    with TorchBackend(loaded.transformer) as backend:
        rows = step_times(loaded, backend, repeats=repeats, height=height, width=width)
    click.echo(f"{loaded.name}: {sum(p.numel() for p in loaded.transformer.trunk.parameters()) / 1e6:.1f} M trunk "
               f"parameters, torch {torch.__version__}, {torch.get_num_threads()} threads, median of {repeats}")
    click.echo(format_table(rows))


def _bench_pareto(model, weights, adapters, out, repeats, threads, n_prompts, seeds, wall_prompts, bundle,
                  no_peers, cache_dit, methods_file, append_to, oracle, grades):
    import json

    from .pareto import Method, run_pareto
    from .peers import cache_dit_available
    from .settings import ParetoSettings

    methods = None
    if methods_file:
        try:
            methods = tuple(Method.from_dict(d) for d in json.loads(Path(methods_file).read_text()))
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read methods {methods_file}: {e}") from None
    if cache_dit and not cache_dit_available():
        raise ConfigError("--cache-dit needs cache-dit installed: pip install 'ddit-export[peers]'")
    s = ParetoSettings(model=model, weights=weights, adapters=adapters, n_prompts=n_prompts,
                       seeds=_ints(seeds, "--seeds"), wall_prompts=wall_prompts, repeats=repeats or 3,
                       threads=threads or 1, bundle=bundle, peers=not no_peers, cache_dit=cache_dit,
                       methods=methods, append=append_to, oracle=oracle, grades=grades, out=out)
    rep = run_pareto(s, log=click.echo)
    click.echo(Path(rep["files"][1]).read_text())
    for f in rep["files"]:
        click.echo(f"wrote {f}")


def _register_command_modules():
    import importlib
    import pkgutil

    from . import commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        main.add_command(module.command, name=info.name.replace("_", "-"))


_register_command_modules()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
