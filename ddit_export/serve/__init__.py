"""``ddit-export serve``: a bundle as an HTTP service on Ray Serve (issue 13).

- ``schemas.py``: request validation (the CLI's messages), response shapes; no Ray.
- ``batching.py``: several requests in one loop, each keeping its own schedule; no Ray.
- ``app.py``: the Ray Serve deployments (front end + generator replicas), the app builder ``serve run`` imports.
- ``metrics.py``: Prometheus-style metrics through Ray Serve's metrics API.

Ray is imported lazily (``pip install 'ddit-export[serve]'``): nothing else in the package needs it.
"""
