"""Train the scene probe (:mod:`.detector`) on rendered scenes and write its committed weights.

``python -m ddit_export.quality.train_probe --steps 3000 --threads 1``  (a few CPU minutes)

Data: ``--n-train`` scenes rendered once (half ``split="train"``, half ``split="heldout"``, so every
(colour, shape, position) triple is seen; ~5% with their shapes removed, so "empty" is learned on every
background), stored as uint8 like a saved PNG. Each batch is augmented the way a generator's output differs from
a clean render: a ±1 px shift, Gaussian noise, a light blur, a small brightness/contrast jitter. Validation is on
fresh held-out scenes (a different seed), clean and augmented.
"""
from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from ..zoo import scenes as S
from .detector import WEIGHTS_DIR, SceneProbe, save_probe, scene_targets

EMPTY_P = 0.05


def make_data(seed: int, n: int, empty_p: float = EMPTY_P):
    """(uint8 images (n, 3, 32, 32), targets) from both splits, some scenes emptied."""
    rng = np.random.default_rng(seed)
    half = n // 2
    _, _, sc = S.make_batch(rng, half, "train")
    _, _, sc2 = S.make_batch(rng, n - half, "heldout")
    scenes_ = sc + sc2
    empty = rng.random(n) < empty_p
    scenes_ = [S.Scene((), s.background) if e else s for s, e in zip(scenes_, empty)]
    imgs = np.stack([S.render(s) for s in scenes_])
    return to_uint8(imgs), scene_targets(scenes_)


def to_uint8(x: np.ndarray) -> np.ndarray:
    return ((np.clip(x, -1, 1) + 1) * 127.5).round().astype(np.uint8)


def from_uint8(x) -> torch.Tensor:
    return torch.as_tensor(x).float() / 127.5 - 1.0


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    b = x.shape[0]
    # ±1 px shift (replicate padding), per sample
    pad = F.pad(x, (1, 1, 1, 1), mode="replicate")
    oy = torch.randint(0, 3, (b,), generator=g)
    ox = torch.randint(0, 3, (b,), generator=g)
    keep = torch.rand(b, generator=g) < 0.5
    oy[keep], ox[keep] = 1, 1
    idx_y = (oy[:, None] + torch.arange(32)[None])  # (b, 32)
    idx_x = (ox[:, None] + torch.arange(32)[None])
    x = pad[torch.arange(b)[:, None, None, None], torch.arange(3)[None, :, None, None],
            idx_y[:, None, :, None], idx_x[:, None, None, :]]
    # light blur
    k = torch.tensor([1.0, 2.0, 1.0])
    k = (k[:, None] * k[None]) / 16
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k.expand(3, 1, 3, 3), groups=3)
    blur = (torch.rand(b, 1, 1, 1, generator=g) < 0.25).float()
    x = blur * blurred + (1 - blur) * x
    # contrast / brightness jitter
    c = 1 + (torch.rand(b, 1, 1, 1, generator=g) - 0.5) * 0.1
    o = (torch.rand(b, 3, 1, 1, generator=g) - 0.5) * 0.1
    x = x * c + o
    # Gaussian noise
    sigma = torch.rand(b, 1, 1, 1, generator=g) * 0.1 * (torch.rand(b, 1, 1, 1, generator=g) < 0.5)
    x = x + sigma * torch.randn(x.shape, generator=g)
    return x.clamp(-1, 1)


def loss_fn(logits: dict, t: dict) -> torch.Tensor:
    loss = F.cross_entropy(logits["shape"].reshape(-1, 4), t["shape"].reshape(-1))
    for k in ("colour", "size"):
        lg = logits[k].reshape(-1, logits[k].shape[-1])
        tgt = t[k].reshape(-1)
        m = tgt >= 0
        if m.any():
            loss = loss + F.cross_entropy(lg[m], tgt[m])
    return loss + 0.5 * F.cross_entropy(logits["background"], t["background"])


@torch.no_grad()
def accuracy(net: SceneProbe, x: torch.Tensor, t: dict) -> dict:
    """Object accuracy (shape+colour+position right), per-attribute accuracies, empty-cell accuracy."""
    net.eval()
    _, lg = net(x)
    net.train()
    p = {k: v.argmax(-1) for k, v in lg.items()}
    occ = t["shape"] > 0
    shape_ok = (p["shape"] == t["shape"])
    colour_ok = (p["colour"] == t["colour"])
    return {"object": float((shape_ok & colour_ok)[occ].float().mean()),
            "shape": float(shape_ok[occ].float().mean()), "colour": float(colour_ok[occ].float().mean()),
            "size": float((p["size"] == t["size"])[occ].float().mean()),
            "empty": float(shape_ok[~occ].float().mean()),
            "background": float((p["background"] == t["background"]).float().mean())}


def train(steps=3000, batch=128, lr=2e-3, n_train=40000, seed=0, threads=1, out=WEIGHTS_DIR, log=print, init=None):
    """Train (or, from the probe in folder ``init``, fine-tune) the probe; save it to ``out``; (net, info)."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    t0 = time.time()
    xs, ts = make_data(seed, n_train)
    val_x, val_t = make_data(10_000 + seed, 2000, empty_p=0.0)
    _, _, held = S.make_batch(20_000 + seed, 2000, "heldout")
    held_x, held_t = from_uint8(to_uint8(np.stack([s.render() for s in held]))), scene_targets(held)
    log(f"data: {n_train} scenes in {time.time() - t0:.0f}s")
    ts = {k: torch.as_tensor(v) for k, v in ts.items()}
    val_t = {k: torch.as_tensor(v) for k, v in val_t.items()}
    held_t = {k: torch.as_tensor(v) for k, v in held_t.items()}
    net = SceneProbe()
    if init:
        from .detector import load_probe

        net.load_state_dict(load_probe(init).net.state_dict())
        warm = 0
    else:
        warm = 100
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        f = step / warm if step < warm else 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))
        for grp in opt.param_groups:
            grp["lr"] = lr * max(f, 0.01)
        idx = torch.randint(0, n_train, (batch,), generator=g)
        x = augment(from_uint8(xs[idx.numpy()]), g)
        _, lg = net(x)
        loss = loss_fn(lg, {k: v[idx] for k, v in ts.items()})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 250 == 0 or step == steps - 1:
            acc = accuracy(net, held_x, held_t)
            log(f"step {step} loss {loss.item():.4f} held-out {json.dumps({k: round(v, 4) for k, v in acc.items()})} "
                f"{time.time() - t0:.0f}s")
    clean = accuracy(net, held_x, held_t)
    aug = accuracy(net, augment(from_uint8(val_x), torch.Generator().manual_seed(1)), val_t)
    info = {"train": {"steps": steps, "batch": batch, "lr": lr, "n_train": n_train, "seed": seed, "init": init,
                      "seconds": round(time.time() - t0)},
            "heldout_clean": clean, "val_augmented": aug}
    log(f"held-out clean {clean}\nvalidation augmented {aug}")
    if out:
        save_probe(net, out, info)
        log(f"wrote {out}")
    return net, info


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--n-train", type=int, default=40000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(WEIGHTS_DIR))
    ap.add_argument("--init", help="Fine-tune the probe saved in this folder instead of starting from scratch.")
    a = ap.parse_args(argv)
    train(a.steps, a.batch, a.lr, a.n_train, a.seed, a.threads, a.out, init=a.init)


if __name__ == "__main__":
    main()
