"""``ddit-export trt_check``: is a bundle ready for TensorRT? Checked on the CPU, without TensorRT."""
import click


@click.command()
@click.argument("bundle", type=click.Path())
@click.option("--trt-version", help="Target TensorRT version for ops added late (e.g. 10.8); default: the table's.")
def command(bundle, trt_version):
    """No float64, only ops TensorRT's ONNX parser supports, static shapes per profile; prints the engine plan."""
    from ..bundle import read_manifest
    from ..errors import BundleError
    from ..export.trt_compat import check_bundle, report
    from ..export.trt_plan import plan_from_manifest, read_plan, summary

    manifest = read_manifest(bundle)  # first: a missing, empty or non-bundle folder is a one-line error
    plan = read_plan(bundle)
    stored = plan is not None
    plan = plan or plan_from_manifest(manifest)
    problems = check_bundle(bundle, plan if stored else None, trt_version=trt_version)
    click.echo(summary(plan) + ("" if stored else "\n  (planned now: the bundle has no split graphs or engines yet; "
                                                  "build --backend trt writes them)"))
    if problems:
        raise BundleError(f"{len(problems)} TensorRT problem(s):\n{report(problems)}")
    click.echo(report(problems))
