"""A small CNN that reads a 32x32 scene image back into its attributes, and whose features define a Fréchet distance.

Per 3x3 grid cell it predicts the shape (empty, circle, square, triangle), the colour (8) and the size (3) of the
shape there, plus the background (black, gray, white, gradient, striped) of the whole image. Its penultimate layer
(``FEATURE_DIM`` ReLU features) is the feature space of :func:`ddit_export.quality.metrics.frechet_distance`.

The committed weights (``weights/scene_probe.safetensors`` + ``scene_probe.json``) are trained by
``python -m ddit_export.quality.train_probe`` on rendered scenes of both splits (the held-out split only holds out
triples from the *generator*; the probe must know every triple to judge it).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import WeightsError
from ..zoo import scenes as S

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
PROBE_NAME = "scene_probe"
PROBE_FORMAT = "ddit-scene-probe/1"
CELLS = 9
SHAPE_CLASSES = ("empty",) + S.SHAPES  # index 0 = no shape in the cell
COLOUR_NAMES = tuple(S.COLOURS)
SIZE_NAMES = tuple(S.SIZES)
BACKGROUND_NAMES = S.BACKGROUNDS
POSITION_NAMES = tuple(S.POSITIONS)  # row-major over the grid: index = 3 * row + col
FEATURE_DIM = 128
_HEAD = CELLS * (len(SHAPE_CLASSES) + len(COLOUR_NAMES) + len(SIZE_NAMES)) + len(BACKGROUND_NAMES)


def cell_index(position: str) -> int:
    row, col = S.POSITIONS[position]
    return 3 * row + col


class SceneProbe(nn.Module):
    """conv(32) - conv/2(32) - conv(64) - conv/2(64) - conv(96) - pool 4x4 - fc(128) = features - linear heads."""

    def __init__(self, width: int = 32, features: int = FEATURE_DIM):
        super().__init__()
        w = width
        act = nn.ReLU
        self.body = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), act(),
            nn.Conv2d(w, w, 3, stride=2, padding=1), act(),  # 16x16
            nn.Conv2d(w, 2 * w, 3, padding=1), act(),
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1), act(),  # 8x8
            nn.Conv2d(2 * w, 3 * w, 3, padding=1), act(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(3 * w * 16, features), act(),
        )
        self.head = nn.Linear(features, _HEAD)
        self.config = {"width": width, "features": features}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 32, 32) in [-1, 1] -> (B, features)."""
        return self.body(x)

    def forward(self, x: torch.Tensor):
        """-> features, dict of logits: shape (B, 9, 4), colour (B, 9, 8), size (B, 9, 3), background (B, 5)."""
        f = self.features(x)
        return f, split_logits(self.head(f))


def split_logits(h: torch.Tensor) -> dict:
    b = h.shape[0]
    n_s, n_c, n_z = len(SHAPE_CLASSES), len(COLOUR_NAMES), len(SIZE_NAMES)
    cells = h[:, :CELLS * (n_s + n_c + n_z)].reshape(b, CELLS, n_s + n_c + n_z)
    return {"shape": cells[..., :n_s], "colour": cells[..., n_s:n_s + n_c], "size": cells[..., n_s + n_c:],
            "background": h[:, CELLS * (n_s + n_c + n_z):]}


# ---- ground truth ------------------------------------------------------------------------------------------
def scene_targets(scenes_) -> dict[str, np.ndarray]:
    """Integer targets: shape (B, 9) with 0 = empty, colour/size (B, 9) with -1 where empty, background (B,)."""
    b = len(scenes_)
    shape = np.zeros((b, CELLS), np.int64)
    colour = np.full((b, CELLS), -1, np.int64)
    size = np.full((b, CELLS), -1, np.int64)
    bg = np.zeros(b, np.int64)
    for i, sc in enumerate(scenes_):
        for s in sc.shapes:
            c = cell_index(s.position)
            shape[i, c] = SHAPE_CLASSES.index(s.shape)
            colour[i, c] = COLOUR_NAMES.index(s.colour)
            size[i, c] = SIZE_NAMES.index(s.size)
        bg[i] = BACKGROUND_NAMES.index(sc.background)
    return {"shape": shape, "colour": colour, "size": size, "background": bg}


