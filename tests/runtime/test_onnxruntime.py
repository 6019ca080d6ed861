import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddit_export.api import build_settings
from ddit_export.models.registry import load_model
from ddit_export.runtime.backends.onnxruntime import OrtBundleBackend
from ddit_export.runtime.backends.torch import TorchBackend
from ddit_export.runtime.bundle_model import open_bundle
from ddit_export.runtime.generate import generate


def psnr(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mse = ((a - b) ** 2).mean()
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def test_onnxruntime_generation_matches_torch_step_for_step(tiny_bundle):
    bm, backend = open_bundle(tiny_bundle)
    torch_model = load_model("tiny")
    settings = build_settings(torch_model, prompts=("a red circle", "a blue square"), steps=16)
    with backend:
        ort_run = generate(bm, backend, settings, progress=False)
    with TorchBackend(torch_model.transformer) as tb:
        torch_run = generate(torch_model, tb, settings, progress=False)
    assert ort_run.trace.sizes == torch_run.trace.sizes
    assert len(set(ort_run.trace.sizes)) > 1
    for a, b in zip(ort_run.images, torch_run.images):
        assert psnr(a, b) >= 40


def test_variants_share_one_copy_of_the_weights(tiny_bundle):
    with OrtBundleBackend(tiny_bundle) as be:
        w = be.weights
        assert w.nbytes == (tiny_bundle / "weights.bin").stat().st_size
        # every graph's large tensors are views of the one buffer
        for file, table in be.manifest.tensors.items():
            for name, offset, _, dtype, dims in table:
                assert np.shares_memory(w._values[(offset, dtype, tuple(dims))].numpy(), w.buffer)
        v = be.manifest.variant(1)
        feeds = {s.name: np.random.default_rng(0).standard_normal([1 if d == "batch" else d for d in s.shape])
                 .astype(s.dtype) for s in v.inputs}
        import onnxruntime as ort

        plain = ort.InferenceSession(str(tiny_bundle / v.file), providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(be.run_numpy(1, feeds), plain.run(["velocity"], feeds)[0], atol=1e-6)


def test_memory_fast_prepacks_per_session_and_gives_the_same_images(tiny_bundle, tmp_path):
    """--memory fast: sessions own (and pre-pack) their weights, like a standalone session; same results."""
    from ddit_export.errors import ConfigError

    with OrtBundleBackend(tiny_bundle, memory="fast") as fast, OrtBundleBackend(tiny_bundle) as shared:
        assert fast.memory == "fast" and fast.weights is None and shared.memory == "shared"
        def prepacking(sess):
            try:
                return sess.get_session_options().get_session_config_entry("session.disable_prepacking") != "1"
            except RuntimeError:  # not set at all: ONNX Runtime's default, pre-packing on
                return True
        assert all(prepacking(s) for s in fast.sessions.values())
        assert not any(prepacking(s) for s in shared.sessions.values())
        for k in fast.sizes:
            v = fast.manifest.variant(k)
            feeds = {s.name: np.random.default_rng(k).standard_normal([1 if d == "batch" else d for d in s.shape])
                     .astype(s.dtype) for s in v.inputs}
            np.testing.assert_allclose(fast.run_numpy(k, feeds), shared.run_numpy(k, feeds), atol=1e-5)
    with pytest.raises(ConfigError, match="memory must be one of shared, fast"):
        OrtBundleBackend(tiny_bundle, memory="small")
    from click.testing import CliRunner

    from ddit_export.cli import main

    outs = []
    for mode in ("shared", "fast"):
        r = CliRunner().invoke(main, ["generate", "--bundle", str(tiny_bundle), "--memory", mode, "--steps", "4",
                                      "--out", str(tmp_path / f"{mode}.png")])
        assert r.exit_code == 0, r.output
        outs.append(np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(tmp_path / f"{mode}.png"),
                               dtype=np.int16))
    assert np.abs(outs[0] - outs[1]).max() <= 1


CONSUMER = textwrap.dedent("""
    import importlib.abc, json, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("ddit_export", "torch", "diffusers"):
                raise ImportError(f"{name} must not be needed")
    sys.meta_path.insert(0, Block())
    import numpy as np, onnxruntime as ort
    folder, size = sys.argv[1], int(sys.argv[2])
    m = json.load(open(f"{folder}/manifest.json"))
    assert m["format"] == "ddit-bundle" and m["format_version"] == 1
    v = next(v for v in m["variants"] if v["size"] == size)
    rng = np.random.default_rng(0)
    feeds = {i["name"]: rng.standard_normal([1 if d == "batch" else d for d in i["shape"]]).astype(i["dtype"])
             for i in v["inputs"]}
    out = ort.InferenceSession(f"{folder}/{v['file']}").run([v["outputs"][0]["name"]], feeds)[0]
    print(json.dumps({"shape": list(out.shape), "sum": float(out.sum())}))
""")


@pytest.mark.parametrize("size", [1, 4])
def test_outsider_with_only_onnxruntime_and_numpy_runs_a_variant(tiny_bundle, tmp_path, size):
    script = tmp_path / "consumer.py"
    script.write_text(CONSUMER)
    r = subprocess.run([sys.executable, str(script), str(tiny_bundle), str(size)], capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    with OrtBundleBackend(tiny_bundle) as be:
        v = be.manifest.variant(size)
        rng = np.random.default_rng(0)
        feeds = {s.name: rng.standard_normal([1 if d == "batch" else d for d in s.shape]).astype(s.dtype)
                 for s in v.inputs}
        ours = be.run_numpy(size, feeds)
    assert got["shape"] == list(ours.shape)
    assert got["sum"] == pytest.approx(float(ours.sum()), rel=1e-5, abs=1e-4)


def test_bundle_resolution_is_fixed(tiny_bundle):
    bm, backend = open_bundle(tiny_bundle)
    backend.deactivate()
    from ddit_export.errors import ConfigError

    with pytest.raises(ConfigError, match="built for 32x32; rebuild with --height 64"):
        bm.geometry(64, 64)


def test_flux_mini_bundle_matches_pytorch_end_to_end(tmp_path_factory):
    """The shipped model, built and run by ONNX Runtime: same schedule step for step, image PSNR >= 40 dB."""
    from ddit_export.export.build import build_bundle
    from ddit_export.settings import BuildSettings

    folder = build_bundle(BuildSettings(model="flux-mini", out=str(tmp_path_factory.mktemp("fm") / "flux-mini")),
                          progress=False, log=lambda *a: None)
    bm, backend = open_bundle(folder)
    torch_model = load_model("flux-mini")
    prompts = ("a large red circle in the center on a black background",
               "a small blue square at the top left and a medium yellow triangle at the bottom right on a striped "
               "background")
    settings = build_settings(torch_model, prompts=prompts, seed=5)
    with backend:
        ort_run = generate(bm, backend, settings, progress=False)
    with TorchBackend(torch_model.transformer) as tb:
        torch_run = generate(torch_model, tb, settings, progress=False)
    assert ort_run.trace.sizes == torch_run.trace.sizes
    for a, b in zip(ort_run.images, torch_run.images):
        assert psnr(a, b) >= 40


OUTSIDER = Path(__file__).with_name("outsider_generate.py")


@pytest.mark.parametrize("window", ["any", "same-size"])
def test_outsider_generates_from_the_doc_alone(tiny_bundle, tmp_path, window):
    """engines/README.md's "Generate from a bundle" is enough: a whole generation written from it alone (numpy and
    onnxruntime; ddit_export, torch and diffusers blocked) gives the images and schedule of `generate --bundle`
    (measured: bit-identical; asserted with a margin for thread-count-dependent float sums)."""
    doc = (Path(__file__).parents[2] / "engines" / "README.md").read_text()
    assert "## Generate from a bundle" in doc and "test_outsider_generates_from_the_doc_alone" in doc
    from click.testing import CliRunner

    from ddit_export.cli import main

    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["schedule"]["window"] = window  # the outsider reads the schedule from the manifest only
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    prompts = ["a large red circle at the center", "a small blue square at the top left"]
    seed, steps = 3, 16
    m = manifest["model"]
    # step 4 of the doc, as written there; handed over as .npy (torch's generator needs torch)
    g = torch.Generator("cpu").manual_seed(seed)
    noise = torch.randn(len(prompts), m["latent_channels"], m["height"] // m["vae_scale"],
                        m["width"] // m["vae_scale"], generator=g, dtype=torch.float32)
    np.save(tmp_path / "noise.npy", noise.numpy())
    r = subprocess.run([sys.executable, str(OUTSIDER), str(bundle), str(tmp_path / "noise.npy"),
                        str(tmp_path / "outsider.npy"), str(steps), *prompts], capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    outsider_sizes = json.loads(r.stdout)["sizes"]
    theirs = np.load(tmp_path / "outsider.npy")

    args = ["generate", "--bundle", bundle, "--seed", seed, "--steps", steps, "--out", tmp_path / "img.png",
            "--trace", tmp_path / "trace.json"]
    for p in prompts:
        args += ["--prompt", p]
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    trace = json.loads((tmp_path / "trace.json").read_text())
    assert outsider_sizes == [s["size"] for s in trace["steps"]]
    assert len(set(outsider_sizes)) > 1  # the DDiT rule did take coarse steps
    ours = np.stack([np.asarray(Image.open(tmp_path / f"img_{i}.png").convert("RGB")) for i in range(len(prompts))])
    assert theirs.shape == ours.shape and theirs.dtype == ours.dtype
    assert psnr(theirs, ours) > 60
