"""Parsing the request values the command line and the HTTP service share (sizes lists, coarse-first specs).

It sits below both: ``cli.py``, ``commands/`` and ``serve/`` import it, so the service never imports the CLI.
"""
from __future__ import annotations

from .errors import ConfigError


def int_list(text: str | None, what: str) -> tuple[int, ...] | None:
    """"1,2,4" -> (1, 2, 4); None stays None; anything else is a ConfigError naming ``what`` (the option)."""
    if text is None:
        return None
    try:
        return tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated integers, got {text!r}") from None


def coarse_first(text: str | None) -> tuple[int, int] | None:
    """--coarse-first "K" or "K:SIZE" -> (K, SIZE) with SIZE 2 by default."""
    if text is None:
        return None
    parts = int_list(text.replace(":", ","), "--coarse-first")
    if len(parts) not in (1, 2):
        raise ConfigError(f"--coarse-first takes K or K:SIZE, got {text!r}")
    return (parts[0], parts[1] if len(parts) == 2 else 2)
