"""Quality metrics for generated scene images.

- Fidelity to a fine-only baseline for the same seed and prompt: :func:`psnr`, :func:`ssim` (per image).
- Prompt adherence: :func:`parse_caption` reads a caption back into a :class:`~ddit_export.zoo.scenes.Scene`;
  :func:`adherence` compares it with the scene probe's detections (:mod:`.detector`).
- Distribution distance: :func:`frechet_distance` between probe features of two image sets.

Images are (B, 3, H, W) arrays or tensors in [-1, 1] (the pixel models' latent range) unless said otherwise.
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..zoo import scenes as S

# ---- fidelity ----------------------------------------------------------------------------------------------
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5  # Gaussian window radius int(3.5 * 1.5 + 0.5) = 5: the usual 11x11 window
SSIM_K = (0.01, 0.03)


def to_unit(images) -> np.ndarray:
    """[-1, 1] images (array or tensor) -> float64 numpy in [0, 1], clipped."""
    x = images.detach().float().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    return np.clip((x.astype(np.float64) + 1.0) / 2.0, 0.0, 1.0)


def psnr(a, b, max_db: float = 100.0) -> np.ndarray:
    """Per-image PSNR in dB of [-1, 1] images, computed on [0, 1] (data range 1); identical images give max_db."""
    x, y = to_unit(a), to_unit(b)
    mse = ((x - y) ** 2).reshape(len(x), -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        db = 10.0 * np.log10(1.0 / np.maximum(mse, 1e-300))
    return np.minimum(db, max_db)


def ssim(a, b) -> np.ndarray:
    """Per-image SSIM (Wang et al. 2004) of [-1, 1] images on [0, 1]: 11x11 Gaussian window (σ 1.5), K = (0.01,
    0.03), per channel, averaged over every pixel with the image mirrored at its borders: the convention of
    torchmetrics' ``structural_similarity_index_measure(data_range=1)`` (scikit-image instead drops a 5 px border,
    which is half of a 32x32 image)."""
    x, y = to_unit(a), to_unit(b)
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"ssim needs two (B, C, H, W) batches of one shape, got {x.shape} and {y.shape}")
    c1, c2 = SSIM_K[0] ** 2, SSIM_K[1] ** 2
    blur = gaussian_blur
    r = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
    if min(x.shape[-2:]) <= r:
        raise ValueError(f"images must be larger than {r} px for SSIM, got {x.shape[-2:]}")
    mx, my = blur(x), blur(y)
    vx = np.maximum(blur(x * x) - mx * mx, 0.0)
    vy = np.maximum(blur(y * y) - my * my, 0.0)
    cxy = blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean(axis=(1, 2, 3))


def gaussian_blur(z: np.ndarray, sigma: float = SSIM_SIGMA, truncate: float = SSIM_TRUNCATE) -> np.ndarray:
    """Separable Gaussian blur of the last two axes, the image mirrored at its borders (d c b | a b c d | c b a):
    scipy.ndimage.gaussian_filter(z, (0, 0, sigma, sigma), truncate=truncate, mode="mirror"), in numpy."""
    r = int(truncate * sigma + 0.5)
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    for axis in (-2, -1):
        pad = [(0, 0)] * z.ndim
        pad[axis] = (r, r)
        p = np.pad(z, pad, mode="reflect")  # numpy's "reflect" is scipy's "mirror"
        n = z.shape[axis]
        z = sum(w * np.take(p, np.arange(i, i + n), axis=axis) for i, w in enumerate(k))
    return z


# ---- captions ----------------------------------------------------------------------------------------------
_POS = "|".join(sorted(map(re.escape, S.POSITIONS), key=len, reverse=True))
_PART = re.compile(rf"^an? ({'|'.join(S.SIZES)}) ({'|'.join(S.COLOURS)}) ({'|'.join(S.SHAPES)}) "
                   rf"(?:at|in) the ({_POS})$")
_BG = re.compile(rf"^(.*) on an? ({'|'.join(S.GRADED_BACKGROUNDS)}) background$")


def parse_caption(caption: str) -> S.Scene:
    """A caption of the scene grammar back into its Scene (the inverse of ``Scene.caption``)."""
    text = " ".join(caption.lower().strip().rstrip(".").split())
    m = _BG.match(text)
    if not m:
        raise ConfigError(f"not a scene caption (no '... on a <background> background'): {caption!r}")
    shapes = []
    for part in m.group(1).split(" and "):
        p = _PART.match(part.strip())
        if not p:
            raise ConfigError(f"not a scene caption: cannot read {part!r} in {caption!r}")
        size, colour, shape, position = p.groups()
        shapes.append(S.ShapeSpec(shape, colour, size, position))
    return S.Scene(tuple(shapes), m.group(2))


# ---- prompt adherence --------------------------------------------------------------------------------------
ATTRIBUTES = ("position", "shape", "colour", "size")


@dataclass
class AdherenceResult:
    """Per prompted object (flattened over images): ``object_ok`` and the per-attribute hits; per image: background,
    count and all-objects-right. :meth:`summary` averages them."""

    object_ok: np.ndarray  # (n_objects,) bool: shape, colour and position all right
    attr_ok: dict  # attribute -> (n_objects,) bool
    image_of_object: np.ndarray  # (n_objects,) image index
    background_ok: np.ndarray  # (n_images,) bool
    count_ok: np.ndarray  # (n_images,) bool: as many detected objects as prompted
    extra: np.ndarray  # (n_images,) int: detected objects at cells the caption does not mention
    image_ok: np.ndarray  # (n_images,) bool: every prompted object right and nothing extra

    def summary(self, images: np.ndarray | None = None) -> dict:
        """Means over all images, or over the image indices ``images``."""
        if images is None:
            om = np.ones(len(self.object_ok), bool)
            im = np.ones(len(self.background_ok), bool)
        else:
            im = np.zeros(len(self.background_ok), bool)
            im[np.asarray(images, int)] = True
            om = im[self.image_of_object]

        def mean(v, m):
            return float(v[m].mean()) if m.any() else float("nan")

        out = {"accuracy": mean(self.object_ok, om)}
        out.update({a: mean(self.attr_ok[a], om) for a in ATTRIBUTES})
        out.update(background=mean(self.background_ok, im), count=mean(self.count_ok, im),
                   image=mean(self.image_ok, im), extra_per_image=mean(self.extra.astype(float), im),
                   objects=int(om.sum()), images=int(im.sum()))
        return out


def adherence(detections, scenes_) -> AdherenceResult:
    """Compare the probe's ``detections`` (a :class:`~.detector.Detections`) with the prompted ``scenes_`` (Scenes or
    captions). An object counts when the cell of its position holds the detected shape and colour; ``position``
    alone = something is detected there; ``shape``/``colour``/``size`` = that attribute is right there."""
    from .detector import BACKGROUND_NAMES, COLOUR_NAMES, SHAPE_CLASSES, SIZE_NAMES, cell_index

    scenes_ = [parse_caption(s) if isinstance(s, str) else s for s in scenes_]
    if len(scenes_) != len(detections.shape):
        raise ValueError(f"{len(scenes_)} scenes for {len(detections.shape)} detections")
    obj_ok, img_of = [], []
    attr = {a: [] for a in ATTRIBUTES}
    bg_ok, count_ok, extra, img_ok = [], [], [], []
    for i, sc in enumerate(scenes_):
        cells = set()
        all_ok = True
        for s in sc.shapes:
            c = cell_index(s.position)
            cells.add(c)
            shp = detections.shape[i, c]
            hit = {"position": shp != 0, "shape": shp == SHAPE_CLASSES.index(s.shape),
                   "colour": shp != 0 and detections.colour[i, c] == COLOUR_NAMES.index(s.colour),
                   "size": shp != 0 and detections.size[i, c] == SIZE_NAMES.index(s.size)}
            for a in ATTRIBUTES:
                attr[a].append(bool(hit[a]))
            ok = bool(hit["shape"] and hit["colour"])
            obj_ok.append(ok)
            img_of.append(i)
            all_ok &= ok
        found = {c for c in range(detections.shape.shape[1]) if detections.shape[i, c] != 0}
        n_extra = len(found - cells)
        names = getattr(detections, "backgrounds", BACKGROUND_NAMES)  # a probe without a class for it: never right
        bg_ok.append(sc.background in names and detections.background[i] == names.index(sc.background))
        count_ok.append(len(found) == len(sc.shapes))
        extra.append(n_extra)
        img_ok.append(all_ok and n_extra == 0)
    return AdherenceResult(np.asarray(obj_ok, bool), {a: np.asarray(v, bool) for a, v in attr.items()},
                           np.asarray(img_of, int), np.asarray(bg_ok, bool), np.asarray(count_ok, bool),
                           np.asarray(extra, int), np.asarray(img_ok, bool))


# ---- Fréchet distance --------------------------------------------------------------------------------------
def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) of (N >= 2, D) features."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"need (N >= 2, D) features, got {f.shape}")
    with _one_thread() as torch:
        t = torch.from_numpy(f)
        c = t - t.mean(0)
        return t.mean(0).numpy(), (c.T @ c / (len(f) - 1)).numpy()


def frechet_distance(a, b) -> float:
    """‖μa − μb‖² + Tr(Σa + Σb − 2 (Σa Σb)^½) between two feature sets (N, D), or two (mean, cov) pairs.

    Tr (Σa Σb)^½ is computed as Σ √λ of the symmetric PSD matrix Σa^½ Σb Σa^½ (same eigenvalues as Σa Σb), which
    stays real and finite when N < D makes the covariances singular (a matrix square root of the product, as
    ``scipy.linalg.sqrtm`` takes it, may not); the two agree on well-conditioned inputs (tested)."""
    mu1, s1 = a if isinstance(a, tuple) else feature_stats(a)
    mu2, s2 = b if isinstance(b, tuple) else feature_stats(b)
    with _one_thread() as torch:
        s1, s2 = torch.as_tensor(s1, dtype=torch.float64), torch.as_tensor(s2, dtype=torch.float64)
        w, v = torch.linalg.eigh((s1 + s1.T) / 2)
        sq1 = (v * w.clamp(min=0).sqrt()) @ v.T
        m = sq1 @ s2 @ sq1
        lam = torch.linalg.eigvalsh((m + m.T) / 2)
        tr_covmean = float(lam.clamp(min=0).sqrt().sum())
        tr = float(torch.trace(s1) + torch.trace(s2))
    diff = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
    return float(max(diff @ diff + tr - 2.0 * tr_covmean, 0.0))


@contextlib.contextmanager
def _one_thread():
    """torch on one thread: for D ~ 100 a multi-threaded LAPACK/BLAS is 10-100x slower on a busy CPU."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield torch
    finally:
        torch.set_num_threads(prev)
