"""Quality metrics for generated video clips, built on the image metrics of :mod:`.metrics`.

- Fidelity to a reference clip (the fine-only clip for the same seed and prompt): :func:`frame_psnr`,
  :func:`frame_ssim` per frame, :func:`clip_fidelity` with their clip means.
- Temporal consistency (:func:`temporal_consistency`): the mean absolute frame-to-frame change of the clip and of
  the reference, their ratio, and the mean absolute difference of the two frame-difference signals. Per-frame
  metrics cannot see flicker (a clip whose error changes sign every frame scores like one whose error stays put);
  the frame-difference error can.
- Distribution distance (:func:`frechet_frames`): the Fréchet distance of scene-probe features over every frame of
  two sets of clips (every frame one sample), as the image evaluation measures images.

A clip is a list of PIL frames, an (F, H, W, 3) uint8 array, or an (F, 3, H, W) float array/tensor in [-1, 1].
"""
from __future__ import annotations

import numpy as np

from .metrics import frechet_distance, psnr, ssim, to_unit


def clip_array(clip) -> np.ndarray:
    """A clip in any accepted form -> (F, 3, H, W) float32 in [-1, 1]."""
    if isinstance(clip, (list, tuple)):
        if not clip:
            raise ValueError("a clip needs at least one frame")
        clip = np.stack([np.asarray(f.convert("RGB") if hasattr(f, "convert") else f) for f in clip])
    x = clip.detach().float().cpu().numpy() if hasattr(clip, "detach") else np.asarray(clip)
    if x.dtype == np.uint8:
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"uint8 clips must be (F, H, W, 3), got {x.shape}")
        return x.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"float clips must be (F, 3, H, W) in [-1, 1], got {x.shape}")
    return x.astype(np.float32)


def _pair(clip, ref) -> tuple[np.ndarray, np.ndarray]:
    x, r = clip_array(clip), clip_array(ref)
    if x.shape != r.shape:
        raise ValueError(f"clip and reference differ in shape: {x.shape} vs {r.shape}")
    return x, r


def frame_psnr(clip, ref) -> np.ndarray:
    """(F,) PSNR in dB of each frame against the reference's (metrics.psnr; identical frames give 100)."""
    return psnr(*_pair(clip, ref))


def frame_ssim(clip, ref) -> np.ndarray:
    """(F,) SSIM of each frame against the reference's (metrics.ssim)."""
    return ssim(*_pair(clip, ref))


def clip_fidelity(clip, ref) -> dict:
    """Per-frame PSNR (dB) and SSIM (lists over frames) and their clip means."""
    p, s = frame_psnr(clip, ref), frame_ssim(clip, ref)
    return {"psnr": p.tolist(), "ssim": s.tolist(), "psnr_mean": float(p.mean()), "ssim_mean": float(s.mean())}


def _diffs(x: np.ndarray) -> np.ndarray:
    """Frame-to-frame differences of a [-1, 1] clip on [0, 1] pixels: (F - 1, 3, H, W)."""
    u = to_unit(x)
    return u[1:] - u[:-1]


def frame_change(clip) -> np.ndarray:
    """(F - 1,) mean absolute change between consecutive frames, on [0, 1] pixels."""
    d = _diffs(clip_array(clip))
    return np.abs(d).reshape(len(d), -1).mean(axis=1)


def temporal_consistency(clip, ref) -> dict:
    """``change`` / ``ref_change``: mean |frame-to-frame change| (on [0, 1]) of the clip / the reference;
    ``change_ratio`` = change / ref_change (1 = as much change as the reference, > 1 flicker or extra motion, < 1 a
    frozen clip; 1.0 when neither changes, inf when only the clip does); ``diff_error`` = mean |Δclip − Δref|, the
    error of the frame-difference signal (0 = the clip changes exactly as the reference does, pixel for pixel)."""
    x, r = _pair(clip, ref)
    if len(x) < 2:
        raise ValueError(f"temporal consistency needs at least 2 frames, got {len(x)}")
    dx, dr = _diffs(x), _diffs(r)
    change, ref_change = float(np.abs(dx).mean()), float(np.abs(dr).mean())
    if ref_change > 0:
        ratio = change / ref_change
    else:
        ratio = 1.0 if change == 0 else float("inf")
    return {"change": change, "ref_change": ref_change, "change_ratio": ratio,
            "diff_error": float(np.abs(dx - dr).mean())}


def compare_clips(clip, ref) -> dict:
    """:func:`clip_fidelity` and (two frames or more) :func:`temporal_consistency` of a clip vs its reference."""
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


def frame_features(clips, detector=None) -> np.ndarray:
    """Features of every frame of every clip, stacked: (sum of F, D). ``detector``: the scene probe by default
    (:func:`.detector.load_probe`, as for images), another object with ``features(images)``, or a callable
    (N, 3, H, W) in [-1, 1] -> (N, D)."""
    if detector is None:
        from .detector import load_probe

        detector = load_probe()
    features = detector.features if hasattr(detector, "features") else detector
    frames = [clip_array(c) for c in clips]
    if not frames:
        raise ValueError("no clips")
    return np.asarray(features(np.concatenate(frames)), np.float64)


def frechet_frames(clips, reference_clips, detector=None) -> float:
    """Fréchet distance between the per-frame features of two sets of clips (every frame counts as one sample)."""
    return frechet_distance(frame_features(clips, detector), frame_features(reference_clips, detector))
