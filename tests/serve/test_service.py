"""The service end to end on loopback: one local Ray (2 CPUs) + Serve app on flux-mini's bundle for the module.

Every wait is bounded (client timeouts, thread joins); the app is torn down at the end and the last test checks
that it is gone.
"""
import socket
import threading
import time
import urllib.request

import numpy as np
import pytest

pytest.importorskip("ray.serve", reason="the serve tests need Ray Serve: pip install -e '.[dev]' (includes serve)")

from ddit_export.api import build_settings  # noqa: E402
from ddit_export.client import Client, ServiceError  # noqa: E402
from ddit_export.quality.metrics import psnr  # noqa: E402
from ddit_export.runtime.generate import generate  # noqa: E402

P = ["a large red circle in the center on a black background",
     "a small blue square at the top left on a striped background",
     "a medium yellow triangle at the bottom right"]
SLOW = {"steps": 200, "schedule": ",".join(["1"] * 200)}  # about 1.5 s of fine steps: keeps a replica busy
MAX_ONGOING, MAX_QUEUED = 4, 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def service(flux_mini_bundle):
    from ddit_export.serve.app import ServeOptions, start, stop

    opts = ServeOptions(bundle=str(flux_mini_bundle), threads=1, max_batch_size=8, max_ongoing_requests=MAX_ONGOING,
                        max_queued_requests=MAX_QUEUED, retry_after_s=1, timeout_s=60, retries=3)
    metrics_port = _free_port()
    url = start(opts, port=_free_port(), num_cpus=2, log=lambda *a: None,
                ray_init_kw={"_metrics_export_port": metrics_port})
    client = Client(url, timeout=120, retries=0)
    client.wait_ready(timeout=120)
    client.metrics_port = metrics_port
    yield url, client
    stop()  # a no-op when test_shutdown_is_clean already stopped it


def _in_threads(fn, args_list, timeout=180):
    """Run fn(*args) concurrently; results (or the exception) in order; fails if any thread outlives timeout."""
    out = [None] * len(args_list)

    def run(i, args):
        try:
            out[i] = fn(*args)
        except Exception as e:  # noqa: BLE001
            out[i] = e

    threads = [threading.Thread(target=run, args=(i, a), daemon=True) for i, a in enumerate(args_list)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), f"requests still pending after {timeout} s (hung)"
    return out


def _matches(images, ref_images):
    for a, b in zip(images, ref_images):
        a, b = np.asarray(a), np.asarray(b)
        if not (np.array_equal(a, b) or psnr(a, b) >= 40):
            return False
    return len(images) == len(ref_images)


REQUESTS = [
    {"prompt": P[0], "seed": 1},
    {"prompt": P[1], "seed": 2, "n": 2},
    {"prompt": P[2], "seed": 3, "policy": "ddit"},
    {"prompt": P[0], "seed": 4, "policy": "ddit:tau=0.004"},
    {"prompt": P[1], "seed": 5, "schedule": ",".join(["1"] * 28)},
    {"prompt": P[2], "seed": 6, "cache": "taylor", "cache_interval": 4},
    {"prompt": P[0], "seed": 7, "coarse_first": "8:4"},
    {"prompt": P[1], "seed": 8},
]


def _reference(model, backend, body):
    from ddit_export.serve.schemas import parse_request

    return generate(model, backend, parse_request(body, model).settings, progress=False)


def test_health_and_models(service):
    _, client = service
    assert client.healthz()["status"] == "ok"
    m = client.models()["data"][0]
    assert m["id"] == "flux-mini" and m["patch_sizes"] == [1, 2, 4] and m["schedule"].startswith("ladder:")


def test_concurrent_requests_equal_single_process_generate(service, flux_mini_runtime):
    url, _ = service
    client = Client(url, timeout=120, retries=10)  # more requests than the queue holds: 503s are retried
    model, backend = flux_mini_runtime
    results = _in_threads(lambda b: client.generate(**b), [(b,) for b in REQUESTS])
    for body, res in zip(REQUESTS, results):
        assert not isinstance(res, Exception), res
        ref = _reference(model, backend, body)
        assert res.sizes == ref.trace.sizes, body
        assert res.trace["steps"][0]["size"] == ref.trace.sizes[0] and len(res.trace["steps"]) == len(ref.trace.steps)
        assert _matches(res.images, ref.images), body
    # whether these requests shared a batch depends on when they arrived (not asserted here, it is not
    # deterministic); test_batching.py::test_concurrent_requests_held_together_run_as_one_batch checks the batching


