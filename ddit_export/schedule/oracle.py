"""The per-prompt oracle: the best static schedule for each prompt at a FLOP budget, by exhaustive search over a
family of schedules. Pure: it takes a callable that scores a schedule (one score per prompt, higher is better) and
knows nothing about models. It is the upper bound of what choosing a patch size per step can give."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from .static import ladder_sizes


def flops_ratio(sizes: Sequence[int], cost: Mapping[int, float]) -> float:
    """FLOPs of a schedule relative to fine-only; ``cost[k]`` = a size-k step's FLOPs over a fine step's."""
    return float(sum(cost[k] for k in sizes) / len(sizes))


def ladder_family(steps: int, cost: Mapping[int, float], budget: float, *, max_head: int = 3,
                  n4_values: Sequence[int] = range(0, 17, 2), slack: float = 0.025) -> list[tuple[int, ...]]:
    """Monotone ladders (head fine, n4 at size 4, size 2, tail fine) with FLOP ratio in [budget - slack, budget]:
    the ones that spend the budget (a cheaper ladder of the same shape only loses quality; on a 28-step flux-mini
    run, one fine step more or less moves the ratio by 0.024)."""
    out = []
    for n4 in n4_values:
        for head in range(max_head + 1):
            for tail in range(1, steps - head - n4 + 1):
                s = ladder_sizes(steps, head, n4, tail)
                if budget - slack <= flops_ratio(s, cost) <= budget + 1e-9:
                    out.append(s)
    return out


@dataclass
class OracleResult:
    candidates: list  # the schedules searched
    scores: np.ndarray  # (n_candidates, n_prompts)
    best: np.ndarray  # (n_prompts,) index of each prompt's best candidate

    @property
    def per_prompt(self) -> list:
        """Each prompt's best schedule."""
        return [self.candidates[i] for i in self.best]

    @property
    def oracle_scores(self) -> np.ndarray:
        return self.scores[self.best, np.arange(self.scores.shape[1])]

    @property
    def best_static(self) -> int:
        """Index of the one schedule with the best mean score over the prompts."""
        return int(np.argmax(self.scores.mean(axis=1)))


def oracle_search(candidates: Sequence[Sequence[int]], score: Callable[[tuple], np.ndarray]) -> OracleResult:
    """Score every candidate (``score(schedule)`` -> one value per prompt) and pick the best per prompt."""
    if not candidates:
        raise ValueError("the oracle needs at least one candidate schedule")
    cands = [tuple(int(k) for k in c) for c in candidates]
    scores = np.stack([np.atleast_1d(np.asarray(score(c), dtype=np.float64)) for c in cands])
    return OracleResult(cands, scores, np.argmax(scores, axis=0))
