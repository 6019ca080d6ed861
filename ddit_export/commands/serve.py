"""``ddit-export serve``: a bundle as an HTTP service on Ray Serve (ddit_export/serve/, issue 13)."""
import click

from ..cli_options import int_range, threads_at_least_1


def _ray_serve():
    import importlib.util

    from ..errors import ConfigError

    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray.serve") is None:
        raise ConfigError("serve needs Ray Serve: pip install 'ddit-export[serve]'")


@click.command()
@click.argument("bundle", type=click.Path(), required=False)
@click.option("--host", default="127.0.0.1", show_default=True, help="HTTP address (0.0.0.0: every interface).")
@click.option("--port", default=8000, show_default=True, type=int, callback=int_range(1, 65535))
@click.option("--address", help="Join this Ray cluster (e.g. auto, or ray://HEAD:10001) instead of a local Ray.")
@click.option("--num-cpus", type=int, help="CPUs of the local Ray (default: all).")
@click.option("--num-replicas", default=1, show_default=True, type=int, help="Generator replicas (weights once each).")
@click.option("--min-replicas", type=int, help="Autoscaling: fewest replicas (with --max-replicas).")
@click.option("--max-replicas", type=int, help="Autoscaling: most replicas (with --min-replicas).")
@click.option("--target-ongoing", default=8.0, show_default=True, type=float,
              help="Autoscaling: target requests in flight per replica.")
@click.option("--max-batch-size", default=4, show_default=True, type=int,
              help="Requests a replica's step loop runs at once; a request joins at the next step (1: no batching).")
@click.option("--batch-wait-ms", default=10.0, show_default=True, type=float,
              help="How long an idle replica waits after a first request before stepping, so that requests "
                   "arriving together start together.")
@click.option("--max-ongoing", default=16, show_default=True, type=int,
              help="Requests one replica holds (batching + running).")
@click.option("--max-queued", default=32, show_default=True, type=int,
              help="Requests waiting for a replica beyond that; more get HTTP 503 with Retry-After (-1: no bound).")
@click.option("--retry-after", default=1.0, show_default=True, type=float, help="Retry-After seconds of a 503.")
@click.option("--timeout", default=120.0, show_default=True, type=float,
              help="Default per-request deadline in seconds (queue + generation); a request may ask for less.")
@click.option("--max-n", default=4, show_default=True, type=int, help="Most images per request.")
@click.option("--threads", type=int, callback=threads_at_least_1,
              help="ONNX Runtime intra-op threads per replica (default: ORT's).")
@click.option("--replica-cpus", default=1.0, show_default=True, type=float, help="Ray CPUs reserved per replica.")
@click.option("--retries", default=2, show_default=True, type=int,
              help="Re-sends of an accepted request whose replica died (then HTTP 503 replica_died).")
@click.option("--max-body-bytes", default=1_000_000, show_default=True, type=int,
              help="Largest request body; a longer one gets HTTP 413.")
@click.option("--grace-period", default=20.0, show_default=True, type=float,
              help="On SIGTERM or Ctrl-C: seconds the accepted requests get to finish (new ones get 503) before "
                   "Ray stops.")
@click.option("--config", "config_file", type=click.Path(), help="Run a Ray Serve config file (as written by "
              "--write-config; `serve run FILE` accepts it too) instead of the options above.")
