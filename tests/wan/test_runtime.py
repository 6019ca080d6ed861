"""Video generation through the runtime: the loop, the bundle (ONNX Runtime), the CLI and its errors."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ddit_export.cli import main


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _settings(model, **kw):
    from ddit_export.api import build_settings

    return build_settings(model, prompts=("a red circle moving left",) if "prompts" not in kw else kw.pop("prompts"),
                          **kw)


def test_torch_loop_runs_every_size_and_decodes_frames(tiny_wan):
    from ddit_export.runtime.backends.torch import TorchBackend
    from ddit_export.runtime.generate import generate

    geom = tiny_wan.geometry()
    assert geom.is_video and len(geom.grid) == 3
    with TorchBackend(tiny_wan.transformer) as backend:
        r = generate(tiny_wan, backend, _settings(tiny_wan, steps=6, static=(4, 4, 2, 2, 1, 1)), progress=False)
    assert r.trace.sizes == [4, 4, 2, 2, 1, 1]
    assert r.latents.shape == (1, geom.tokens(1), geom.token_channels)
    assert [s.tokens for s in r.trace.steps[:4]] == [geom.tokens(4)] * 2 + [geom.tokens(2)] * 2
    assert all(s.flops > 0 for s in r.trace.steps)
    clip = r.images[0]
    assert len(clip) == geom.frames and clip[0].size == (geom.width, geom.height)


def test_bundle_matches_torch_and_is_format_2(tiny_wan, wan_bundle):
    from ddit_export.bundle import read_manifest
    from ddit_export.runtime.backends.torch import TorchBackend
    from ddit_export.runtime.bundle_model import open_bundle
    from ddit_export.runtime.generate import generate, initial_noise

    man = read_manifest(wan_bundle)
    assert man.format_version == 2 and man.model["kind"] == "wan-pixel" and man.sizes == (1, 2, 4)
    assert [len(v.grid) for v in man.variants] == [3, 3, 3]
    assert max(v.parity_max_abs for v in man.variants) < 1e-4
    static = (4, 2, 2, 1, 1, 1)
    noise = initial_noise(tiny_wan.geometry(), 1, 3)
    with TorchBackend(tiny_wan.transformer) as backend:
        ref = generate(tiny_wan, backend, _settings(tiny_wan, steps=6, static=static), progress=False,
                       latents=noise)
    bm, backend = open_bundle(wan_bundle)
    with backend:
        got = generate(bm, backend, _settings(bm, steps=6, static=static), progress=False, latents=noise)
    assert got.trace.sizes == ref.trace.sizes
    assert torch.allclose(got.latents, ref.latents, atol=1e-3)


def test_cli_generate_writes_a_gif_and_trace(wan_bundle, tmp_path):
    from PIL import Image

    gif, trace = tmp_path / "clip.gif", tmp_path / "t.json"
    r = invoke("generate", "--bundle", wan_bundle, "--steps", 6, "--out", gif, "--trace", trace)
    assert r.exit_code == 0, r.output
    with Image.open(gif) as im:
        assert im.n_frames == json.loads((wan_bundle / "manifest.json").read_text())["model"]["frames"]
    t = json.loads(trace.read_text())
    assert len(t["grid"]) == 3 and len(t["steps"]) == 6


@pytest.mark.parametrize("args, words", [
    (("--model", "tiny-wan", "--frames", 7), "temporal patch"),  # tiny-wan: temporal patch 2
    (("--model", "tiny-wan", "--height", 30), "multiple"),
    (("--model", "tiny-wan", "--height", 40, "--sizes", "1,4"), "divide"),
    (("--model", "tiny-wan", "--out", "x.png"), ".gif"),
    (("--model", "flux-mini", "--frames", 8), "video"),
])
def test_bad_video_input_is_one_error_line(args, words, tmp_path):
    r = invoke("generate", "--steps", 4, *args)
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], r.output


def test_family_mismatch_between_bundle_and_model_is_refused(wan_bundle, tiny_bundle):
    for bundle, model in ((wan_bundle, "flux-mini"), (tiny_bundle, "wan-mini"), (tiny_bundle, "tiny-wan")):
        r = invoke("generate", "--bundle", bundle, "--model", model, "--steps", 4)
        assert r.exit_code == 2 and r.output.startswith("error:") and "bundle" in r.output, r.output


def test_trt_check_plans_and_lints_the_wan_graphs(wan_bundle):
    r = invoke("trt-check", wan_bundle)
    assert r.exit_code == 0, r.output
    assert "trunk" in r.output and "k=4" in r.output and "no problems" in r.output


def test_trt_build_of_wan_without_tensorrt_says_so_first(tmp_path):
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    r = invoke("build", "--model", "tiny-wan", "--backend", "trt", "--out", tmp_path / "trt")
    assert r.exit_code != 0 and "TensorRT" in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "trt").exists()


def test_wan_plan_parameter_counts_match_torch(tiny_wan):
    from ddit_export.export.trt_plan import param_counts

    mp = tiny_wan.transformer
    p = param_counts(dict(mp.config), mp.sizes, mp.adapter_settings.rank)
    trunk = mp.trunk
    own = sum(v.numel() for n, v in trunk.named_parameters()
              if not n.startswith(("patch_embedding", "proj_out")))
    assert p["trunk"] == own
    assert p["stem"][1] == sum(v.numel() for v in trunk.patch_embedding.parameters())
    assert p["head"][1] == sum(v.numel() for v in trunk.proj_out.parameters())
    for k in mp.sizes:
        if k > 1:
            stem = mp.stems[str(k)]
            assert p["stem"][k] + p["head"][k] == sum(v.numel() for v in stem.parameters())
            assert p["lora_per_size"] == sum(v.numel() for v in mp.loras[str(k)].parameters())


def test_cfg_runs_two_calls_per_step_and_counts_them(tiny_wan):
    """True classifier-free guidance (Wan 2.1): with a negative-prompt encoder in the model's extras and guidance
    above 1, each step runs the model twice and the result differs from guidance 1 (one call)."""
    from ddit_export.models.registry import Conditioning
    from ddit_export.runtime.backends.torch import TorchBackend
    from ddit_export.runtime.generate import generate

    calls = []

    class Counting(TorchBackend):
        def run(self, *a, **k):
            calls.append(a[0])
            return super().run(*a, **k)

    neg = tiny_wan.encode(["a"])
    tiny_wan.extras["encode_negative"] = lambda b: Conditioning(neg.states.expand(b, -1, -1), None, None)
    try:
        with Counting(tiny_wan.transformer) as backend:
            one = generate(tiny_wan, backend, _settings(tiny_wan, steps=4, guidance=1.0, static=(1,) * 4),
                           progress=False, decode=False)
            n_one = len(calls)
            two = generate(tiny_wan, backend, _settings(tiny_wan, steps=4, guidance=5.0, static=(1,) * 4),
                           progress=False, decode=False)
    finally:
        del tiny_wan.extras["encode_negative"]
    assert n_one == 4 and len(calls) - n_one == 8
    assert not torch.equal(one.latents, two.latents)
    assert np.isclose(two.trace.steps[0].flops, 2 * one.trace.steps[0].flops)


def test_gpu_wan_bench_dry_run_on_the_cpu(tmp_path):
    """scripts/gpu_wan_bench.py --cpu-smoke: the GPU script's whole path at tiny sizes (the GPU run itself needs
    the device machine)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    sched = tmp_path / "s.json"
    sched.write_text(json.dumps({"schedules": [[1, 1, 1, 4, 2, 1]], "source": "test"}))
    r = subprocess.run([sys.executable, str(root / "scripts" / "gpu_wan_bench.py"), "--cpu-smoke", "--out",
                        str(tmp_path / "o"), "--schedules", str(sched), "--repeats", "1"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert set(res["step_ms"]) == {"1", "2", "4"} and res["generations"][0]["flop_bound"] > 1


def test_inspect_and_validate_a_video_bundle_and_serve_refuses_a_wan_21_one(wan_bundle, tmp_path):
    import shutil

    r = invoke("inspect", wan_bundle)
    assert r.exit_code == 0 and "format v2" in r.output and "4x8x8" in r.output, r.output
    r = invoke("validate", wan_bundle)
    assert r.exit_code == 0 and "bundle valid" in r.output, r.output
    # a wan-pixel bundle is served (tests/serve/test_video.py); a Wan 2.1 bundle (transformer only) is refused in
    # one line before Ray starts
    b = shutil.copytree(wan_bundle, tmp_path / "w")
    m = json.loads((b / "manifest.json").read_text())
    m["model"]["kind"] = "wan"
    (b / "manifest.json").write_text(json.dumps(m))
    r = invoke("serve", b)
    assert r.exit_code == 2 and "Wan 2.1 bundle" in r.output and r.output.count("\n") == 1, r.output
