"""The Ray Serve application: a front end (FastAPI ingress: HTTP, validation, retries, error mapping) and a
generator deployment (the bundle on ONNX Runtime, weights once per replica, requests batched continuously at step
granularity by :class:`ddit_export.serve.batching.StepLoop`: a request joins the running loop at the next step).

``app_builder(args)`` is the import path Ray Serve's own ``serve run`` / ``serve deploy`` take
(``ddit_export.serve.app:app_builder``), with ``args`` the :class:`ServeOptions` fields; ``ddit-export serve``
writes that YAML (``--write-config``) and runs it (``--config``).

Errors (every one the JSON ``{"error": {"message", "type", "code"}}``, 404 and 405 included): a bad request is 400
with the CLI's message (a body nested too deeply too); a body over ``max_body_bytes`` 413; a Content-Type that is
not JSON 415; a full queue 503 with ``Retry-After`` (Ray Serve's own
back-pressure: ``max_queued_requests`` at the caller, ``backpressure_config.retry_after_s``); a request past its
deadline 504; a replica that dies while holding a request: the front end re-sends it (generation is a pure
function of the request, so a retry returns the same image) up to ``retries`` times, then 503 saying so; anything
else 500 with one line, never a traceback.
"""

import asyncio
import threading
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from ..errors import DDiTError
from .options import (APP_NAME, IMPORT_PATH, ServeOptions, config_yaml, describe,  # noqa: F401 (re-exported)
                      options_from_config)
from .schemas import Job, error_body, is_json_content_type, parse_json_body, parse_request, response_body

# ---- the generator ---------------------------------------------------------------------------------------------
class _Pending:
    """A job inside a replica: the cancel flag the batch loop polls every step."""

    def __init__(self, job: Job):
        self.job = job
        self.cancel = threading.Event()
        self.started: float | None = None


