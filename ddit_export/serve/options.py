"""The service's settings (:class:`ServeOptions`) and its Ray Serve config file: written (``config_yaml``), read back
(``options_from_config``) and described in one line. No Ray or FastAPI here, so the command line checks options
before Ray starts; ``app.py`` (the deployments) builds on it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from .schemas import MAX_BODY_BYTES, Limits

APP_NAME = "ddit"
IMPORT_PATH = "ddit_export.serve.app:app_builder"


@dataclass(frozen=True)
class ServeOptions:
    """One service: the bundle, replicas (fixed, or autoscaling between min and max), batching, queues, limits."""

    bundle: str
    num_replicas: int = 1
    min_replicas: int | None = None  # with max_replicas: autoscaling instead of num_replicas
    max_replicas: int | None = None
    target_ongoing_requests: float = 8.0  # autoscaling target per replica
    max_batch_size: int = 4  # CPU: a flux-mini step is compute-bound at batch 1; bigger batches only queue (README)
    batch_wait_s: float = 0.01
    max_ongoing_requests: int = 16  # per replica: requests a replica holds (queued in its batcher + running)
    max_queued_requests: int = 32  # per caller (the front end): beyond replicas x max_ongoing; then 503
    retry_after_s: float = 1.0
    timeout_s: float = 120.0
    max_n: int = 4
    max_steps: int = 200
    retries: int = 2  # front end re-sends when the replica holding a request dies
    threads: int | None = None  # ONNX Runtime intra-op threads per replica (None: ORT's default)
    replica_cpus: float = 1.0  # Ray CPUs reserved per generator replica
    max_body_bytes: int = MAX_BODY_BYTES  # a longer request body gets 413

    def __post_init__(self):
        if not Path(self.bundle).is_dir():
            raise ConfigError(f"bundle folder not found: {self.bundle}")
        object.__setattr__(self, "bundle", str(Path(self.bundle).resolve()))
        checks = [("num_replicas >= 1", self.num_replicas >= 1),
                  ("max_batch_size >= 1", self.max_batch_size >= 1), ("batch_wait_s >= 0", self.batch_wait_s >= 0),
                  ("max_ongoing_requests >= 1", self.max_ongoing_requests >= 1),
                  ("max_queued_requests >= 0 (or -1: unbounded)", self.max_queued_requests >= -1),
                  ("retry_after_s >= 0", self.retry_after_s >= 0), ("timeout_s > 0", self.timeout_s > 0),
                  ("max_n >= 1", self.max_n >= 1), ("max_steps >= 1", self.max_steps >= 1),
                  ("retries >= 0", self.retries >= 0), ("threads >= 1", self.threads is None or self.threads >= 1),
                  ("replica_cpus >= 0", self.replica_cpus >= 0), ("max_body_bytes >= 1", self.max_body_bytes >= 1),
                  ("target_ongoing_requests > 0", self.target_ongoing_requests > 0)]
        bad = [name for name, ok in checks if not ok]
        if bad:
            raise ConfigError(f"serve: invalid {', '.join(bad)}")
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise ConfigError("autoscaling needs both --min-replicas and --max-replicas")
        if self.max_replicas is not None and not 0 <= self.min_replicas <= self.max_replicas >= 1:
            raise ConfigError(f"autoscaling needs 0 <= min_replicas <= max_replicas >= 1, got "
                              f"{self.min_replicas}..{self.max_replicas}")

    @classmethod
    def from_dict(cls, d: dict) -> "ServeOptions":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown serve option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        return cls(**d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def limits(self) -> Limits:
        return Limits(max_n=self.max_n, max_steps=self.max_steps, timeout_s=self.timeout_s,
                      max_timeout_s=max(self.timeout_s, 600.0))

    def generator_options(self) -> dict:
        """The generator deployment's Ray Serve options (the YAML's ``deployments`` entry)."""
        o = {"max_ongoing_requests": self.max_ongoing_requests, "max_queued_requests": self.max_queued_requests,
             "ray_actor_options": {"num_cpus": self.replica_cpus},
             "backpressure_config": {"retry_after_s": self.retry_after_s}}
        if self.max_replicas is not None:
            o["autoscaling_config"] = {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                                       "target_ongoing_requests": self.target_ongoing_requests}
        else:
            o["num_replicas"] = self.num_replicas
        return o


def config_yaml(options: ServeOptions, host: str = "127.0.0.1", port: int = 8000) -> dict:
    """The Ray Serve config file (``serve run FILE`` / ``serve deploy FILE``) of these options."""
    gen = options.generator_options()
    return {"proxy_location": "HeadOnly",
            "http_options": {"host": host, "port": port, "request_timeout_s": options.timeout_s + 60},
            "applications": [{"name": APP_NAME, "route_prefix": "/", "import_path": IMPORT_PATH,
                              "args": options.to_dict(),
                              "deployments": [{"name": "Generator", **gen}]}]}


def options_from_config(cfg: dict) -> tuple[ServeOptions, str, int]:
    """A config file (as written by :func:`config_yaml`, or edited) -> (options, host, port). The Generator
    deployment's num_replicas / autoscaling / queue settings override the app's args, as Ray Serve applies them."""
    apps = cfg.get("applications") or []
    mine = [a for a in apps if a.get("import_path") == IMPORT_PATH]
    if len(mine) != 1:
        raise ConfigError(f"the config must have exactly one application with import_path {IMPORT_PATH}")
    args = dict(mine[0].get("args") or {})
    for d in mine[0].get("deployments") or []:
        if d.get("name") != "Generator":
            continue
        for key in ("num_replicas", "max_ongoing_requests", "max_queued_requests"):
            if key in d:
                args[key] = d[key]
        if "autoscaling_config" in d:
            a = d["autoscaling_config"]
            args.update(min_replicas=a.get("min_replicas", 1), max_replicas=a.get("max_replicas", 1))
            if "target_ongoing_requests" in a:
                args["target_ongoing_requests"] = a["target_ongoing_requests"]
        if "num_cpus" in (d.get("ray_actor_options") or {}):
            args["replica_cpus"] = d["ray_actor_options"]["num_cpus"]
        if "retry_after_s" in (d.get("backpressure_config") or {}):
            args["retry_after_s"] = d["backpressure_config"]["retry_after_s"]
    http = cfg.get("http_options") or {}
    return ServeOptions.from_dict(args), http.get("host", "127.0.0.1"), int(http.get("port", 8000))


def describe(options: ServeOptions) -> str:
    reps = (f"autoscaling {options.min_replicas}..{options.max_replicas} replicas" if options.max_replicas is not None
            else f"{options.num_replicas} replica(s)")
    return (f"{reps}, batches of up to {options.max_batch_size}, {options.max_ongoing_requests} requests per "
            f"replica + {options.max_queued_requests} queued, timeout {options.timeout_s:g} s")
