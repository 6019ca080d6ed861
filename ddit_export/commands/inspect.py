"""``ddit-export inspect``: what a bundle holds, with its hashes verified."""
import click


@click.command()
@click.argument("bundle", type=click.Path())
def command(bundle):
    """Variants, token counts, FLOPs per step, sizes on disk; every file's sha256 verified."""
    from ..bundle import read_manifest, verify_files
    from ..flops import step_flops

    m = read_manifest(bundle)
    sizes = verify_files(bundle, m)
    model = m.model
    click.echo(f"bundle {bundle}: format v{m.format_version}, model {model['name']} ({model['kind']}), "
               f"{model['height']}x{model['width']}, {m.dtype}")
    click.echo("schedule defaults: " + " ".join(f"{k}={v}" for k, v in m.schedule.items()))
    click.echo(f"{'size':>4} {'grid':>9} {'tokens':>7} {'GFLOPs/step':>12} {'graph KiB':>10} {'parity':>9}")
    fine = m.variant(1) if 1 in m.sizes else m.variants[0]
    for v in m.variants:
        f = step_flops(model["transformer_config"], fine.tokens, model["text_len"], v.size, model["lora_rank"])
        par = "-" if v.parity_max_abs is None else f"{v.parity_max_abs:.1e}"
        click.echo(f"{v.size:>4} {'x'.join(map(str, v.grid)):>9} {v.tokens:>7} {f / 1e9:12.4f} "
                   f"{sizes[v.file] / 1024:10.1f} {par:>9}")
    total = sum(sizes.values())
    click.echo(f"files: {len(sizes)}, {total / 2**20:.2f} MiB on disk, weights.bin {sizes['weights.bin'] / 2**20:.2f} "
               f"MiB; all sha256 verified")
    click.echo("tools: " + ", ".join(f"{k} {v}" for k, v in m.tools.items()))