@serve.deployment(name="Generator", graceful_shutdown_timeout_s=5, health_check_period_s=5)
class Generator:
    """A replica: the bundle on ONNX Runtime and one :class:`~ddit_export.serve.batching.StepLoop` (continuous
    batching at step granularity) driven by a thread; a request joins the running loop at the next step boundary,
    up to ``max_batch_size`` requests running at once (the rest wait in the loop's queue)."""

    def __init__(self, options: dict):
        import ddit_export
        from ..runtime.bundle_model import open_bundle
        from .metrics import ServeMetrics

        self.options = ServeOptions.from_dict(options)
        self.model, self.backend = open_bundle(self.options.bundle, threads=self.options.threads)
        self.metrics = ServeMetrics()
        self.package = str(Path(ddit_export.__file__).parent)
        self.pid = __import__("os").getpid()
        self._warm_up()
        self._start_loop()

    def _warm_up(self):
        """One 1-step generation per size before the first request: the lazy imports (text encoder, scheduler)
        and ONNX Runtime's first-run allocations happen here, not in a client's latency."""
        from ..api import build_settings
        from .batching import run_jobs

        for k in self.model.geometry().available_sizes(tuple(self.model.manifest.sizes)):
            run_jobs(self.model, self.backend, [build_settings(self.model, steps=1, static=(k,))])

    def _start_loop(self, thread: bool = True):
        from .batching import StepLoop

        self.loop = StepLoop(self.model, self.backend, max_jobs=self.options.max_batch_size)
        self._wake = threading.Event()
        if thread:
            threading.Thread(target=self._drive, name="ddit-step-loop", daemon=True).start()

    def _drive(self):
        """The loop thread: steps while the loop holds jobs; when it goes from idle to busy, waits
        ``batch_wait_s`` first so that requests arriving together start together."""
        while True:
            if self.loop.idle:
                self._wake.wait(0.5)
                self._wake.clear()
                if not self.loop.idle and self.options.batch_wait_s:
                    time.sleep(self.options.batch_wait_s)
                continue
            self.step_once()

    def step_once(self) -> list:
        """One step of the loop (its thread, or a test driving it), its metrics recorded."""
        from .batching import BatchStats

        stats = self.loop.stats = BatchStats()
        try:
            done = self.loop.step()
        except Exception as e:  # noqa: BLE001 - a failure of the loop itself: its jobs end, none waits forever
            done = self.loop.fail_all(e)
        stats.jobs = self.loop.last_jobs
        if stats.jobs:
            self.metrics.batch_done(stats, 0.0)
        return done

    async def generate(self, job: Job) -> dict:
        """One request -> {"status": HTTP status, "body": JSON}; cancelled (client gone) -> it leaves the loop at
        the next step boundary."""
        pending = _Pending(job)
        aloop = asyncio.get_running_loop()
        fut = aloop.create_future()

        def on_done(result, info):  # on the loop's thread
            aloop.call_soon_threadsafe(lambda: None if fut.done() else fut.set_result((result, info)))

        self.loop.submit(job.settings, pending.cancel.is_set, on_done)
        self._wake.set()
        remaining = job.timeout_s - (time.time() - job.accepted_at)
        try:
            result, info = await asyncio.wait_for(asyncio.shield(fut), max(remaining, 0.001))
        except asyncio.TimeoutError:
            pending.cancel.set()
            self.metrics.request("timeout")
            return {"status": 504, "body": error_body(
                f"request timed out after {job.timeout_s:g} s (queue and generation); raise 'timeout' (at most the "
                f"server's limit) or retry when the service is less busy", "timeout", 504)}
        except asyncio.CancelledError:
            pending.cancel.set()
            self.metrics.request("cancelled")
            raise
        return self._respond(job, result, info)

    def _respond(self, job: Job, r, info: dict) -> dict:
        from .batching import Cancelled

        if isinstance(r, Cancelled):
            return {"status": 499, "body": error_body("request cancelled", "cancelled", 499)}
        if isinstance(r, DDiTError):
            self.metrics.request("bad_request")
            return {"status": 400, "body": error_body(str(r))}
        if isinstance(r, BaseException):
            self.metrics.request("error")
            return {"status": 500, "body": error_body(
                f"generation failed: {type(r).__name__}: {str(r).splitlines()[0] if str(r) else ''}",
                "server_error", 500)}
        start = info["admitted_at"] or job.accepted_at
        timings = {"queue_s": start - job.accepted_at, "batch_jobs": info["peak_jobs"],
                   "joined_at_step": info["joined_at_step"],
                   "batch": {"calls": info["calls"], "transformer_s": info["transformer_s"]},
                   "replica_pid": self.pid}
        body = response_body(job, r, self.model.name, timings)
        body["timings"]["total_s"] = time.time() - job.accepted_at
        self.metrics.request("ok", time.time() - job.accepted_at, start - job.accepted_at, r.trace)
        return {"status": 200, "body": body}

    async def info(self) -> dict:
        """This replica's view: process, package path, totals since start."""
        return {"pid": self.pid, "package": self.package, "totals": self.metrics.totals,
                "sizes": list(self.model.manifest.sizes)}

    async def check_health(self):
        if not self.backend.sessions:
            raise RuntimeError("ONNX Runtime sessions are not loaded")


# ---- the front end ---------------------------------------------------------------------------------------------
api = FastAPI(title="ddit-export", description="DDiT bundle generation service (issue 13)", docs_url=None,
              redoc_url=None)


