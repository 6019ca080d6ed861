"""Does a model put a shape where its caption says? (issue 23: why wan-mini's motion is hard to learn.)

    python scripts/position_words.py --video ddit_export/zoo/weights/wan-mini --image flux-mini \
        --n 16 --json docs/results/position-words.json

For one still shape ("a large red circle at the POSITION on a BACKGROUND background") at each of the four corners,
``--n`` samples a caption with the same seeds for every corner, fine-only: where the shape lands (the named 3x3 cell
of its bounding box, quality/motion.py's ``observe``), the fraction that lands in the named cell (chance: about
1/9), and the fraction of seeds whose cell does not change at all when the corner word changes (1.0: the word has
no effect). Video models are read at their last frame (``observe``'s position).

Why it can differ by architecture: a FLUX-architecture model sees its text tokens in the joint attention at RoPE
position 0, an anchor that makes every image token's absolute position visible. Wan's text enters by cross-attention
without positions, and wan-mini works on pixels (no VAE whose zero-padded convolutions mark the frame's edges): RoPE
is relative, so the only cue of where a token sits is the grid's edge, seen through which relative offsets exist,
which a flat background hides from its own tokens and leaves faint for a shape's.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CORNERS = ("top left", "top right", "bottom left", "bottom right")


def caption(pos: str, background: str) -> str:
    return f"a large red circle at the {pos} on a {background} background"


def video_cells(folder, captions, seed: int) -> list[list[str | None]]:
    """Per caption, the cell of each of its samples (same noise for every caption)."""
    from ddit_export.quality import motion as M
    from ddit_export.zoo.wan_mini import load_exported, sample

    model, cfg = load_exported(folder)
    out = []
    for cap, n in captions:
        clips = sample(model, cfg, [cap] * n, steps=cfg.steps, seed=seed).transpose(0, 2, 1, 3, 4)
        out.append([M.observe(c)["position"] for c in clips])
    return out


def image_cells(model: str, captions, seed: int) -> list[list[str | None]]:
    from ddit_export.api import generate_images
    from ddit_export.quality import motion as M

    out = []
    for cap, n in captions:
        res, _ = generate_images(model=model, prompts=[cap] * n, policy="fine", progress=False, seed=seed)
        out.append([M.observe(np.asarray(im)[None])["position"] for im in res.images])
    return out


def summarise(cells: list[list[str | None]], positions) -> dict:
    n = len(cells[0])
    hits = {p: sum(c == p for c in row) / n for p, row in zip(positions, cells)}
    unchanged = sum(len({row[i] for row in cells}) == 1 for i in range(n)) / n
    return {"in_named_cell": hits, "mean_in_named_cell": float(np.mean(list(hits.values()))),
            "unchanged_across_words": unchanged, "cells": dict(zip(positions, cells))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--video", action="append", default=[], help="a pixel video model folder (wan-mini); repeatable")
    p.add_argument("--image", action="append", default=[], help="an image model name or folder (flux-mini)")
    p.add_argument("--backgrounds", default="black,gradient")
    p.add_argument("--n", type=int, default=16, help="samples per caption")
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    if not a.video and not a.image:
        p.error("give --video FOLDER and/or --image MODEL")
    torch.set_num_threads(a.threads)
    rows = []
    for kind, models, fn in (("video", a.video, video_cells), ("image", a.image, image_cells)):
        for m in models:
            for bg in a.backgrounds.split(","):
                cells = fn(m, [(caption(pos, bg), a.n) for pos in CORNERS], a.seed)
                r = {"model": str(m), "kind": kind, "background": bg, **summarise(cells, CORNERS)}
                rows.append(r)
                print(f"{kind:5s} {m} on {bg}: in the named corner {r['mean_in_named_cell']:.0%}, "
                      f"cell unchanged by the corner word in {r['unchanged_across_words']:.0%} of seeds", flush=True)
    if a.json:
        a.json.write_text(json.dumps({"command": "python scripts/position_words.py " + " ".join(argv or sys.argv[1:]),
                                      "n": a.n, "seed": a.seed, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
