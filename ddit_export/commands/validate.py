"""``ddit-export validate``: re-run every variant against the torch model on random inputs."""
import click


@click.command()
@click.argument("bundle", type=click.Path())
@click.option("--weights", type=click.Path(), help="FLUX.1-dev folder, for FLUX bundles.")
@click.option("--tol", type=float, help="Max abs diff allowed (default: by dtype, fp32 1e-4).")
def command(bundle, weights, tol):
    """Check a bundle: hashes, then ONNX Runtime vs torch per variant (a bf16 bundle: its AOTInductor package vs
    torch, when it has one). Exit code 1 on a failed parity, or when parity could not run (a bf16 bundle without an
    AOTInductor package: the hashes are checked, the bundle is not validated)."""
    from ..export.validate import PARITY_NOT_RUN, validate_bundle

    results, manifest = validate_bundle(bundle, weights=weights, tol=tol)
    failed = not_run = False
    for size, r in results.items():
        if r["diff"] is None:
            not_run = True
            click.echo(f"k={size}: parity not run: {PARITY_NOT_RUN.get(manifest.dtype, 'unsupported dtype')}")
            continue
        ok = r["diff"] <= r["limit"]
        failed |= not ok
        verdict = "ok" if ok else f"FAIL (> {r['limit']:g})"
        click.echo(f"k={size}: max abs diff {r['diff']:.2e} {verdict} ({r['runtime']})")
    if failed:
        raise SystemExit(1)
    if not_run:
        click.echo(f"file hashes ok; parity not run for this {manifest.dtype} bundle, so it is NOT validated")
        raise SystemExit(1)
    click.echo("bundle valid")
