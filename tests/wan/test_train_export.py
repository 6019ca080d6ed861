"""The wan-mini trainer exports a folder the registry loads as a video model (and resumes exactly)."""
import json

import torch

from ddit_export.zoo.train_wan import MICRO, WanTrainConfig, train


def test_resume_equals_uninterrupted_and_export_loads(tmp_path):
    cfg = WanTrainConfig(**MICRO)
    a = train(cfg, tmp_path / "a", steps=6, log=lambda *m: None)
    train(cfg, tmp_path / "b", steps=3, log=lambda *m: None)
    b = train(cfg, tmp_path / "b", steps=6, log=lambda *m: None)
    assert a["step"] == b["step"] == 6
    assert a["losses"] == b["losses"]
    wa = torch.load(tmp_path / "a" / "ckpt.pt", weights_only=False)["model"]
    wb = torch.load(tmp_path / "b" / "ckpt.pt", weights_only=False)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    meta = json.loads((tmp_path / "a" / "model" / "ddit_model.json").read_text())
    assert meta["format"] == "ddit-pixel-video/1" and meta["frames"] == MICRO["frames"]
    from ddit_export.models.registry import load_model

    m = load_model(str(tmp_path / "a" / "model"))
    assert m.family == "wan" and m.geometry().grid == (MICRO["frames"] // 2, 4, 4)
    assert (tmp_path / "a" / "samples.png").is_file() and (tmp_path / "a" / "loss.png").is_file()
