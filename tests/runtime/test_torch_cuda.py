"""PyTorch CUDA-graph backend: a clear error without CUDA; on a GPU, replays match eager runs. And the GPU
benchmark's CPU dry run."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddit_export.errors import ConfigError
from ddit_export.runtime.backends.torch_cuda import TorchCudaBackend, require_cuda

ROOT = Path(__file__).resolve().parents[2]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_construction_without_cuda_says_what_to_use(tiny_model):
    with pytest.raises(ConfigError, match="needs a CUDA GPU.*torch backend"):
        TorchCudaBackend(tiny_model.transformer)
    assert next(tiny_model.transformer.parameters()).device.type == "cpu"  # untouched


@pytest.mark.gpu
@needs_cuda
def test_require_cuda_rejects_other_devices():
    with pytest.raises(ConfigError, match="CUDA device"):
        require_cuda("cpu")


def _inputs(model, device, batch=1):
    from ddit_export.runtime.generate import initial_noise

    geom = model.geometry()
    cond = model.encode(["a red circle"] * batch)
    cond = type(cond)(*(t.to(device) for t in (cond.states, cond.pooled, cond.txt_ids)))
    return geom, cond, initial_noise(geom, batch, 0, device)


@pytest.mark.gpu
@needs_cuda
def test_graph_replays_match_eager_at_every_size():
    from ddit_export.models.registry import load_model
    from ddit_export.runtime.backends.torch import TorchBackend

    eager_model, graph_model = load_model("tiny"), load_model("tiny")
    geom, cond, x = _inputs(eager_model, "cuda")
    eager = TorchBackend(eager_model.transformer.to("cuda", torch.bfloat16))
    cond16 = type(cond)(*(t.to(torch.bfloat16) for t in (cond.states, cond.pooled, cond.txt_ids)))
    with TorchCudaBackend(graph_model.transformer) as be:
        for step, k in enumerate([1, 2, 4, 2, 1, 4, 4]):  # switching sizes, each graph replayed several times
            t = torch.full((1,), 0.9 - 0.1 * step, device="cuda")
            got = be.run(k, x, cond, t, None, geom.grid)
            ref = eager.run(k, x, cond16, t, None, geom.grid).float()
            assert got.dtype == torch.float32 and got.shape == x.shape
            torch.testing.assert_close(got, ref, atol=2e-2, rtol=2e-2)
        assert len(be.slots) == 3 and all(s.graph is not None for s in be.slots.values())


@pytest.mark.gpu
@needs_cuda
def test_generation_with_cuda_graphs_is_repeatable():
    from ddit_export.api import build_settings
    from ddit_export.models.registry import load_model
    from ddit_export.runtime.generate import generate

    model = load_model("tiny")
    settings = build_settings(model, prompts=("a red circle", "a blue square"), steps=12)
    with TorchCudaBackend(model.transformer) as be:
        a = generate(model, be, settings, progress=False, decode=False)
        b = generate(model, be, settings, progress=False, decode=False)
    assert a.trace.sizes == b.trace.sizes
    assert torch.equal(a.latents, b.latents)


def test_gpu_bench_dry_run_on_cpu(tmp_path):
    schedules = tmp_path / "schedules.json"
    schedules.write_text(json.dumps([[1, 1, 1, 2, 4, 1], [1, 1, 1, 4, 4, 2]]))
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_bench.py"), "--cpu-smoke", "--out", str(out),
                        "--schedules", str(schedules)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((out / "results.json").read_text())
    assert res["mode"] == "cpu-smoke" and res["schedules_source"] == str(schedules)
    assert [g["schedule"] for g in res["generations"]] == json.loads(schedules.read_text())
    assert set(res["step_ms"]) == {"1", "2", "4"} and set(res["switch"]) == {"1<->2", "1<->4", "2<->4"}
    assert "median speed-up" in (out / "results.md").read_text()


def test_gpu_bench_refuses_bad_schedules_and_a_missing_gpu(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([[1, 3]]))
    script = str(ROOT / "scripts" / "gpu_bench.py")
    r = subprocess.run([sys.executable, script, "--cpu-smoke", "--schedules", str(bad), "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "sizes [3]" in r.stderr
    if not torch.cuda.is_available():
        r = subprocess.run([sys.executable, script, "--out", str(tmp_path)], capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 2 and "no CUDA GPU" in r.stderr and "--cpu-smoke" in r.stderr
