"""``ddit-export validate``: re-run every variant against the torch model on random inputs."""
import click


@click.command()
@click.argument("bundle", type=click.Path())
@click.option("--weights", type=click.Path(), help="FLUX.1-dev folder, for FLUX bundles.")
@click.option("--tol", type=float, help="Max abs diff allowed (default: by dtype, fp32 1e-4).")
def command(bundle, weights, tol):
    """Check a bundle: hashes, then ONNX Runtime vs torch per variant. Exit code 1 on a failed parity."""
    from ..export.validate import validate_bundle
    from ..settings import PARITY_TOL

    results, manifest = validate_bundle(bundle, weights=weights)
    tol = tol if tol is not None else PARITY_TOL[manifest.dtype]
    failed = False
    for size, diff in results.items():
        ok = diff is None or diff <= tol
        failed |= not ok
        shown = "not run (dtype unsupported by ORT CPU)" if diff is None else f"{diff:.2e}"
        click.echo(f"k={size}: max abs diff {shown} {'ok' if ok else f'FAIL (> {tol:g})'}")
    if failed:
        raise SystemExit(1)
    click.echo("bundle valid")