@pytest.mark.parametrize("body", [{"steps": 0}, {"prompt": "a zebra"}, {"seed": -1}, {"schedule": "4,4"},
                                  {"sizes": "1,3"}, {"foo": 1}, {"n": 99}, {"tau": "x"}])
def test_bad_request_is_400_with_the_cli_message(service, flux_mini_runtime, body):
    from ddit_export.errors import DDiTError
    from ddit_export.serve.schemas import parse_request

    _, client = service
    with pytest.raises(DDiTError) as expected:
        parse_request(body, flux_mini_runtime[0])
    with pytest.raises(ServiceError) as e:
        client.generate_raw(body)
    assert e.value.status == 400 and e.value.message == str(expected.value)


def test_malformed_json_is_400_without_traceback(service):
    url, _ = service
    req = urllib.request.Request(url + "/v1/images/generations", data=b"{not json", method="POST",
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    body = e.value.read().decode()
    assert e.value.code == 400 and "not valid JSON" in body and "Traceback" not in body


def _http(url, path, data=None, method="POST", content_type="application/json"):
    """(status, parsed JSON body, raw body length) of one request, error statuses included."""
    import json

    headers = {"Content-Type": content_type} if content_type else {}
    req = urllib.request.Request(url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            raw = r.read()
            return r.status, json.loads(raw), len(raw)
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, json.loads(raw), len(raw)


def _is_error(body, code, kind):
    return set(body) == {"error"} and body["error"]["code"] == code and body["error"]["type"] == kind


@pytest.mark.parametrize("depth", [1000, 20])
def test_deeply_nested_body_is_400(service, depth):
    url, _ = service
    data = b'{"schedule": ' + b"[" * depth + b"]" * depth + b"}"
    status, body, _ = _http(url, "/v1/images/generations", data)
    assert status == 400 and _is_error(body, 400, "invalid_request_error")
    assert "nested too deeply" in body["error"]["message"]


def test_request_size_limit_is_413_and_messages_are_capped(service):
    from ddit_export.serve.schemas import MAX_BODY_BYTES

    url, _ = service
    status, body, _ = _http(url, "/v1/images/generations", b'{"prompt": "%s"}' % (b"a" * MAX_BODY_BYTES))
    assert status == 413 and _is_error(body, 413, "request_too_large")
    word = "zebra" * 180_000  # 900 kB: under the limit; the messages that would echo it are cut
    status, body, size = _http(url, "/v1/images/generations", ('{"seed": "%s"}' % word).encode())
    assert status == 400 and "field 'seed' must be an integer" in body["error"]["message"]
    assert size < 2000 and "more characters" in body["error"]["message"]
    status, body, size = _http(url, "/v1/images/generations", ('{"prompt": "%s"}' % word).encode())
    assert status == 400 and "prompt has 900000 characters" in body["error"]["message"] and size < 2000


def test_every_error_has_the_documented_shape(service):
    url, _ = service
    status, body, _ = _http(url, "/no/such/path", method="GET")
    assert status == 404 and _is_error(body, 404, "not_found")
    status, body, _ = _http(url, "/v1/images/generations", method="GET")
    assert status == 405 and _is_error(body, 405, "method_not_allowed")
    status, body, _ = _http(url, "/v1/images/generations", b'{"prompt": "a red circle"}', content_type="text/plain")
    assert status == 415 and _is_error(body, 415, "unsupported_media_type")
    status, body, _ = _http(url, "/v1/images/generations", b"prompt=x",
                            content_type="application/x-www-form-urlencoded")
    assert status == 415 and _is_error(body, 415, "unsupported_media_type")


def test_overfull_queue_is_503_with_retry_after(service):
    _, client = service
    n = MAX_ONGOING + MAX_QUEUED + 6
    results = _in_threads(lambda b: client.generate_raw(b), [({**SLOW, "seed": i},) for i in range(n)])
    rejected = [r for r in results if isinstance(r, ServiceError)]
    served = [r for r in results if not isinstance(r, Exception)]
    assert rejected and all(r.status == 503 and r.retry_after == 1 and "capacity" in r.message for r in rejected)
    assert len(served) >= MAX_ONGOING and len(served) + len(rejected) == n


def test_deadline_is_504(service):
    _, client = service
    with pytest.raises(ServiceError) as e:
        client.generate_raw({**SLOW, "timeout": 0.3})
    assert e.value.status == 504 and "timed out after 0.3 s" in e.value.message
    assert client.generate(P[0], steps=8, policy="ddit")  # the replica goes on serving


def test_client_disconnect_cancels_the_request(service):
    url, client = service
    before = client.stats()["totals"]["requests"].get("cancelled", 0)
    req = urllib.request.Request(url + "/v1/images/generations", data=b'{"steps": 200, "schedule": "%s"}'
                                 % ",".join(["1"] * 200).encode(), headers={"Content-Type": "application/json"})
    with pytest.raises(OSError):  # socket timeout: the client goes away
        urllib.request.urlopen(req, timeout=0.5)
    deadline = time.monotonic() + 30
    while client.stats()["totals"]["requests"].get("cancelled", 0) == before:
        assert time.monotonic() < deadline, "the server never saw the disconnect"
        time.sleep(0.5)


def test_metrics_reach_ray_prometheus_export(service):
    """The replica's metrics through Ray Serve's metrics API, scraped from Ray's Prometheus endpoint."""
    _, client = service
    client.generate(P[0], seed=11, steps=8, policy="ddit")
    deadline = time.monotonic() + 60  # Ray exports every few seconds
    while True:
        text = urllib.request.urlopen(f"http://127.0.0.1:{client.metrics_port}/metrics", timeout=10).read().decode()
        ok = [line for line in text.splitlines() if line.startswith("ray_ddit_serve_requests")
              and 'status="ok"' in line]
        if ok and "ray_ddit_serve_steps" in text and "ray_ddit_serve_latency_s_bucket" in text:
            break
        assert time.monotonic() < deadline, "ddit_serve metrics never appeared on Ray's metrics export port"
        time.sleep(2)
    assert float(ok[0].rsplit(" ", 1)[1]) >= 1
    assert 'size="1"' in text and 'kind="model"' in text and "ray_ddit_serve_coarse_fraction_bucket" in text


def test_killing_the_replica_loses_no_accepted_request(service, flux_mini_runtime):
    """ray.kill on the generator replica while it holds requests: the front end re-sends them to the replica Serve
    starts instead; every request ends 200 with the right image, or with a clear error; none hangs."""
    import ray

    url, _ = service
    # 503 "at capacity" (a request not accepted, while the replacement replica starts) is retried, as a client
    # should; what must never happen is an accepted request that is lost or hangs
    client = Client(url, timeout=240, retries=10)
    model, backend = flux_mini_runtime
    pid_before = client.healthz()["replica_pid"]
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a["name"].startswith("SERVE_REPLICA::ddit#Generator")]
    assert len(names) == 1
    # long requests (several seconds even on a quiet machine), so the replica surely holds them when it is killed
    bodies = [{"prompt": P[i % 3], "seed": 100 + i, "steps": 200, "policy": "ladder:n4=60,tail=70"}
              for i in range(4)]

    def kill_soon():
        time.sleep(1.5)
        ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)

    killer = threading.Thread(target=kill_soon, daemon=True)
    killer.start()
    results = _in_threads(lambda b: client.generate(**b), [(b,) for b in bodies], timeout=240)
    killer.join(10)
    for body, res in zip(bodies, results):
        if isinstance(res, ServiceError):  # allowed: a clear error, not a hang or a traceback
            assert res.status == 503 and "replica died" in res.message, res
            continue
        assert not isinstance(res, Exception), res
        assert _matches(res.images, _reference(model, backend, body).images)
    assert any(not isinstance(r, Exception) and r.timings.get("resent_after_replica_death") for r in results)
    assert client.healthz()["replica_pid"] != pid_before


