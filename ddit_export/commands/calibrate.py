"""``ddit-export calibrate``: sweep a schedule policy's knob on calibration prompts and write the model's profile."""
import shlex
from pathlib import Path

import click
from click.core import ParameterSource

from ..cli_options import cache_dict, cache_options, threads_at_least_1
from ..settings import DEFAULT_MODEL


@click.command()
@click.option("--model", default=DEFAULT_MODEL, show_default=True,
              help="flux-mini-64, flux-mini, tiny, wan-mini, tiny-wan, wan (with --weights), or a model folder.")
@click.option("--weights", type=click.Path(), help="Weights folder (for --model flux or wan, or a bundle of them).")
@click.option("--adapters", type=click.Path(), help="Adapter safetensors (default: the model's own, if any).")
@click.option("--bundle", type=click.Path(), help="Calibrate a built bundle (its own runtime) and write the chosen "
                                                  "profile into its manifest.")
@click.option("--prompts", "prompts_file", type=click.Path(),
              help="Calibration captions, one a line (not the evaluation captions). Default: the 24 flux-mini "
                   "captions shipped in the package (ddit_export/calibration/prompts-flux-mini.txt); for a video "
                   "model the 24 clip captions of ddit_export/calibration/prompts-wan-mini.txt.")
@click.option("--n-prompts", type=int, help="Use the first N prompts of the file (default: all).")
@click.option("--grades", help="Only the prompts of these detail grades, e.g. 1,2,3 (calibration/prompts-graded.txt "
                               "holds grades 1-4; grade 4 needs a model continued on the graded grammar).")
@click.option("--readable-only", is_flag=True, help="Drop the prompts the model cannot read (unknown words, too "
                                                    "many words) instead of stopping with an error.")
@click.option("--policy", help="Policy the sweep starts from, NAME[:KNOB=VALUE,...] (default: the model's profile).")
@click.option("--sweep", required=True, help="KNOB=V1,V2,... e.g. tail=4,6,8 (ladder/probe) or tau=0.001,0.002.")
@click.option("--target-speedup", type=float, help="Best PSNR among settings at least this fast by FLOP ratio "
                                                   "(1 / FLOP ratio) that keep the quality bar.")
@click.option("--max-quality-drop", default=2.0, show_default=True, type=float,
              help="Quality bar: adherence points (of 100) below fine-only.")
@click.option("--min-psnr", default=30.0, show_default=True, type=float, help="Quality bar: PSNR vs fine-only, dB.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--steps", type=int, help="Denoising steps (default: the model's).")
@click.option("--height", type=int, help="Image height of the sweep (default: the model's; the profile records it).")
@click.option("--width", type=int, help="Image width of the sweep (default: the model's).")
@click.option("--frames", type=int, help="Video: frames per clip of the sweep (default: the model's; the profile "
                                         "records it).")
@click.option("--change-ratio", help="Video: also require the frame-change ratio vs fine-only within LOW,HIGH "
                                     "(e.g. 0.9,1.1: no added flicker, no frozen clip).")
@click.option("--work", type=click.Path(), help="Sweep folder, resumed if present (default runs/calibrate-<model>).")
@click.option("--profile", type=click.Path(), help="Profile JSON (default calibration/<model>.json).")
@click.option("--oracle", type=float, help="Also search the per-prompt oracle (best ladder per prompt by PSNR) at "
                                          "this FLOP budget, e.g. 0.5; kept in the work folder.")
