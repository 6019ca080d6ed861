"""A whole generation from a bundle, written from engines/README.md ("Generate from a bundle") alone.

Run as a script by tests/runtime/test_onnxruntime.py with ddit_export, torch and diffusers blocked from import:
    python outsider_generate.py BUNDLE NOISE.npy OUT.npy STEPS PROMPT...
NOISE.npy holds the unpacked initial noise (B, C, h_l, w_l); OUT.npy gets the (B, H, W, 3) uint8 images and the
sizes taken go to stdout as JSON.
"""
import hashlib
import importlib.abc
import json
import math
import re
import sys


class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("ddit_export", "torch", "diffusers"):
            raise ImportError(f"{name} must not be needed")


sys.meta_path.insert(0, Block())

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402


def main(folder, noise_file, out_file, steps, prompts):
    m = json.load(open(f"{folder}/manifest.json"))
    # 1. check
    assert m["format"] == "ddit-bundle" and m["format_version"] <= 1
    for rel, digest in m["files"].items():
        assert hashlib.sha256(open(f"{folder}/{rel}", "rb").read()).hexdigest() == digest, rel
    dt = {"fp32": np.float32, "fp16": np.float16}[m["dtype"]]
    # 2. geometry
    mm = m["model"]
    H, W, C, vs = mm["height"], mm["width"], mm["latent_channels"], mm["vae_scale"]
    hl, wl = H // vs, W // vs
    h, w = hl // 2, wl // 2
    N = h * w
    sizes = sorted(v["size"] for v in m["variants"] if h % v["size"] == 0 and w % v["size"] == 0)
    sess = {v["size"]: ort.InferenceSession(f"{folder}/{v['file']}", providers=["CPUExecutionProvider"])
            for v in m["variants"] if v["size"] in sizes}
    # 3. tokenise + text encoder
    te = m["text_encoder"]
    B = len(prompts)
    ids = np.zeros((B, te["max_length"]), np.int64)
    for b, p in enumerate(prompts):
        words = re.findall("[a-z]+", p.lower())
        ids[b, :len(words)] = [te["vocab"].index(x) + 1 for x in words]
    mask = ids != 0
    text = ort.InferenceSession(f"{folder}/{te['file']}", providers=["CPUExecutionProvider"])
    states, pooled = text.run(["states", "pooled"], {"input_ids": ids, "attention_mask": mask})
    L = states.shape[1]
    txt_ids = np.zeros((L, 3), np.float32)
    # 4.-5. noise (stored by the test: torch's generator is not reproducible without torch), packed
    z = np.load(noise_file).astype(np.float32)
    x = z.reshape(B, C, h, 2, w, 2).transpose(0, 2, 4, 1, 3, 5).reshape(B, N, 4 * C)
    img_ids = np.zeros((h, w, 3), np.float32)
    img_ids[..., 1] = np.arange(h)[:, None]
    img_ids[..., 2] = np.arange(w)[None, :]
    img_ids = img_ids.reshape(N, 3)
    # 6. sigmas
    sc = mm["scheduler_config"]
    n = steps or mm["default_steps"]
    s = np.linspace(1.0, 1 / n, n).astype(np.float32)
    if sc["use_dynamic_shifting"]:
        a = (sc["max_shift"] - sc["base_shift"]) / (sc["max_image_seq_len"] - sc["base_image_seq_len"])
        mu = N * a + (sc["base_shift"] - a * sc["base_image_seq_len"])
        s = math.exp(mu) / (math.exp(mu) + (1 / s - 1))
    else:
        s = sc["shift"] * s / (1 + (sc["shift"] - 1) * s)
    s = s.astype(np.float32)
    t = s * np.float32(1000)
    sigma = np.concatenate([s, np.zeros(1, np.float32)])
    # 7. loop
    sch = m["schedule"]
    hist, taken = [], []
    for i in range(n):
        hist.append(x.copy())
        if i < sch["warmup"]:
            k = 1
        elif sch["window"] == "same-size" and len(set(taken[-3:])) > 1:
            k = taken[-1]
        else:
            z3, z2, z1, z0 = (np.asarray(q, np.float64) for q in hist[-4:][::-1])
            d = z3 - 3 * z2 + 3 * z1 - z0
            k = 1
            for kk in sizes:
                if kk == 1:
                    continue
                blocks = d.reshape(B, h // kk, kk, w // kk, kk, 4 * C).transpose(0, 1, 3, 2, 4, 5)
                stds = blocks.reshape(B, -1, kk * kk * 4 * C).std(-1)
                sig = np.percentile(stds, sch["eps"] * 100, axis=-1).max()
                if sig < sch["tau"]:
                    k = max(k, kk)
        taken.append(k)
        feeds = {"hidden_states": x, "encoder_hidden_states": states, "pooled_projections": pooled,
                 "timestep": np.full((B,), np.float32(t[i]) / np.float32(1000), np.float32),
                 "img_ids": img_ids, "txt_ids": txt_ids}
        if mm["guidance_embeds"]:
            feeds["guidance"] = np.full((B,), 3.5, np.float32)
        feeds = {key: val.astype(dt) for key, val in feeds.items()}
        v = sess[k].run(["velocity"], feeds)[0].astype(np.float32)
        x = x + (sigma[i + 1] - sigma[i]) * v
    # 8. decode
    img = x.reshape(B, h, w, C, 2, 2).transpose(0, 3, 1, 4, 2, 5).reshape(B, C, H, W)
    pixels = np.round((np.clip(img, -1, 1) + 1) * 127.5).astype(np.uint8).transpose(0, 2, 3, 1)
    np.save(out_file, pixels)
    print(json.dumps({"sizes": taken}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5:])
