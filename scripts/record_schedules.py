"""Record DDiT schedules on flux-mini (adapters, dynamic rule) for the GPU benchmark to replay.

    python scripts/record_schedules.py --tau 0.003 --n 8 --out scripts/flux_mini_schedules.json
"""
import argparse
import json

import torch

from ddit_export.api import build_settings
from ddit_export.models.registry import load_model
from ddit_export.runtime.backends.torch import TorchBackend
from ddit_export.runtime.generate import generate
from ddit_export.zoo.scenes import make_batch

ap = argparse.ArgumentParser()
ap.add_argument("--tau", type=float, default=None)
ap.add_argument("--n", type=int, default=8)
ap.add_argument("--out", default="scripts/flux_mini_schedules.json")
a = ap.parse_args()
torch.set_num_threads(1)
model = load_model("flux-mini")
_, captions, _ = make_batch(1234, a.n, "heldout")
schedules = []
with TorchBackend(model.transformer) as backend:
    for i, caption in enumerate(captions):
        r = generate(model, backend, build_settings(model, prompts=[caption], seed=i, tau=a.tau,
                                                          policy="ddit"), progress=False)
        schedules.append(r.trace.sizes)
tau = a.tau if a.tau is not None else model.schedule_defaults.tau
json.dump({"source": f"flux-mini with its adapters, DDiT rule tau={tau}, {a.n} held-out captions, 28 steps "
                     f"(scripts/record_schedules.py)", "schedules": schedules}, open(a.out, "w"), indent=1)
print(json.dumps(schedules))
print("coarse fraction", sum(k > 1 for s in schedules for k in s) / sum(len(s) for s in schedules))
