"""Prometheus-style metrics of the generator replicas through Ray Serve's metrics API (``ray.serve.metrics``): Ray
exports them with its own metrics (the ``ray_`` prefix, scraped from each node's metrics export port, e.g.
``ray start --metrics-export-port 8080``). The same numbers, summed over this replica's life, come back from
``GET /v1/stats`` (one replica's view) for a quick look without Prometheus.

- ``ddit_serve_requests`` (counter, tag ``status``: ok, bad_request, timeout, cancelled, error)
- ``ddit_serve_latency_s`` (histogram: accepted at the front end -> response ready)
- ``ddit_serve_queue_s`` (histogram: accepted -> its batch starts)
- ``ddit_serve_coarse_fraction`` (histogram over finished requests)
- ``ddit_serve_steps`` (counter, tags ``size`` and ``kind``: model / cached)
- ``ddit_serve_batch_jobs`` (histogram: requests per step of the replica's loop)
- ``ddit_serve_backend_calls`` (counter, tag ``size``: transformer calls, one per size per step of a batch)
"""
from __future__ import annotations

LATENCY_BOUNDS = [0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 120]
FRACTION_BOUNDS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
BATCH_BOUNDS = [1, 2, 4, 8, 16, 32]


class ServeMetrics:
    def __init__(self):
        from ray.serve.metrics import Counter, Histogram

        self.requests = Counter("ddit_serve_requests", description="Generation requests by outcome.",
                                tag_keys=("status",))
        self.latency = Histogram("ddit_serve_latency_s", description="Seconds from acceptance to response.",
                                 boundaries=LATENCY_BOUNDS)
        self.queue = Histogram("ddit_serve_queue_s", description="Seconds from acceptance to the batch start.",
                               boundaries=LATENCY_BOUNDS)
        self.coarse = Histogram("ddit_serve_coarse_fraction", description="Coarse-step fraction per request.",
                                boundaries=FRACTION_BOUNDS)
        self.steps = Counter("ddit_serve_steps", description="Denoising steps by patch size and kind.",
                             tag_keys=("size", "kind"))
        self.batch = Histogram("ddit_serve_batch_jobs", description="Requests per batch.", boundaries=BATCH_BOUNDS)
        self.calls = Counter("ddit_serve_backend_calls", description="Transformer calls by patch size.",
                             tag_keys=("size",))
        self.totals: dict = {"requests": {}, "steps": {}, "backend_calls": {}, "backend_samples": {}, "batches": 0,
                             "batch_jobs": 0, "latency_s_sum": 0.0, "queue_s_sum": 0.0, "transformer_s": 0.0,
                             "encode_s": 0.0, "decode_s": 0.0, "png_s": 0.0, "coarse_fraction_sum": 0.0}

    def _bump(self, key: str, tag: str, n: float = 1):
        d = self.totals[key]
        d[tag] = d.get(tag, 0) + n

    def request(self, status: str, latency_s: float | None = None, queue_s: float | None = None, trace=None):
        self.requests.inc(tags={"status": status})
        self._bump("requests", status)
        if latency_s is not None:
            self.latency.observe(latency_s)
            self.totals["latency_s_sum"] += latency_s
        if queue_s is not None:
            self.queue.observe(queue_s)
            self.totals["queue_s_sum"] += queue_s
        if trace is not None:
            self.coarse.observe(trace.coarse_fraction)
            self.totals["coarse_fraction_sum"] += trace.coarse_fraction
            for s in trace.steps:
                self.steps.inc(tags={"size": str(s.size), "kind": s.kind})
                self._bump("steps", f"{s.size}/{s.kind}")

    def batch_done(self, stats, png_s: float):
        self.batch.observe(stats.jobs)
        t = self.totals
        t["batches"] += 1
        t["batch_jobs"] += stats.jobs
        t["transformer_s"] += stats.transformer_s
        t["encode_s"] += stats.encode_s
        t["decode_s"] += stats.decode_s
        t["png_s"] += png_s
        for k, n in stats.calls.items():
            self.calls.inc(n, tags={"size": str(k)})
            self._bump("backend_calls", str(k), n)
        for k, n in stats.samples.items():
            self._bump("backend_samples", str(k), n)
