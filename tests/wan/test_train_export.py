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


def test_bf16_autocast_trains_and_the_checkpoint_resumes_in_fp32(tmp_path):
    """The GPU path's arithmetic (bf16 autocast, fp32 master weights) runs on the CPU too, and its checkpoint is the
    one file any device resumes: two bf16 steps, then one fp32 step from it."""
    cfg = WanTrainConfig(**MICRO)
    a = train(cfg, tmp_path / "w", steps=2, log=lambda *m: None, bf16=True, samples=False, probe_n=0)
    assert a["step"] == 2 and all(torch.isfinite(torch.tensor(a["losses"])))
    w = torch.load(tmp_path / "w" / "ckpt.pt", weights_only=False)["model"]
    assert all(v.dtype != torch.bfloat16 for v in w.values())  # master weights stay fp32
    b = train(cfg, tmp_path / "w", steps=3, log=lambda *m: None, samples=False, probe_n=0)
    assert b["step"] == 3 and b["losses"][:2] == a["losses"]


def test_cuda_without_a_gpu_is_one_line(tmp_path, capsys):
    from ddit_export.zoo.train_wan import main

    if torch.cuda.is_available():
        import pytest

        pytest.skip("this machine has CUDA")
    assert main(["--work", str(tmp_path / "w"), "--steps", "1", "--micro", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no CUDA device" in err
    assert not (tmp_path / "w").exists()  # refused before the run folder is made
