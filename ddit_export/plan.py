"""Reading the TensorRT plan that ``build --backend trt`` stores in a bundle's ``manifest.json``.

Beside :mod:`.bundle` (the format both sides share): the runtime reads the plan, the build side
(:mod:`.export.trt_plan`) computes and writes it, and the runtime must not import the build side.
"""
from __future__ import annotations

import json
from pathlib import Path

from .errors import BundleError

PLAN_KEY = "tensorrt"
PLAN_VERSION = 1


def read_plan(folder) -> dict | None:
    """The bundle's plan, or None if it has none; refuses a newer plan version."""
    from .bundle import MANIFEST

    d = json.loads((Path(folder) / MANIFEST).read_text())
    plan = d.get(PLAN_KEY)
    if plan is None:
        return None
    if not isinstance(plan.get("plan_version"), int) or plan["plan_version"] > PLAN_VERSION:
        raise BundleError(f"{Path(folder) / MANIFEST}: TensorRT plan version {plan.get('plan_version')!r} is not "
                          f"one this ddit-export reads ({PLAN_VERSION}); upgrade or rebuild with --backend trt")
    return plan