def test_request_cli_saves_image_and_trace(service, flux_mini_runtime, tmp_path):
    import json

    from click.testing import CliRunner
    from PIL import Image

    from ddit_export.cli import main

    url, _ = service
    r = CliRunner().invoke(main, ["request", "--url", url, "--prompt", P[2], "--seed", "9", "--policy", "ddit",
                                  "--out", str(tmp_path / "a.png"), "--trace", str(tmp_path / "a.json")])
    assert r.exit_code == 0, r.output
    ref = _reference(flux_mini_runtime[0], flux_mini_runtime[1], {"prompt": P[2], "seed": 9, "policy": "ddit"})
    assert _matches([Image.open(tmp_path / "a.png").convert("RGB")], ref.images)
    assert json.loads((tmp_path / "a.json").read_text())["format"] == "ddit-trace/1"
    bad = CliRunner().invoke(main, ["request", "--url", url, "--steps", "0"])
    assert bad.exit_code == 2 and bad.output.strip().splitlines()[-1] == "error: HTTP 400: steps must be >= 1, got 0"


def test_shutdown_is_clean(service):
    import ray

    from ddit_export.serve.app import stop

    url, client = service
    stop()
    assert not ray.is_initialized()
    with pytest.raises(ServiceError) as e:
        client.healthz(timeout=5)
    assert e.value.status == 0  # nothing listens any more


