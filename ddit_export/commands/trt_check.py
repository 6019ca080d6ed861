"""``ddit-export trt_check``: is a bundle ready for TensorRT? Checked on the CPU, without TensorRT."""
import click


@click.command()
@click.argument("bundle", type=click.Path())
@click.option("--trt-version", help="Target TensorRT version for ops added late (e.g. 10.8); default: the table's.")
def command(bundle, trt_version):
    """No float64, only ops TensorRT's ONNX parser supports, static shapes per profile; a quantized (int8) bundle
    also gets the Q/DQ lint (scales constant, zero points zero, types TensorRT takes, both matmul inputs quantized)
    and its precision per layer. Prints the engine plan; errors: one line per problem class, exit code 2."""
    from ..bundle import read_manifest
    from ..errors import BundleError
    from ..export.trt_compat import report
    from ..export.trt_lint import check_bundle
    from ..export.trt_plan import plan_from_manifest, read_plan, summary

    manifest = read_manifest(bundle)  # first: a missing, empty or non-bundle folder is a one-line error
    plan = read_plan(bundle)
    stored = plan is not None
    plan = plan or plan_from_manifest(manifest)
    census = None
    if manifest.quantized:
        from ..export.trt_qdq import bundle_quant, quantize_plan

        census = bundle_quant(bundle, manifest)
        quantize_plan(plan, bundle, manifest, census)
    problems = check_bundle(bundle, plan if stored else None, trt_version=trt_version, census=census)
    click.echo(summary(plan) + ("" if stored else "\n  (planned now: the bundle has no split graphs or engines yet; "
                                                  "build --backend trt writes them)"))
    if manifest.quantized:
        click.echo("  (TensorRT is not installed here: the quantized plan and the Q/DQ lint ran on the CPU; no "
                   "engine was built)")
        if manifest.int8_activations == "u8":  # the default build's layout: say how to get the one TensorRT takes
            click.echo("  (int8 activations u8: uint8 with zero points, ONNX Runtime's CPU layout; a bundle built "
                       "with --int8-activations s8 has the symmetric int8 activations TensorRT takes)")
    _report(problems, BundleError, report)


def _report(problems, error, report):
    from ..export.trt_qdq import grouped

    errors = [p for p in problems if p.severity == "error"]
    for _, line in grouped([p for p in problems if p.severity != "error"]):
        click.echo(f"warning: {line}")
    if errors:  # the CLI prefixes "error: " to the first line; one line per problem class
        raise error("\nerror: ".join(line for _, line in grouped(errors)))
    click.echo(report(problems))
