"""Clip metrics for the video models: per-frame PSNR/SSIM against a reference clip, temporal consistency, and the
Fréchet distance of frames (the scene probe's features, as the image evaluation uses).

Clips are (F, 3, H, W) float arrays in [-1, 1] (``clip_array`` converts lists of PIL frames).
"""
from __future__ import annotations

import numpy as np

from .metrics import psnr, ssim


def clip_array(clip) -> np.ndarray:
    """(F, 3, H, W) float32 in [-1, 1] from a list of PIL frames, a (F, H, W, 3) uint8 array or such an array."""
    if isinstance(clip, (list, tuple)):
        clip = np.stack([np.asarray(f.convert("RGB") if hasattr(f, "convert") else f) for f in clip])
    a = np.asarray(clip)
    if a.ndim == 4 and a.shape[-1] == 3 and a.shape[1] != 3:
        a = a.transpose(0, 3, 1, 2)
        return (a.astype(np.float32) / 127.5 - 1.0) if a.dtype == np.uint8 or a.max() > 1.5 else a.astype(np.float32)
    return a.astype(np.float32)


def frame_psnr(clip, ref) -> np.ndarray:
    """(F,) PSNR in dB of each frame against the reference's."""
    return psnr(clip_array(clip), clip_array(ref))


def frame_ssim(clip, ref) -> np.ndarray:
    return ssim(clip_array(clip), clip_array(ref))


def frame_change(clip) -> np.ndarray:
    """(F-1,) mean absolute change between consecutive frames, on [0, 1] pixels."""
    x = (clip_array(clip).astype(np.float64) + 1) / 2
    return np.abs(np.diff(x, axis=0)).reshape(len(x) - 1, -1).mean(1)


def temporal_consistency(clip, ref) -> dict:
    """How the clip moves compared with the reference clip: the mean frame-to-frame change of each, their ratio
    (1 = as much motion as the reference; > 1 = flicker or extra motion), and the mean absolute difference of the
    frame-difference signals themselves (0 = the same motion pixel for pixel; a flickering clip scores worse than a
    smooth one with the same frames on average)."""
    x = (clip_array(clip).astype(np.float64) + 1) / 2
    y = (clip_array(ref).astype(np.float64) + 1) / 2
    dx, dy = np.diff(x, axis=0), np.diff(y, axis=0)
    change, ref_change = float(np.abs(dx).mean()), float(np.abs(dy).mean())
    return {"change": change, "ref_change": ref_change, "change_ratio": change / max(ref_change, 1e-12),
            "diff_error": float(np.abs(dx - dy).mean())}


def frame_features(clips, detector=None) -> np.ndarray:
    """Scene-probe features of every frame of every clip: (sum of F, D)."""
    from .detector import load_probe

    det = detector or load_probe()
    frames = np.concatenate([clip_array(c) for c in clips])
    return det.features(frames)


def frechet_frames(clips, reference_clips, detector=None) -> float:
    """Fréchet distance between the frames of ``clips`` and those of ``reference_clips`` (probe features)."""
    from .metrics import frechet_distance

    return frechet_distance(frame_features(clips, detector), frame_features(reference_clips, detector))