# ---- predictions -------------------------------------------------------------------------------------------
@dataclass
class Detections:
    """Argmax predictions for a batch: shape/colour/size (B, 9) class indices, background (B,), features (B, F)."""

    shape: np.ndarray
    colour: np.ndarray
    size: np.ndarray
    background: np.ndarray
    features: np.ndarray

    def objects(self, i: int) -> list[tuple[str, str, str, str]]:
        """Image ``i`` as [(shape, colour, size, position), ...] over non-empty cells (grid order)."""
        return [(SHAPE_CLASSES[self.shape[i, c]], COLOUR_NAMES[self.colour[i, c]], SIZE_NAMES[self.size[i, c]],
                 POSITION_NAMES[c]) for c in range(CELLS) if self.shape[i, c] != 0]


def as_images(images) -> torch.Tensor:
    """Accept (B, 3, H, W) float arrays/tensors in [-1, 1], or a list of PIL images; -> float32 tensor, clipped."""
    if isinstance(images, (list, tuple)) and images and hasattr(images[0], "convert"):
        arr = np.stack([np.asarray(im.convert("RGB"), np.float32) for im in images]).transpose(0, 3, 1, 2)
        images = arr / 127.5 - 1.0
    x = images.detach().float().cpu() if isinstance(images, torch.Tensor) else torch.from_numpy(
        np.asarray(images, np.float32))
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(x.shape)}")
    if x.shape[-2:] != (32, 32):
        x = torch.nn.functional.interpolate(x, size=(32, 32), mode="area")
    return x.clamp(-1, 1)


class Detector:
    """The trained probe, ready to run: ``detect(images)`` -> :class:`Detections`."""

    def __init__(self, net: SceneProbe):
        self.net = net.eval()

    @torch.no_grad()
    def detect(self, images, batch: int = 256) -> Detections:
        x = as_images(images)
        outs = {"shape": [], "colour": [], "size": [], "background": [], "features": []}
        for i in range(0, len(x), batch):
            f, lg = self.net(x[i:i + batch])
            outs["features"].append(f.double().numpy())
            for k in ("shape", "colour", "size", "background"):
                outs[k].append(lg[k].argmax(-1).numpy())
        cat = {k: (np.concatenate(v) if v else np.zeros((0,), np.int64)) for k, v in outs.items()}
        if not len(x):
            cat = {"shape": np.zeros((0, CELLS), np.int64), "colour": np.zeros((0, CELLS), np.int64),
                   "size": np.zeros((0, CELLS), np.int64), "background": np.zeros((0,), np.int64),
                   "features": np.zeros((0, self.net.config["features"]))}
        return Detections(**cat)

    @torch.no_grad()
    def features(self, images, batch: int = 256) -> np.ndarray:
        return self.detect(images, batch).features


def save_probe(net: SceneProbe, folder: str | Path = WEIGHTS_DIR, info: dict | None = None) -> Path:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    save_file(state, str(folder / f"{PROBE_NAME}.safetensors"), metadata={"format": PROBE_FORMAT})
    meta = {"format": PROBE_FORMAT, "config": net.config, "shape_classes": SHAPE_CLASSES, "colours": COLOUR_NAMES,
            "sizes": SIZE_NAMES, "backgrounds": BACKGROUND_NAMES, "positions": POSITION_NAMES, **(info or {})}
    (folder / f"{PROBE_NAME}.json").write_text(json.dumps(meta, indent=1))
    return folder / f"{PROBE_NAME}.safetensors"


def load_probe(folder: str | Path | None = None) -> Detector:
    """The committed probe (or one saved by :func:`save_probe` in ``folder``)."""
    return _load(str(Path(folder) if folder else WEIGHTS_DIR))


@lru_cache(maxsize=4)
def _load(folder: str) -> Detector:
    from safetensors.torch import load_file

    folder = Path(folder)
    meta_path, w_path = folder / f"{PROBE_NAME}.json", folder / f"{PROBE_NAME}.safetensors"
    if not (meta_path.is_file() and w_path.is_file()):
        raise WeightsError(f"scene probe weights not found in {folder}; train them with "
                           f"`python -m ddit_export.quality.train_probe`")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != PROBE_FORMAT:
        raise WeightsError(f"{meta_path}: unknown format {meta.get('format')!r}")
    if tuple(meta["colours"]) != COLOUR_NAMES or tuple(meta["backgrounds"]) != BACKGROUND_NAMES:
        raise WeightsError(f"{meta_path}: probe was trained for a different scene grammar")
    net = SceneProbe(**meta["config"])
    try:
        net.load_state_dict(load_file(str(w_path)))
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise WeightsError(f"scene probe weights {w_path} are corrupt: {e}") from None
    return Detector(net)