def _json(body: dict, status: int, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


_HTTP_KINDS = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large", 415: "unsupported_media_type"}


@api.exception_handler(404)
@api.exception_handler(405)
async def _http_error(request: Request, exc):
    """FastAPI's own errors (no such path, wrong method) in the service's error shape, not {"detail": ...}."""
    from starlette.exceptions import HTTPException

    code = exc.status_code if isinstance(exc, HTTPException) else 404
    detail = exc.detail if isinstance(exc, HTTPException) and isinstance(exc.detail, str) else ""
    message = (f"no such endpoint: {request.method} {request.url.path}; the service has POST "
               f"/v1/images/generations, GET /healthz, GET /v1/models, GET /v1/stats") if code == 404 else \
        f"method {request.method} is not allowed on {request.url.path}" if code == 405 else detail
    headers = getattr(exc, "headers", None)
    return _json(error_body(message, _HTTP_KINDS.get(code, "invalid_request_error"), code), code, headers)


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The request body, or None once it is longer than ``limit`` bytes (read no further)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


@serve.deployment(name="Frontend", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
@serve.ingress(api)
class Frontend:
    def __init__(self, generator, options: dict):
        from ..bundle import load
        from ..runtime.bundle_model import BundleModel

        self.options = ServeOptions.from_dict(options)
        self.generator = generator
        manifest = load(self.options.bundle, hashes=False)  # the replicas verify the hashes
        self.model = BundleModel(manifest.model["name"], manifest, None)
        self.in_flight = 0  # accepted generation requests not answered yet
        self.draining = False

    async def drain(self, grace_s: float) -> int:
        """Shutdown: refuse new requests (503), wait up to ``grace_s`` for the accepted ones to be answered;
        returns how many were still in flight."""
        self.draining = True
        deadline = time.monotonic() + grace_s
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.in_flight

    @api.post("/v1/images/generations")
    async def generations(self, request: Request):
        if self.draining:
            return _json(error_body("the service is shutting down; retry on another instance", "shutting_down",
                                    503), 503, {"Retry-After": str(max(1, round(self.options.retry_after_s)))})
        self.in_flight += 1
        try:
            return await self._generations(request)
        finally:
            self.in_flight -= 1

    async def _generations(self, request: Request):
        from ray.exceptions import RayActorError
        from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

        if not is_json_content_type(request.headers.get("content-type")):
            return _json(error_body(f"Content-Type {request.headers.get('content-type')!r} is not JSON; send the "
                                    f"body as application/json", "unsupported_media_type", 415), 415)
        raw = await _read_body(request, self.options.max_body_bytes)
        if raw is None:
            return _json(error_body(f"the request body is larger than {self.options.max_body_bytes} bytes (the "
                                    f"server's --max-body-bytes)", "request_too_large", 413), 413)
        try:
            job = parse_request(parse_json_body(raw), self.model, self.options.limits)
        except DDiTError as e:
            return _json(error_body(str(e)), 400)
        died = 0
        while True:
            try:
                out = await asyncio.wait_for(self.generator.generate.remote(job), job.timeout_s + 30)
                break
            except BackPressureError:
                if died and time.time() - job.accepted_at + self.options.retry_after_s < job.timeout_s:
                    # an accepted request being re-sent after its replica died: wait for the replacement replica
                    await asyncio.sleep(self.options.retry_after_s)
                    continue
                return _json(error_body(
                    f"the service is at capacity (every replica busy and {self.options.max_queued_requests} "
                    f"requests queued); retry after {self.options.retry_after_s:g} s", "overloaded", 503), 503,
                    {"Retry-After": str(max(1, round(self.options.retry_after_s)))})
            except RayActorError as e:  # the replica holding the request died: re-send, the result is the same
                died += 1
                if died > self.options.retries:
                    return _json(error_body(
                        f"the generator replica died while holding this request ({type(e).__name__}); re-sent "
                        f"{self.options.retries} time(s), all failed", "replica_died", 503), 503,
                        {"Retry-After": str(max(1, round(self.options.retry_after_s)))})
                await asyncio.sleep(0.2 * died)
            except DeploymentUnavailableError as e:
                return _json(error_body(f"the generator is unavailable: {str(e).splitlines()[0]}", "unavailable",
                                        503), 503, {"Retry-After": str(max(1, round(self.options.retry_after_s)))})
            except asyncio.TimeoutError:
                return _json(error_body(f"no answer from the generator within {job.timeout_s + 30:g} s",
                                        "timeout", 504), 504)
            except Exception as e:  # noqa: BLE001 - one line, no traceback, in the response
                return _json(error_body(f"generation failed: {type(e).__name__}: "
                                        f"{(str(e).splitlines() or [''])[0]}", "server_error", 500), 500)
        body = out["body"]
        if out["status"] == 200 and died:
            body.setdefault("timings", {})["resent_after_replica_death"] = died
        return _json(body, out["status"])

    @api.get("/healthz")
    async def healthz(self):
        try:
            info = await asyncio.wait_for(self.generator.info.remote(), 10)
        except Exception as e:  # noqa: BLE001
            return _json({"status": "unavailable", "error": f"{type(e).__name__}"}, 503)
        return _json({"status": "ok", "model": self.model.name, "replica_pid": info["pid"]}, 200)

    @api.get("/v1/models")
    async def models(self):
        from ..settings import policy_spec

        m = self.model
        man = m.manifest
        entry = {"id": m.name, "object": "model", "owned_by": "ddit-export", "kind": man.model["kind"],
                 "size": f"{man.model['width']}x{man.model['height']}", "height": man.model["height"],
                 "width": man.model["width"], "patch_sizes": list(man.sizes), "dtype": man.dtype,
                 "default_steps": m.default_steps, "default_prompt": m.default_prompt,
                 "schedule": policy_spec(m.schedule_defaults), "cache": m.cache_defaults.to_dict(),
                 "tensorrt": bool(man.tensorrt)}
        if "frames" in man.model:  # a video bundle: its clip length, and the clips' response formats
            entry.update(frames=man.model["frames"], response_formats=["b64_gif", "b64_json"])
        return _json({"object": "list", "data": [entry]}, 200)

    @api.get("/v1/stats")
    async def stats(self):
        """One generator replica's totals (the replica the router picks; see metrics.py)."""
        try:
            return _json(await asyncio.wait_for(self.generator.info.remote(), 10), 200)
        except Exception as e:  # noqa: BLE001
            return _json(error_body(f"no replica answered: {type(e).__name__}", "unavailable", 503), 503)


def app_builder(args: dict):
    """What ``serve run ddit_export.serve.app:app_builder bundle=...`` and a config file's ``import_path`` call."""
    options = ServeOptions.from_dict(dict(args))
    opts = options.to_dict()
    generator = Generator.options(**options.generator_options()).bind(opts)
    return Frontend.bind(generator, opts)


def start(options: ServeOptions, *, host: str = "127.0.0.1", port: int = 8000, address: str | None = None,
          num_cpus: int | None = None, log=print, ray_init_kw: dict | None = None) -> str:
    """Start (or join, with ``address``) Ray, start Serve's HTTP proxy on host:port, deploy; returns the URL once
    the application runs."""
    import os

    import ray

    if not ray.is_initialized():
        kw = dict(include_dashboard=False, configure_logging=False, log_to_driver=False)
        if address:
            kw["address"] = address
        elif num_cpus is not None:
            kw["num_cpus"] = num_cpus
        # the replicas import this checkout's package (PYTHONPATH as the driver sees it)
        root = str(Path(__file__).resolve().parents[2])
        paths = [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
        kw["runtime_env"] = {"env_vars": {"PYTHONPATH": os.pathsep.join(paths)}}
        kw.update(ray_init_kw or {})
        ray.init(**kw)
    serve.start(http_options={"host": host, "port": port, "request_timeout_s": options.timeout_s + 60})
    serve.run(app_builder(options.to_dict()), name=APP_NAME, route_prefix="/", blocking=False)
    url = f"http://{host}:{port}"
    log(f"serving {Path(options.bundle).name} at {url} ({describe(options)})")
    return url


def drain(grace_s: float, log=print) -> int:
    """Before :func:`stop`: the front end answers new requests 503 and waits up to ``grace_s`` seconds for the
    accepted ones; returns how many were still in flight (-1: the front end did not answer)."""
    import ray

    if not ray.is_initialized():
        return 0
    try:
        left = serve.get_app_handle(APP_NAME).drain.remote(grace_s).result(timeout_s=grace_s + 30)
    except Exception as e:  # noqa: BLE001 - shutting down anyway
        log(f"drain: the front end did not answer ({type(e).__name__}); stopping")
        return -1
    if left:
        log(f"drain: {left} request(s) still running after {grace_s:g} s; stopping anyway")
    return left


def stop():
    """Delete the application, stop Serve, leave Ray (a local Ray started by :func:`start` stops too)."""
    import ray

    if not ray.is_initialized():
        return
    try:
        serve.shutdown()
    finally:
        if ray.is_initialized():
            ray.shutdown()
