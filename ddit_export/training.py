"""What the trainers share (the zoo's base-model trainers and the adapter trainer): thread tuning on a shared CPU and
the attention backends training on CUDA may use. Below both, so neither trainer imports the other."""
from __future__ import annotations

import contextlib

import numpy as np
import torch


def no_cudnn_attention(device):
    """Training on CUDA: keep SDPA off the cuDNN backend, whose backward returned NaN gradients for the
    embeddings here (torch 2.11 + CUDA 13 on an H200, bf16, 88 and 40 tokens); flash, mem-efficient and math
    agree with each other and with CPU."""
    if torch.device(device).type != "cuda":
        return contextlib.nullcontext()
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # older torch: no cuDNN attention either
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


class ThreadTuner:
    """``--threads auto``: alternately time 1 and 2 intra-op threads and keep the faster one for a while.

    On a 2-core machine shared with other work, 2 threads stall whenever the other core is busy (one step can
    take 5x longer), while 1 thread runs steadily; which is faster changes as the other load comes and goes.
    """

    def __init__(self, choices=(1, 2), probe: int = 6, keep: int = 200):
        self.choices, self.probe, self.keep = choices, probe, keep
        self.times: dict[int, list[float]] = {c: [] for c in choices}
        self.ref: float | None = None  # median step time of the last choice kept
        self.plan: list[int] = []
        self.current, self.probing, self._skip = choices[-1], False, False

    def before_step(self) -> int:
        if not self.plan:
            if all(self.times.values()):
                best = min(self.choices, key=lambda c: float(np.median(self.times[c])))
                self.ref = float(np.median(self.times[best]))
                self.times = {c: [] for c in self.choices}
                self.plan = [(best, False)] * self.keep
            self.plan += [(c, True) for c in self.choices for _ in range(self.probe + 1)]
        nxt, self.probing = self.plan.pop(0)
        self._skip = nxt != self.current  # the first step after a switch is not representative
        self.current = nxt
        torch.set_num_threads(nxt)
        return nxt

    def after_step(self, dt: float):
        if not self.probing or self._skip:
            return
        self.times[self.current].append(dt)
        if self.ref is not None and dt > 2 * self.ref:  # clearly worse: cut this probe short
            while self.plan and self.plan[0] == (self.current, True):
                self.plan.pop(0)
