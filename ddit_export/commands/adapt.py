"""``ddit-export adapt``: self-distil the coarse-size adapters from the model's own fine size."""
import click

from ..settings import DEFAULT_MODEL


@click.command()
@click.option("--model", default=DEFAULT_MODEL, show_default=True,
              help="flux-mini-64, flux-mini, tiny, flux (with --weights), or a pixel-model folder.")
@click.option("--weights", type=click.Path(), help="Local diffusers FLUX.1-dev folder for --model flux.")
@click.option("--sizes", default="1,2,4", show_default=True, help="Patch sizes; every coarse one (> 1) trains.")
@click.option("--rank", default=32, show_default=True, type=int, help="LoRA rank on the feed-forward layers.")
@click.option("--init", type=click.Choice(["tile", "pi"]), default="tile", show_default=True,
              help="Stem initialisation: tile (average in, copy out) or pi (pseudo-inverse resize).")
@click.option("--residual", type=click.Choice(["linear", "sigma"]), default="linear", show_default=True,
              help="The coarse stems' residual from the latent: linear, or sigma (a second map on latent / sigma, "
                   "so the pass-through can scale with the noise level).")
@click.option("--lr", default=1e-3, show_default=True, type=float, help="Peak AdamW learning rate.")
@click.option("--lr-warmup", default=50, show_default=True, type=int, help="Linear warm-up steps.")
@click.option("--batch", default=16, show_default=True, type=int, help="States per step (every size).")
@click.option("--steps", type=int, help="Total training steps (over resumed runs).")
@click.option("--minutes", type=float, help="Total training minutes (over resumed runs; sampling excluded).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--work", type=click.Path(), help="Run folder: trajectories, logs, checkpoints "
                                                "(default runs/adapt-<model>); resumed if present.")
@click.option("--out", type=click.Path(), help="Adapters file (default: the pixel-model folder's "
                                               "transformer/ddit_adapters.safetensors; FLUX: WORK/).")
@click.option("--prompts", "prompts_file", type=click.Path(),
              help="Prompt file, one a line (default for pixel models: scene-grammar captions).")
@click.option("--num-prompts", type=int, help="Trajectories to sample (default 512 captions / every line).")
@click.option("--sample-steps", type=int, help="Sampler steps per trajectory (default: the model's).")
@click.option("--height", type=int)
@click.option("--width", type=int)
@click.option("--guidance", default=3.5, show_default=True, type=float, help="Guidance (guidance-distilled models).")
@click.option("--coarse-mix", default=0.0, show_default=True, type=float,
              help="Fraction of trajectories that take coarse steps (off-trajectory states), drawn as --schedules says.")
@click.option("--schedules", type=click.Choice(["random", "ladders", "both"]), default="random", show_default=True,
              help="The coarse trajectories' schedules: random sizes on half the steps, the deployed family (ladders "
                   "over the calibrate range, half with the step cache's extrapolated steps), or both.")
@click.option("--objective", type=click.Choice(["full", "blocks"]), default="full", show_default=True,
              help="The distillation loss: every value of the coarse velocity, or only its block means (what a "
                   "carried step keeps: the schedules with carry=fine; an uncarried coarse step's within-block "
                   "detail is then untrained). blocks makes the plateau check follow the carried schedules.")
@click.option("--init-adapters", type=click.Path(), help="Start from this adapters file (same sizes and rank).")
@click.option("--joint", help="More resolutions trained with the same adapters, HxW or S, comma-separated (e.g. "
                              "32x32): one adapter set for all, batches alternating between resolutions.")
@click.option("--ckpt-minutes", default=3.0, show_default=True, type=float)
@click.option("--quality-minutes", type=float,
              help="Every this many training minutes: held-out PSNR vs fine-only (--eval-images prompts) into "
                   "WORK/quality.csv.")
@click.option("--patience", type=int, help="Stop after this many quality checks without a 0.1 dB gain (a plateau) "
                                           "and write the adapters.")
@click.option("--eval-images", default=16, show_default=True, type=int,
              help="Prompts of the before/after PSNR-vs-fine-only report (0: skip).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True,
              help="Trunk precision (adapters train in fp32 under autocast).")
@click.option("--threads", help="torch intra-op threads, or 'auto' (time 1 vs 2 threads as training goes; for "
                                "a shared CPU). Default: torch's.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def command(model, weights, sizes, rank, init, residual, lr, lr_warmup, batch, steps, minutes, seed, work, out,
            prompts_file, num_prompts, sample_steps, height, width, guidance, coarse_mix, schedules, objective,
            init_adapters, joint, ckpt_minutes, quality_minutes, patience, eval_images, device, dtype, threads, quiet):
    """Train the coarse patch sizes' adapters by self-distillation from the frozen fine model."""
    from ..adapt import adapt
    from ..parsing import int_list as _ints
    from ..errors import ConfigError
    from ..settings import AdaptSettings

    auto = threads == "auto"
    if threads is not None and not auto:
        try:
            threads = int(threads)
        except ValueError:
            raise ConfigError(f"--threads must be a number or 'auto', got {threads!r}") from None

    settings = AdaptSettings(model=model, weights=weights, sizes=_ints(sizes, "--sizes"), rank=rank, init=init,
                             residual=residual,
                             lr=lr, lr_warmup=lr_warmup, batch=batch, steps=steps, minutes=minutes, seed=seed,
                             work=work, out=out, prompts_file=prompts_file, num_prompts=num_prompts,
                             sample_steps=sample_steps, height=height, width=width, guidance=guidance,
                             coarse_mix=coarse_mix, schedules=schedules, objective=objective,
                             init_adapters=init_adapters,
                             joint=_resolutions(joint),
                             ckpt_minutes=ckpt_minutes, quality_minutes=quality_minutes, patience=patience,
                             eval_images=eval_images,
                             device=device, dtype=dtype, threads=None if auto else threads)
    result = adapt(settings, progress=not quiet, log=lambda m: click.echo(m, err=True), auto_threads=auto)
    st = result.state
    if st.get("out"):
        click.echo(f"wrote {st['out']} ({st['step']} steps)")
    else:
        click.echo(f"stopped at step {st['step']}; run the same command again to resume")
        raise SystemExit(130 if st.get("stopped_by_signal") else 1)


def _resolutions(text: str | None) -> tuple[tuple[int, int], ...]:
    """``--joint``: "32x32,48" -> ((32, 32), (48, 48))."""
    from ..errors import ConfigError

    if not text:
        return ()
    out = []
    for part in text.split(","):
        hw = part.strip().lower().split("x")
        try:
            h, w = (int(hw[0]), int(hw[0])) if len(hw) == 1 else (int(hw[0]), int(hw[1]))
        except ValueError:
            raise ConfigError(f"--joint takes HxW or S resolutions separated by commas, got {text!r}") from None
        if len(hw) > 2:
            raise ConfigError(f"--joint takes HxW or S resolutions separated by commas, got {text!r}")
        out.append((h, w))
    return tuple(out)