@cache_options
@click.option("--dry-run", is_flag=True, help="Measure and choose, write nothing.")
@click.option("--threads", type=int, callback=threads_at_least_1, help="torch intra-op threads (default: torch's).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def command(ctx, model, weights, adapters, bundle, prompts_file, n_prompts, grades, readable_only, policy, sweep, target_speedup,
            max_quality_drop, min_psnr, seed, steps, height, width, frames, change_ratio, work, profile, oracle, cache, cache_interval, cache_order,
            cache_warmup, cache_tail, cache_threshold, cache_switch, dry_run, threads, quiet):
    """Measure a policy's settings against fine-only and choose the operating point; exit 1 if none meets it."""
    import torch

    from ..api import cache_settings, model_family
    from ..parsing import int_list as _ints
    from ..errors import ConfigError
    from ..quality.calibrate import Unreachable, calibrate
    from ..settings import CalibrateSettings

    if bundle is not None and ctx.get_parameter_source("model") != ParameterSource.DEFAULT:
        from ..api import check_family

        check_family(model, bundle)  # a --model that is not the bundle's: an error before anything loads
    video = model_family(model, weights, bundle) == "wan"
    knob, eq, values = sweep.partition("=")
    if not eq:
        raise ConfigError(f"--sweep takes KNOB=V1,V2,..., got {sweep!r}")
    if threads:
        torch.set_num_threads(threads)
    if prompts_file is None:
        from ..quality.calibrate_video import default_clip_prompts_path
        from ..quality.policies import default_prompts_path

        path = default_clip_prompts_path() if video else default_prompts_path()
        # the profile records this path: from a checkout, the package's own file as a path any clone has
        prompts_file = str(path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path)
    settings = CalibrateSettings(prompts=prompts_file, sweep=(knob.strip(), tuple(v for v in values.split(",") if v)),
                                 model=model, weights=weights, adapters=adapters, bundle=bundle, policy=policy,
                                 n_prompts=n_prompts, seed=seed, steps=steps, height=height, width=width,
                                 frames=frames, change_ratio=_pair(change_ratio),
                                 grades=_ints(grades, "--grades"), readable_only=readable_only,
                                 target_speedup=target_speedup,
                                 max_quality_drop=max_quality_drop, min_psnr=min_psnr, work=work, profile=profile,
                                 write=not dry_run, oracle=oracle, cache=_cache(cache_settings, cache_dict(
                                     cache, cache_interval, cache_order, cache_warmup, cache_tail, cache_threshold,
                                     cache_switch)))
    try:
        prof = calibrate(settings, command=command_line(ctx), progress=not quiet,
                         log=click.echo)
    except Unreachable as e:
        click.echo(f"calibrate: {e}", err=True)
        ctx.exit(1)
    m = prof["measured"]
    click.echo(f"chosen: {prof['policy']}: FLOP ratio {m['flops_ratio']:.3f} ({m['speedup_flops']:.2f}x by FLOPs, "
               f"{m['speedup_measured']:.2f}x measured), {m['psnr']:.1f} dB, adherence {m['adherence']:.1%}")
    for f in prof.get("written", []):
        click.echo(f"wrote {f}")


def _pair(text: str | None):
    """``LOW,HIGH`` -> (low, high); None stays None."""
    from ..errors import ConfigError

    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--change-ratio takes LOW,HIGH, e.g. 0.9,1.1; got {text!r}") from None
    return lo, hi


def _cache(cache_settings, given: dict):
    """The sweep's step cache from the --cache options (None when none is given or it is off)."""
    if all(v is None for v in given.values()):
        return None
    c = cache_settings(None, given)
    return c if c.enabled else None


def command_line(ctx: click.Context) -> str:
    """The ``ddit-export calibrate ...`` line that reproduces this run: every option not left at its default, as
    given (rebuilt from click's parsed values, so it is the same whether the CLI, ``python cli.py`` or a test ran it)."""
    parts = ["ddit-export", "calibrate"]
    for p in ctx.command.params:
        if ctx.get_parameter_source(p.name) in (ParameterSource.DEFAULT, None) or not isinstance(p, click.Option):
            continue
        value, flag = ctx.params[p.name], max(p.opts, key=len)
        if p.is_flag:
            parts += [flag] if value else []
        else:
            parts += [flag, shlex.quote(str(value))]
    return " ".join(parts)
