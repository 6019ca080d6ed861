"""``ddit-export calibrate`` for a video model (wan-mini, a Wan 2.1 folder, a video bundle): the image sweep of
quality/calibrate.py (same work folder, resume, choice rule and profile) on clip captions, scored as ``evaluate``
scores clips (quality/evaluate_video.py): PSNR and SSIM of every frame against the fine-only clip of the same
caption and noise (means over frames and clips, and the mean of each clip's worst frame), temporal consistency
(frame-change ratio and frame-difference error vs fine-only, quality/video.py) and adherence read by the motion probe
(quality/motion.py: colour present, motion right, both; ``both`` is the adherence the quality bar reads).

The calibration split (:func:`calibration_clips`, written to ``ddit_export/calibration/prompts-wan-mini.txt``): clip
captions of the held-out split drawn with :data:`CALIBRATION_SEED`, each probe-readable on its rendered truth, none
among the first :data:`EVAL_EXCLUDE` captions ``evaluate`` draws for a video model (prompt seed 2026).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .policies import PolicyRunner

CALIBRATION_SEED = 7
EVAL_EXCLUDE = 256  # the calibration split avoids the first this many held-out evaluation captions
MAX_WORDS = 24  # wan-mini's text encoder reads at most 24 words


def default_clip_prompts_path() -> Path:
    """The clip captions ``calibrate`` reads for a video model without ``--prompts`` (package data)."""
    return Path(__file__).resolve().parents[1] / "calibration" / "prompts-wan-mini.txt"


def evaluation_clips(n: int = EVAL_EXCLUDE, max_words: int | None = None) -> list:
    """The first ``n`` held-out clips ``evaluate`` scores on a video model (its prompt seed, 8 frames of 32 x 32)."""
    from ..settings import EvalSettings
    from .evaluate_video import eval_clips

    return eval_clips(n, "heldout", EvalSettings().prompt_seed, max_words)


def evaluation_captions(n: int = EVAL_EXCLUDE, max_words: int | None = None) -> list[str]:
    """The captions of :func:`evaluation_clips`."""
    return [c.caption for c in evaluation_clips(n, max_words)]


def two_shape_share(clips) -> float:
    """The share of ``clips`` that name two shapes."""
    return sum(len(c.shapes) == 2 for c in clips) / max(len(clips), 1)


def calibration_clips(n: int = 24, *, exclude_n: int = EVAL_EXCLUDE, max_words: int = MAX_WORDS,
                      seed: int = CALIBRATION_SEED, mixed: bool = False) -> list:
    """``n`` distinct held-out-split clips (seed ``seed``) whose caption fits ``max_words`` and whose rendered truth
    the motion probe reads right, none of them among the first ``exclude_n`` evaluation captions (drawn with and
    without the word limit, so the exclusion holds for any text encoder).

    Excluding the evaluation's captions and repeats removes mostly one-shape captions (there are fewer of them to
    draw, so they repeat), which leaves the plain draw with about twice the evaluation's share of two-shape captions.
    ``mixed``: take one- and two-shape captions in the proportion of the first ``exclude_n`` evaluation clips
    (within ``max_words``; :func:`two_shape_share`, rounded to whole captions), in draw order within each."""
    from .evaluate_video import eval_clips

    limited = evaluation_clips(exclude_n, max_words)
    held = set(evaluation_captions(exclude_n)) | {c.caption for c in limited}
    room = None
    if mixed:
        two = round(n * two_shape_share(limited))
        room = {1: n - two, 2: two}
    out, seen = [], set()
    for c in eval_clips(8 * n + 2 * exclude_n, "heldout", seed, max_words):
        if c.caption in held or c.caption in seen:
            continue
        if room is not None:
            if room.get(len(c.shapes), 0) == 0:
                continue
            room[len(c.shapes)] -= 1
        seen.add(c.caption)
        out.append(c)
        if len(out) == n:
            return out
    raise ConfigError(f"could not draw {n} calibration clips")


def write_calibration_file(path: Path | None = None, n: int = 24, mixed: bool = False) -> Path:
    """(Re)write the shipped calibration split: a comment header, then one caption a line (``mixed``: see
    :func:`calibration_clips`)."""
    path = Path(path or default_clip_prompts_path())
    lines = [f"# {n} wan-mini calibration captions: held-out split, seed {CALIBRATION_SEED}, probe-readable, none "
             f"among the first {EVAL_EXCLUDE} evaluation captions"
             + (", one- and two-shape captions in the evaluation's proportion" if mixed else ""),
             "# made by ddit_export.quality.calibrate_video.write_calibration_file()"
             + (f" with n={n}, mixed=True" if mixed else "")]
    path.write_text("\n".join(lines + [c.caption for c in calibration_clips(n, mixed=mixed)]) + "\n")
    return path


def read_clip_prompts(path: str | Path) -> list:
    """A calibration file of clip captions (one a line; ``#`` comments and blank lines skipped) -> zoo.clips.Clip
    records; a line that is not a clip caption is one error naming it (a scene-caption file for a video model)."""
    from ..zoo.clips import parse_caption

    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise ConfigError(f"cannot read prompts {path}: {e}") from None
    out = []
    for t in (ln.strip() for ln in lines):
        if not t or t.startswith("#"):
            continue
        try:
            out.append(parse_caption(t))
        except ValueError as e:
            raise ConfigError(f"{path}: {e} (a video model calibrates on clip captions, e.g. "
                              f"{default_clip_prompts_path().name})") from None
    if not out:
        raise ConfigError(f"{path} has no prompts")
    return out


class VideoPolicyRunner(PolicyRunner):
    """PolicyRunner on clips: generates every caption alone under a schedule (from its own noise row), decodes to
    (F, 3, H, W) clips in [-1, 1] as ``generate`` writes them (8-bit frames), scores them against fine-only."""

    def arrays(self, latents):
        from .video import clip_array

        return np.stack([clip_array(c) for c in self.model.decode(latents, self.geom)])

    def _probe(self, clips) -> list[dict]:
        from .motion import adherence

        return [adherence(c, t) for c, t in zip(clips, self.scenes)]

    def adherence(self, clips) -> float:
        """The fraction of clips whose every shape has its colour and does its motion (the probe's ``all``)."""
        from .motion import aggregate

        return aggregate(self._probe(clips))["all"]

    def score(self, clips) -> dict:
        """Per clip, against the fine-only clip: mean and worst-frame PSNR, SSIM, frame-change ratio, frame-difference
        error; and the probe's reading (``adherence`` = both right, ``colour``, ``motion``), as arrays."""
        from .video import frame_psnr, frame_ssim, temporal_consistency

        if self.fine_images is None:
            raise RuntimeError("run fine() first")
        pairs = list(zip(clips, self.fine_images))
        p = [frame_psnr(c, f) for c, f in pairs]
        tc = [temporal_consistency(c, f) for c, f in pairs] if self.geom.frames > 1 else []
        probe = self._probe(clips)
        out = dict(psnr=np.array([x.mean() for x in p]), psnr_min_frame=np.array([x.min() for x in p]),
                   ssim=np.array([frame_ssim(c, f).mean() for c, f in pairs]),
                   **{k: np.array([float(r[k]) for r in probe]) for k in ("colour", "motion")},
                   adherence=np.array([float(r["all"]) for r in probe]))
        if tc:
            out.update(change_ratio=np.array([t["change_ratio"] for t in tc]),
                       diff_error=np.array([t["diff_error"] for t in tc]))
        return out

    def probe_summary(self, clips) -> dict:
        """The probe's fractions over clips: colour, motion, all (both)."""
        from .motion import aggregate

        return aggregate(self._probe(clips))


def check_image_only(settings):
    """Options that read scene captions or images only, given for a video model: one error line each."""
    if settings.grades is not None:
        raise ConfigError("--grades selects scene captions by detail grade (image models); a video model calibrates "
                          "on clip captions")
    if settings.oracle is not None:
        raise ConfigError("--oracle searches per-prompt ladders scored on images; it is not built for video models "
                          "(sweep ladders with --policy ladder:... --sweep tail=...)")


def check_video_only(settings, name: str):
    """Video options given for an image model."""
    if settings.frames is not None:
        raise ConfigError(f"--frames applies to video models (wan-mini, wan); {name} makes images")
    if settings.change_ratio is not None:
        raise ConfigError(f"--change-ratio is a temporal bar for video models (wan-mini, wan); {name} makes images")


def passes_temporal_bar(row: dict, settings) -> bool:
    if settings.change_ratio is None or "change_ratio" not in row:
        return True
    lo, hi = settings.change_ratio
    return lo <= row["change_ratio"] <= hi


def table(fine: dict, rows: list[dict]) -> str:
    """The video sweep's table: fine-only, then every setting."""
    head = ("| setting | coarse | FLOP ratio | speed-up (FLOPs) | speed-up (measured) | PSNR dB (min frame) | SSIM | "
            "change ratio | diff err | colour | motion | both |")
    lines = [head, "|" + "---|" * (head.count("|") - 1),
             f"| fine-only | 0% | 1.000 | 1.00x | 1.00x | – | – | 1.000 | – | {fine['colour']:.1%} | "
             f"{fine['motion']:.1%} | {fine['adherence']:.1%} |"]
    for r in rows:
        lines.append(f"| {r['key']} | {r['coarse_fraction']:.0%} | {r['flops_ratio']:.3f} | {r['speedup_flops']:.2f}x "
                     f"| {r['speedup_measured']:.2f}x | {r['psnr']:.1f} ({r.get('psnr_min_frame', float('nan')):.1f}) "
                     f"| {r['ssim']:.3f} | {r.get('change_ratio', float('nan')):.3f} | "
                     f"{r.get('diff_error', float('nan')):.4f} | {r['colour']:.1%} | {r['motion']:.1%} | "
                     f"{r['adherence']:.1%} ({-r['adherence_drop']:+.1f}) |")
    return "\n".join(lines)
