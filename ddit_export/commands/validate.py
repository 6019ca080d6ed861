"""``ddit-export validate``: re-run every variant against the torch model on random inputs."""
import click


@click.command()
@click.argument("bundle", type=click.Path())
@click.option("--weights", type=click.Path(), help="FLUX.1-dev folder, for FLUX bundles.")
@click.option("--tol", type=float, help="Max abs diff allowed (default: by dtype, fp32 1e-4).")
def command(bundle, weights, tol):
    """Check a bundle: hashes, then ONNX Runtime vs torch per variant. Exit code 1 on a failed parity, or when
    parity could not run (bf16 bundles: the hashes are checked, the bundle is not validated)."""
    from ..export.validate import PARITY_NOT_RUN, validate_bundle
    from ..settings import PARITY_TOL

    results, manifest = validate_bundle(bundle, weights=weights)
    tol = tol if tol is not None else PARITY_TOL[manifest.dtype]
    failed = not_run = False
    for size, diff in results.items():
        if diff is None:
            not_run = True
            click.echo(f"k={size}: parity not run: {PARITY_NOT_RUN.get(manifest.dtype, 'unsupported dtype')}")
            continue
        ok = diff <= tol
        failed |= not ok
        click.echo(f"k={size}: max abs diff {diff:.2e} {'ok' if ok else f'FAIL (> {tol:g})'}")
    if failed:
        raise SystemExit(1)
    if not_run:
        click.echo(f"file hashes ok; parity not run for this {manifest.dtype} bundle, so it is NOT validated")
        raise SystemExit(1)
    click.echo("bundle valid")
