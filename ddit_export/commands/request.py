"""``ddit-export request``: call a running ``ddit-export serve`` (ddit_export/client.py)."""
import click


@click.command()
@click.option("--url", default="http://127.0.0.1:8000", show_default=True, help="The service's base URL.")
@click.option("--prompt", help="Prompt (default: the served model's default prompt).")
@click.option("--n", type=int, help="Images (one batch: one schedule decision for all of them).")
@click.option("--seed", type=int)
@click.option("--steps", type=int)
@click.option("--size", help="WIDTHxHEIGHT (the bundle's own resolution).")
@click.option("--guidance", type=float)
@click.option("--policy", help="NAME[:KNOB=VALUE,...] as in generate --policy.")
@click.option("--schedule", help="Static schedule, one size per step, e.g. 4,4,2,1.")
@click.option("--coarse-first", help="K[:SIZE] as in generate --coarse-first.")
@click.option("--tau", type=float)
@click.option("--eps", type=float)
@click.option("--warmup", type=int)
@click.option("--window", type=click.Choice(["any", "same-size"]))
@click.option("--sizes", help="Patch sizes the schedule may use, e.g. 1,2.")
@click.option("--carry", type=click.Choice(["off", "fine"]), help="Detail carry, as in generate --carry.")
@click.option("--cache", type=click.Choice(["off", "taylor"]))
@click.option("--cache-interval", type=int)
@click.option("--timeout", type=float, help="Per-request deadline in seconds on the service.")
@click.option("--frames", type=int, help="Frames of a clip (a video service; the bundle's own count).")
@click.option("--out", type=click.Path(), default="out/served.png", show_default=True,
              help="Image path; n > 1 writes NAME_0.png, NAME_1.png, ... A video service: NAME.gif or .mp4 (its "
                   "clips come back as lossless frames and are written here as generate writes them).")
@click.option("--trace", "trace_path", type=click.Path(), help="Write the per-step trace JSON here.")
@click.option("--retries", default=2, show_default=True, type=int, help="Retries of a 503 (after Retry-After).")
@click.option("--info", is_flag=True, help="Print GET /healthz and /v1/models instead of generating.")
def command(url, prompt, n, seed, steps, size, guidance, policy, schedule, coarse_first, tau, eps, warmup, window,
            sizes, carry, cache, cache_interval, timeout, frames, out, trace_path, retries, info):
    """Send one generation request to a running `ddit-export serve` and save the images (and trace)."""
    import json
    from pathlib import Path

    from ..api import VIDEO_FORMATS, image_path, image_writes, numbered_paths, video_path, video_writes
    from ..client import Client
    from ..fsutil import check_writable, write_files_atomic

    client = Client(url, retries=retries)
    if info:
        click.echo(json.dumps({"healthz": client.healthz(), "models": client.models()}, indent=1))
        return
    video = Path(out).suffix.lower() in VIDEO_FORMATS
    # before the request: an unknown suffix or an output that cannot be written is an error
    out = video_path(out) if video else image_path(out)
    for p in numbered_paths(out, max(n or 1, 1)) + ([Path(trace_path)] if trace_path else []):
        check_writable(p)
    res = client.generate(prompt, n=n, seed=seed, steps=steps, size=size, guidance=guidance, policy=policy,
                          schedule=schedule, coarse_first=coarse_first, tau=tau, eps=eps, warmup=warmup,
                          window=window, sizes=sizes, carry=carry, cache=cache, cache_interval=cache_interval,
                          timeout=timeout, trace=bool(trace_path), frames=frames,
                          response_format="b64_json" if video else None)
    clips = bool(res.images) and isinstance(res.images[0], list)
    if clips != video:
        from ..errors import ConfigError

        raise ConfigError(f"the service at {url} returns {'clips' if clips else 'images'}: give --out "
                          f"{'NAME.gif or NAME.mp4' if clips else 'NAME.png'}")
    for w in res.body.get("warnings", []):
        click.echo(w, err=True)
    s = res.body["schedule"]
    click.echo(f"sizes per step: {','.join(map(str, s['sizes']))}")
    click.echo(f"coarse steps {s['coarse_fraction']:.0%}, cached steps {s['cached_fraction']:.0%}, "
               f"FLOPs x{s['flops_ratio']:.3f} of fine-only")
    t = res.timings
    click.echo(f"server: {t.get('total_s', 0):.3f} s (queued {t.get('queue_s', 0):.3f} s, batch of "
               f"{t.get('batch_jobs', 1)} request(s)){'' if res.attempts == 1 else f', {res.attempts} attempts'}")
    writes = video_writes(res.images, out) if video else image_writes(res.images, out)
    if trace_path:
        writes.append((Path(trace_path), lambda tmp: Path(tmp).write_text(json.dumps(res.trace, indent=1))))
    for p in write_files_atomic(writes):  # the images and the trace together, or none of them
        click.echo(f"wrote {p}")