def test_config_file_round_trip(flux_mini_bundle, tmp_path):
    """serve --write-config writes the Ray Serve config (import path, args, the Generator's deployment options);
    --config reads it back to the same options, deployment entries overriding the args as Ray Serve applies them."""
    import yaml
    from click.testing import CliRunner

    from ddit_export.cli import main
    from ddit_export.serve.app import IMPORT_PATH, ServeOptions, options_from_config

    path = tmp_path / "serve.yaml"
    r = CliRunner().invoke(main, ["serve", str(flux_mini_bundle), "--num-replicas", "2", "--max-queued", "5",
                                  "--port", "8123", "--write-config", str(path)])
    assert r.exit_code == 0, r.output
    cfg = yaml.safe_load(path.read_text())
    app = cfg["applications"][0]
    assert app["import_path"] == IMPORT_PATH and app["deployments"][0]["num_replicas"] == 2
    opts, host, port = options_from_config(cfg)
    assert (opts.num_replicas, opts.max_queued_requests, port) == (2, 5, 8123)
    app["deployments"][0].pop("num_replicas")
    app["deployments"][0]["autoscaling_config"] = {"min_replicas": 1, "max_replicas": 3}
    opts = options_from_config(cfg)[0]
    assert (opts.min_replicas, opts.max_replicas) == (1, 3)
    assert opts.generator_options()["autoscaling_config"]["max_replicas"] == 3
    with pytest.raises(Exception, match="bundle folder not found"):
        ServeOptions(bundle=str(tmp_path / "missing"))
    bad = CliRunner().invoke(main, ["serve", str(flux_mini_bundle), "--min-replicas", "1"])
    assert bad.exit_code == 2 and "both --min-replicas and --max-replicas" in bad.output


def test_serve_options_retries_body_limit_grace(flux_mini_bundle, tmp_path):
    """--retries (documented: re-sends after a replica death) and --max-body-bytes reach the service's options;
    out-of-range values are one error line before Ray starts."""
    import yaml
    from click.testing import CliRunner

    from ddit_export.cli import main

    path = tmp_path / "serve.yaml"
    r = CliRunner().invoke(main, ["serve", str(flux_mini_bundle), "--retries", "5", "--max-body-bytes", "4096",
                                  "--write-config", str(path)])
    assert r.exit_code == 0, r.output
    args = yaml.safe_load(path.read_text())["applications"][0]["args"]
    assert (args["retries"], args["max_body_bytes"]) == (5, 4096)
    for flag, value, message in [("--retries", "-1", "retries >= 0"), ("--max-body-bytes", "0", "max_body_bytes >= 1"),
                                 ("--grace-period", "-1", "--grace-period must be")]:
        bad = CliRunner().invoke(main, ["serve", str(flux_mini_bundle), flag, value, "--write-config", str(path)])
        assert bad.exit_code == 2 and message in bad.output, bad.output
