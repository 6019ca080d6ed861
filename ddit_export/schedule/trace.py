"""Per-step record of a generation: timestep, chosen size, σ values, tokens, FLOPs, seconds. Saved as JSON."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

TRACE_FORMAT = "ddit-trace/1"


@dataclass
class StepRecord:
    step: int
    timestep: float  # sigma in [0, 1] as the transformer sees it
    size: int
    reason: str
    tokens: int
    flops: float
    sigmas: dict = field(default_factory=dict)
    seconds: float | None = None
    kind: str = "model"  # "model": the transformer ran; "cached": the step cache extrapolated (0 FLOPs)


@dataclass
class Trace:
    model: str
    grid: tuple[int, int]
    settings: dict
    steps: list[StepRecord] = field(default_factory=list)
    fine_flops_per_step: float = 0.0

    @property
    def sizes(self) -> list[int]:
        return [s.size for s in self.steps]

    @property
    def coarse_fraction(self) -> float:
        return sum(s.size > 1 for s in self.steps) / max(len(self.steps), 1)

    @property
    def kinds(self) -> list[str]:
        return [s.kind for s in self.steps]

    @property
    def cached_fraction(self) -> float:
        return sum(s.kind == "cached" for s in self.steps) / max(len(self.steps), 1)

    @property
    def flops(self) -> float:
        return sum(s.flops for s in self.steps)

    @property
    def flops_ratio(self) -> float:
        """FLOPs of the run relative to running every step at the fine size (a cached step counts its 0)."""
        return self.flops / (self.fine_flops_per_step * len(self.steps)) if self.steps else 1.0

    def to_dict(self) -> dict:
        d = asdict(self)
        for s in d["steps"]:
            s["sigmas"] = {str(k): v for k, v in s["sigmas"].items()}
        d.update(format=TRACE_FORMAT, coarse_fraction=self.coarse_fraction, total_flops=self.flops,
                 flops_ratio=self.flops_ratio,
                 cached_fraction=self.cached_fraction)
        return d

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Trace":
        from ..errors import ConfigError

        try:
            d = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read trace {path}: {e}") from None
        if d.get("format") != TRACE_FORMAT:
            raise ConfigError(f"{path} is not a ddit trace (format {d.get('format')!r})")
        steps = [StepRecord(**{**s, "sigmas": {int(k): v for k, v in s["sigmas"].items()}}) for s in d["steps"]]
        return cls(d["model"], tuple(d["grid"]), d["settings"], steps, d["fine_flops_per_step"])
