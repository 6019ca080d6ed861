"""Quality metrics for generated video clips, built on the image metrics of :mod:`.metrics`.

- Fidelity to a reference clip (the fine-only clip for the same seed and prompt): per-frame PSNR and SSIM and their
  clip means (:func:`clip_fidelity`).
- Temporal consistency (:func:`temporal_consistency`): the mean absolute frame-to-frame change of the clip and of
  the reference, their ratio, and the mean absolute difference of the two frame-difference signals. Per-frame
  metrics cannot see flicker (a clip whose error changes sign every frame scores like one whose error stays put);
  the frame-difference error can.
- Distribution distance (:func:`frechet_frames`): the Fréchet distance of probe features over every frame of two
  sets of clips.

A clip is a list of PIL frames, an (F, H, W, 3) uint8 array, or an (F, 3, H, W) float array/tensor in [-1, 1].
"""
from __future__ import annotations

import numpy as np

from .metrics import frechet_distance, psnr, ssim, to_unit


def as_clip(clip) -> np.ndarray:
    """A clip in any accepted form -> (F, 3, H, W) float64 in [-1, 1]."""
    if isinstance(clip, (list, tuple)):
        if not clip:
            raise ValueError("a clip needs at least one frame")
        if hasattr(clip[0], "convert"):  # PIL frames
            clip = np.stack([np.asarray(im.convert("RGB")) for im in clip])
        else:
            clip = np.stack([np.asarray(f) for f in clip])
    x = clip.detach().float().cpu().numpy() if hasattr(clip, "detach") else np.asarray(clip)
    if x.dtype == np.uint8:
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"uint8 clips must be (F, H, W, 3), got {x.shape}")
        return x.transpose(0, 3, 1, 2).astype(np.float64) / 127.5 - 1.0
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"float clips must be (F, 3, H, W) in [-1, 1], got {x.shape}")
    return x.astype(np.float64)


def _pair(clip, ref) -> tuple[np.ndarray, np.ndarray]:
    x, r = as_clip(clip), as_clip(ref)
    if x.shape != r.shape:
        raise ValueError(f"clip and reference differ in shape: {x.shape} vs {r.shape}")
    return x, r


def clip_fidelity(clip, ref) -> dict:
    """Per-frame PSNR (dB) and SSIM of ``clip`` against ``ref`` (lists over frames) and their means."""
    x, r = _pair(clip, ref)
    p, s = psnr(x, r), ssim(x, r)
    return {"psnr": p.tolist(), "ssim": s.tolist(), "psnr_mean": float(p.mean()), "ssim_mean": float(s.mean())}


def frame_change(clip) -> np.ndarray:
    """Frame-to-frame differences of a clip on [0, 1]: (F - 1, 3, H, W)."""
    x = to_unit(as_clip(clip))
    return x[1:] - x[:-1]


def temporal_consistency(clip, ref) -> dict:
    """``motion`` / ``ref_motion``: mean |frame-to-frame change| (on [0, 1]) of the clip / the reference;
    ``motion_ratio`` = motion / ref_motion (1 = as much change as the reference; > 1 flicker or jitter, < 1 a
    frozen clip; 1.0 when neither moves, inf when only the clip moves); ``flicker`` = mean |Δclip − Δref|,
    the error of the frame-difference signal (0 = the clip changes exactly as the reference does)."""
    x, r = _pair(clip, ref)
    if len(x) < 2:
        raise ValueError(f"temporal consistency needs at least 2 frames, got {len(x)}")
    dx, dr = frame_change(x), frame_change(r)
    motion, ref_motion = float(np.abs(dx).mean()), float(np.abs(dr).mean())
    if ref_motion > 0:
        ratio = motion / ref_motion
    else:
        ratio = 1.0 if motion == 0 else float("inf")
    return {"motion": motion, "ref_motion": ref_motion, "motion_ratio": ratio,
            "flicker": float(np.abs(dx - dr).mean())}


def compare_clips(clip, ref) -> dict:
    """:func:`clip_fidelity` and :func:`temporal_consistency` of one clip against its reference, in one dict."""
    out = clip_fidelity(clip, ref)
    if len(out["psnr"]) >= 2:
        out.update(temporal_consistency(clip, ref))
    return out


def mean_scores(scores: list[dict]) -> dict:
    """Means over clips of the scalar entries of :func:`compare_clips` results."""
    if not scores:
        return {}
    keys = [k for k, v in scores[0].items() if isinstance(v, (int, float))]
    return {k: float(np.mean([s[k] for s in scores])) for k in keys}


def frame_features(clips, features=None) -> np.ndarray:
    """Features of every frame of every clip, stacked: (sum of F, D). ``features``: a callable (N, 3, H, W) in
    [-1, 1] -> (N, D); default the scene probe's (:func:`.detector.load_probe`), as for images."""
    if features is None:
        from .detector import load_probe

        features = load_probe().features
    frames = [as_clip(c) for c in clips]
    if not frames:
        raise ValueError("no clips")
    return np.asarray(features(np.concatenate(frames)), np.float64)


def frechet_frames(clips_a, clips_b, features=None) -> float:
    """Fréchet distance between the per-frame features of two sets of clips (every frame counts as one sample)."""
    return frechet_distance(frame_features(clips_a, features), frame_features(clips_b, features))
