"""Does a video model read each word of its caption? (issue 23: wan-mini's motion adherence.)

    python scripts/wan_word_sensitivity.py --model ddit_export/zoo/weights/wan-mini \
        --json docs/results/wan-mini-word-sensitivity.json

For a base caption and variants that change one word (the motion, the colour, the shape), at several noise
levels: the relative change of the text encoder's states, and of the trunk's velocity on the same noisy clip (the
base caption's rendered clip plus noise). A word the encoder tells apart (states differ) but the velocity ignores
is one the trunk has not learned to use.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BASE = "a large red circle moving right on a black background"
VARIANTS = {"motion: left": "a large red circle moving left on a black background",
            "motion: up": "a large red circle moving up on a black background",
            "motion: down": "a large red circle moving down on a black background",
            "colour: yellow": "a large yellow circle moving right on a black background",
            "shape: square": "a large red square moving right on a black background"}


def sensitivity(folder, sigmas=(0.9, 0.5, 0.2), seed: int = 1) -> dict:
    from ddit_export.zoo import clips as C
    from ddit_export.zoo.wan_mini import load_exported

    model, _ = load_exported(folder)
    caps = [BASE, *VARIANTS.values()]
    ids, mask = model.text.tokenize(caps)
    with torch.no_grad():
        states = model.text(ids, mask)
        states = states[0] if isinstance(states, (tuple, list)) else states
    rel = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731
    out = {"base": BASE, "text_states": {k: round(rel(states[i + 1], states[0]), 4) for i, k in enumerate(VARIANTS)},
           "velocity": {}}
    x0 = torch.tensor(C.render(C.parse_caption(BASE)))[None].float().permute(0, 2, 1, 3, 4)  # (1, 3, F, H, W)
    for sig in sigmas:
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
        x = ((1 - sig) * x0 + sig * noise).expand(len(caps), *x0.shape[1:])
        with torch.no_grad():
            v = model.velocity(x, torch.full((len(caps),), sig), caps)
        out["velocity"][str(sig)] = {k: round(rel(v[i + 1], v[0]), 4) for i, k in enumerate(VARIANTS)}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", action="append", required=True, help="an exported wan-mini folder (repeatable)")
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    res = {m: sensitivity(m) for m in a.model}
    for m, r in res.items():
        print(m)
        print("  text states: " + ", ".join(f"{k} {v:.3f}" for k, v in r["text_states"].items()))
        for sig, row in r["velocity"].items():
            print(f"  velocity at sigma {sig}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()))
    if a.json:
        a.json.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
