"""A plain-HTTP client of ``ddit-export serve`` (standard library only: no Ray, no requests).

    from ddit_export.client import Client
    c = Client("http://127.0.0.1:8000")
    res = c.generate("a red circle", seed=3, policy="ddit")   # GenerationResponse
    res.images[0].save("out.png"); res.sizes; res.trace

Errors the service returns come back as :class:`ServiceError` (a DDiTError: the CLI prints one ``error:`` line) with
the HTTP status and the service's one-line message. A 503 (queue full, replica lost) is retried after the service's
``Retry-After`` up to ``retries`` times; generation is a pure function of the request, so a retry is safe.
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

from .errors import ConfigError, DDiTError


class ServiceError(DDiTError):
    """The service answered with an error (status >= 400) or could not be reached (status 0)."""

    def __init__(self, status: int, message: str, retry_after: float | None = None):
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


@dataclass
class GenerationResponse:
    body: dict
    images: list = field(default_factory=list)  # PIL images; a video service: one list of PIL frames per clip
    attempts: int = 1

    @property
    def sizes(self) -> list[int]:
        return self.body["schedule"]["sizes"]

    @property
    def trace(self) -> dict | None:
        return self.body.get("trace")

    @property
    def timings(self) -> dict:
        return self.body.get("timings", {})


class Client:
    def __init__(self, url: str = "http://127.0.0.1:8000", timeout: float = 300.0, retries: int = 2,
                 max_retry_wait: float = 30.0):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"--url {url!r} is not an http(s) URL of the service, e.g. http://127.0.0.1:8000")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.max_retry_wait = max_retry_wait

    def _call(self, method: str, path: str, body: dict | None = None, timeout: float | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                msg = json.loads(raw)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                msg = raw.decode(errors="replace").strip().splitlines()[0] if raw.strip() else e.reason
            ra = e.headers.get("Retry-After")
            raise ServiceError(e.code, msg, float(ra) if ra and ra.replace(".", "", 1).isdigit() else None) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ServiceError(0, f"cannot reach {self.url}: {reason}") from None

    def healthz(self, timeout: float = 10.0) -> dict:
        return self._call("GET", "/healthz", timeout=timeout)

    def models(self) -> dict:
        return self._call("GET", "/v1/models")

    def stats(self) -> dict:
        return self._call("GET", "/v1/stats")

    def wait_ready(self, timeout: float = 120.0, poll: float = 0.5) -> dict:
        """Poll /healthz until the service answers ok (ServiceError after ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.healthz(timeout=min(10.0, timeout))
            except ServiceError as e:
                if time.monotonic() > deadline:
                    raise ServiceError(e.status, f"service not ready after {timeout:g} s: {e.message}") from None
            time.sleep(poll)

    def generate_raw(self, body: dict) -> tuple[dict, int]:
        """POST one request body; 503s retried after Retry-After. Returns (response JSON, attempts)."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._call("POST", "/v1/images/generations", body), attempt
            except ServiceError as e:
                if e.status != 503 or attempt > self.retries:
                    raise
                time.sleep(min(self.max_retry_wait, e.retry_after if e.retry_after is not None else 1.0))

    def generate(self, prompt: str | None = None, **options) -> GenerationResponse:
        """One request: ``prompt`` and any request field (n, seed, steps, size, policy, schedule, cache, ...)."""
        body = {k: v for k, v in dict(prompt=prompt, **options).items() if v is not None}
        out, attempts = self.generate_raw(body)
        return GenerationResponse(out, [_decoded(d) for d in out["data"]], attempts)


def _decoded(entry: dict):
    """A response's data entry -> a PIL image, or a clip's PIL frames (a GIF, or PNG frames)."""
    from .serve.schemas import decode_gif, decode_png

    if "b64_gif" in entry:
        return decode_gif(entry["b64_gif"])
    if "b64_json_frames" in entry:
        return [decode_png(b) for b in entry["b64_json_frames"]]
    return decode_png(entry["b64_json"])