@click.option("--write-config", type=click.Path(), help="Write the Ray Serve config file of these options and exit.")
@click.option("--for-seconds", type=float, help="Stop after this many seconds (default: until Ctrl-C).")
def command(bundle, host, port, address, num_cpus, num_replicas, min_replicas, max_replicas, target_ongoing,
            max_batch_size, batch_wait_ms, max_ongoing, max_queued, retry_after, timeout, max_n, threads,
            replica_cpus, retries, max_body_bytes, grace_period, config_file, write_config, for_seconds):
    """Serve BUNDLE over HTTP on Ray Serve: POST /v1/images/generations, GET /healthz, GET /v1/models.

    SIGTERM (systemd, Docker, Kubernetes) stops it as Ctrl-C does: new requests get 503, the accepted ones get
    --grace-period seconds to finish, then Ray shuts down (nothing left running) and the exit code is 0."""
    import math
    import time

    from ..errors import ConfigError

    if not (grace_period >= 0 and math.isfinite(grace_period)):
        raise ConfigError(f"--grace-period must be a number of seconds >= 0, got {grace_period}")

    if config_file:
        if bundle:
            raise ConfigError("give BUNDLE or --config, not both")
        import yaml

        try:
            with open(config_file) as f:
                cfg = yaml.safe_load(f)
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"cannot read {config_file}: {str(e).splitlines()[0]}") from None
        _ray_serve()
        from ..serve.options import options_from_config

        options, host, port = options_from_config(cfg or {})
    else:
        if not bundle:
            raise ConfigError("give a BUNDLE folder (or --config FILE)")
        _ray_serve()
        from ..serve.options import ServeOptions

        options = ServeOptions(bundle=bundle, num_replicas=num_replicas, min_replicas=min_replicas,
                               max_replicas=max_replicas, target_ongoing_requests=target_ongoing,
                               max_batch_size=max_batch_size, batch_wait_s=batch_wait_ms / 1000,
                               max_ongoing_requests=max_ongoing, max_queued_requests=max_queued,
                               retry_after_s=retry_after, timeout_s=timeout, max_n=max_n, threads=threads,
                               replica_cpus=replica_cpus, retries=retries, max_body_bytes=max_body_bytes)
    from ..bundle import read_manifest

    kind = read_manifest(options.bundle).model.get("kind")
    if kind == "wan":  # before Ray starts: a one-line error, not a replica crash
        raise ConfigError(f"{options.bundle} is a Wan 2.1 bundle (the transformer only; its text encoder and VAE are "
                          f"in the diffusers folder, and it runs true classifier-free guidance): the service serves "
                          f"bundles that hold their text encoder (image bundles, wan-mini); generate clips with "
                          f"`ddit-export generate --bundle {options.bundle} --weights DIR`")
    from ..serve import app

    if write_config:
        from pathlib import Path

        import yaml

        from ..fsutil import write_file_atomic

        text = yaml.safe_dump(app.config_yaml(options, host, port), sort_keys=False)
        write_file_atomic(Path(write_config), lambda tmp: Path(tmp).write_text(text))
        click.echo(f"wrote {write_config} (run it with: ddit-export serve --config {write_config}, or serve run "
                   f"{write_config})")
        return
    import signal
    import threading

    stopping = []
    main_thread = threading.current_thread() is threading.main_thread()  # signal handlers: main thread only
    previous = signal.getsignal(signal.SIGTERM) if main_thread else None

    def on_sigterm(signum, frame):  # Ray's driver handler would exit mid-flight (SIGABRT, agents left running)
        if not stopping:
            stopping.append(signum)
            raise KeyboardInterrupt

    started = False
    try:
        app.start(options, host=host, port=port, address=address, num_cpus=num_cpus, log=click.echo)
        started = True
        if main_thread:
            signal.signal(signal.SIGTERM, on_sigterm)  # after ray.init, which installs its own
        click.echo("Ctrl-C or SIGTERM stops the service")
        deadline = None if for_seconds is None else time.monotonic() + for_seconds
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.5)
    except KeyboardInterrupt:
        stopping.append(signal.SIGINT)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM does not cut the drain short
        try:
            if started:
                if stopping:
                    click.echo(f"{'SIGTERM' if stopping[0] == signal.SIGTERM else 'Ctrl-C'}: draining (up to "
                               f"{grace_period:g} s)")
                app.drain(grace_period, log=click.echo)
        finally:
            app.stop()
            if main_thread:
                signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
            click.echo("stopped")
