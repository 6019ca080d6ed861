"""The TensorRT plan (pure), the split export (trunk / stems / heads) on the CPU, and the lazy engine loaders."""
import json
import sys

import numpy as np
import pytest
import torch

from ddit_export.errors import BundleError, ConfigError
from ddit_export.export import trt_plan
from ddit_export.export.trt_plan import make_plan, param_counts, plan_from_manifest, read_plan, update_manifest
from ddit_export.settings import BuildSettings, TrtSettings
from ddit_export.shapes import TokenGeometry

FLUX_DEV = dict(num_attention_heads=24, attention_head_dim=128, in_channels=64, out_channels=None, patch_size=1,
                joint_attention_dim=4096, pooled_projection_dim=768, num_layers=19, num_single_layers=38,
                guidance_embeds=True)
FLUX_GEOM = TokenGeometry(1024, 1024, 8, 16)


def _numel(params):
    return sum(p.numel() for p in params)


@pytest.mark.parametrize("guidance", [False, True])
def test_parameter_counts_match_torch(guidance):
    from ddit_export.models.flux import MultiPatchFlux
    from tests.helpers import tiny_trunk

    mp = MultiPatchFlux(tiny_trunk(guidance=guidance), sizes=(1, 2, 4))
    p = param_counts(dict(mp.config), (1, 2, 4), mp.adapter_settings.rank)
    t = mp.trunk
    assert p["trunk"] == _numel(q for n, q in t.named_parameters() if not n.startswith(("x_embedder", "proj_out")))
    assert p["lora_per_size"] == _numel(mp.loras["2"].parameters()) == _numel(mp.loras["4"].parameters())
    assert p["stem"][1] == _numel(t.x_embedder.parameters()) and p["head"][1] == _numel(t.proj_out.parameters())
    for k in (2, 4):
        s = mp.stems[str(k)]
        assert p["stem"][k] == _numel(s.embed.parameters()) + s.size_id.numel()
        assert p["head"][k] == _numel(s.deembed.parameters()) + _numel(s.residual.parameters())


def test_flux_dev_trunk_held_once():
    p = param_counts(FLUX_DEV, (1, 2, 4), 32)
    assert p["trunk"] + p["stem"][1] + p["head"][1] == 11_901_408_320  # FLUX.1-dev's transformer
    w = make_plan(FLUX_DEV, FLUX_GEOM, (1, 2, 4), 512, "bf16", 32)["weights"]
    assert w["trunk_copies"] == 1 and w["naive_trunk_copies"] == 3
    assert w["naive_total_bytes"] - w["plan_total_bytes"] > 2 * w["trunk_bytes"] * 0.99
    assert w["plan_total_bytes"] < 1.02 * w["trunk_bytes"]  # stems, heads and stacked LoRA are ~1% on top
    assert "not measured" in w["source"]


def test_one_trunk_engine_with_a_static_profile_per_size():
    plan = make_plan(FLUX_DEV, FLUX_GEOM, (1, 2, 4), 512, "bf16", 32, TrtSettings(max_batch=4, opt_batch=2))
    trunk = [e for e in plan["engines"] if e["role"] == "trunk"]
    assert len(trunk) == 1 and trunk[0]["shared"]
    assert [p["tokens"] for p in trunk[0]["profiles"]] == [4096, 1024, 256]
    for prof in trunk[0]["profiles"]:
        lo, opt, hi = prof["shapes"]["hidden"]
        assert lo == [1, prof["tokens"], 3072] and opt == [2, prof["tokens"], 3072] and hi == [4, prof["tokens"], 3072]
        assert prof["shapes"]["img_ids"] == [[prof["tokens"], 3]] * 3
    assert "size_index" in trunk[0]["inputs"] and "guidance" in trunk[0]["inputs"]
    assert sorted(e["name"] for e in plan["engines"] if not e["shared"]) == \
        sorted(f"{r}_k{k}" for r in ("stem", "head") for k in (1, 2, 4))
    assert plan["flags"]["strongly_typed"]
    assert plan["flags"]["strip_plan"] and plan["flags"]["refit_identical"] and plan["precision"] == "bf16"
    assert plan["memory"]["io"]["hidden"] == 4 * 4096 * 3072 * 2
    json.dumps(plan)  # serialisable into the manifest


def test_plan_flags_follow_settings_and_dtype():
    geom = TokenGeometry(32, 32, 1, 3)
    cfg = dict(FLUX_DEV, num_layers=1, num_single_layers=1, in_channels=12)
    fp32 = make_plan(cfg, geom, (1, 2), 24, "fp32", 0, TrtSettings(tf32=True, strip_plan=False,
                                                                    optimization_level=5))
    assert fp32["flags"]["tf32"] and not fp32["flags"]["refit_identical"]
    assert fp32["flags"]["builder_optimization_level"] == 5
    assert "size_index" not in fp32["engines"][0]["inputs"] and fp32["weights"]["lora_stack_bytes"] == 0
    assert not make_plan(cfg, geom, (1,), 24, "bf16", 0, TrtSettings(tf32=True))["flags"]["tf32"]
    with pytest.raises(ConfigError, match="do not divide"):
        make_plan(cfg, geom, (1, 32), 24, "fp32", 0)
    with pytest.raises(ConfigError):
        TrtSettings(max_batch=2, opt_batch=3)


def test_plan_in_the_manifest_round_trip(bundle_copy):
    from ddit_export.bundle import load, read_manifest

    plan = plan_from_manifest(read_manifest(bundle_copy))
    assert read_plan(bundle_copy) is None
    update_manifest(bundle_copy, plan=plan)
    assert read_plan(bundle_copy) == json.loads(json.dumps(plan))
    load(bundle_copy)  # the rest of the manifest still reads and verifies
    d = json.loads((bundle_copy / "manifest.json").read_text())
    d[trt_plan.PLAN_KEY]["plan_version"] = trt_plan.PLAN_VERSION + 1
    (bundle_copy / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(BundleError, match="plan version"):
        read_plan(bundle_copy)


def test_appending_weights_rolls_back(bundle_copy):
    from onnx import helper, numpy_helper

    from ddit_export.bundle import read_manifest
    from ddit_export.export.trt_build import AppendingWeights

    m = read_manifest(bundle_copy)
    size = (bundle_copy / "weights.bin").stat().st_size
    writer = AppendingWeights(bundle_copy, m.tensors)
    name, offset, length, dtype, dims = m.tensors["transformer_k1.onnx"][0]
    raw = np.fromfile(bundle_copy / "weights.bin", np.uint8, count=length, offset=offset).view(dtype).reshape(dims)
    new = np.ones((64, 64), np.float32)
    graph = helper.make_graph([], "g", [], [], initializer=[numpy_helper.from_array(raw, "old"),
                                                          numpy_helper.from_array(new, "new")])
    table = writer.externalize(helper.make_model(graph))
    assert table[0][1] == offset  # an existing tensor is reused, not written again
    assert (bundle_copy / "weights.bin").stat().st_size > size
    writer.rollback()
    assert (bundle_copy / "weights.bin").stat().st_size == size


# ---- the split export on a tiny model with non-zero LoRA and stems (about a minute on 2 cores) -----------
@pytest.fixture(scope="module")
def split_bundle(tmp_path_factory):
    from ddit_export.export.build import build_bundle
    from ddit_export.export.trt_build import prepare_tensorrt
    from ddit_export.models.flux import MultiPatchFlux
    from ddit_export.models.registry import save_pixel_model, tiny_components

    tmp = tmp_path_factory.mktemp("split")
    trunk, text, sched = tiny_components()
    mp = MultiPatchFlux(trunk, sizes=(1, 2, 4))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in list(mp.loras.parameters()) + list(mp.stems.parameters()):
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    folder = save_pixel_model(tmp / "model", trunk, text, sched, name="tiny-lora", height=32, width=32, model=mp)
    settings = BuildSettings(model=str(folder), out=str(tmp / "bundle"))
    out = build_bundle(settings, progress=False, log=lambda *a: None)
    before = (out / "weights.bin").stat().st_size
    plan = prepare_tensorrt(out, settings, log=lambda *a: None)
    return out, plan, before


@pytest.mark.slow
def test_split_graphs_compose_to_each_full_variant(split_bundle):
    out, plan, _ = split_bundle
    assert set(plan["parity"]) == {"1", "2", "4"}
    assert max(plan["parity"].values()) < 1e-4


@pytest.mark.slow
def test_trunk_has_a_dynamic_token_axis_and_lora_by_index(split_bundle):
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    from ddit_export.runtime.backends.tensorrt import coarse_image_ids

    out, plan, _ = split_bundle
    trunk = plan["engines"][0]
    rng = np.random.default_rng(0)
    with OnnxrtRunner(SessionFromOnnx(str(out / trunk["onnx"]))) as runner:
        for prof in trunk["profiles"]:
            feeds = {n: rng.standard_normal(s[0]).astype(np.float32) for n, s in prof["shapes"].items()}
            feeds["img_ids"] = coarse_image_ids(tuple(plan["grid"]), prof["size"])
            feeds["size_index"] = np.array([plan["size_index"][str(prof["size"])]], np.int32)
            y = runner.infer(feeds)["trunk_out"]
            assert y.shape == (1, prof["tokens"], 64)
            other = runner.infer(feeds | {"size_index": np.array([0], np.int32)})["trunk_out"]
            assert (np.abs(other - y).max() > 1e-4) == (prof["size"] != 1)  # size k's LoRA, picked by index


@pytest.mark.slow
def test_trunk_weights_are_stored_once(split_bundle):
    from ddit_export.bundle import load

    out, plan, before = split_bundle
    m = load(out)  # every hash, the grown weights.bin's included
    variant_offsets = {row[1] for f in ("transformer_k1.onnx", "transformer_k2.onnx", "transformer_k4.onnx")
                       for row in m.tensors[f]}
    trunk_rows = m.tensors[trt_plan.TRUNK_ONNX]
    assert all(row[1] in variant_offsets for row in trunk_rows if "lora" not in row[0])
    added = (out / "weights.bin").stat().st_size - before
    assert added == plan["weights"]["appended_to_weights_bin"]
    assert added <= plan["weights"]["lora_stack_bytes"] + 64 * len(trunk_rows)  # only the stacked LoRA is new


@pytest.mark.slow
def test_split_bundle_is_tensorrt_ready_and_still_runs_on_ort(split_bundle):
    from ddit_export.export.trt_lint import check_bundle
    from ddit_export.runtime.backends.onnxruntime import OrtBundleBackend

    out, plan, _ = split_bundle
    assert check_bundle(out, read_plan(out)) == []
    with OrtBundleBackend(out) as be:
        assert be.sizes == (1, 2, 4)


@pytest.mark.slow
def test_engine_loaders_are_lazy(split_bundle):
    from polygraphy.backend.trt import SaveEngine

    from ddit_export.export.trt_build import engine_loaders

    out, plan, _ = split_bundle
    loaders = engine_loaders(out, plan)
    assert [e["name"] for e, _ in loaders] == [e["name"] for e in plan["engines"]]
    assert all(isinstance(loader, SaveEngine) for _, loader in loaders)
    assert "tensorrt" not in sys.modules  # nothing built, nothing imported


def test_trt_build_without_tensorrt_says_so(monkeypatch):
    import builtins

    from ddit_export.errors import DDiTError
    from ddit_export.export.trt_build import require_tensorrt

    real = builtins.__import__

    def no_trt(name, *a, **kw):
        if name == "tensorrt":
            raise ImportError("no tensorrt")
        return real(name, *a, **kw)
    monkeypatch.setattr(builtins, "__import__", no_trt)
    with pytest.raises(DDiTError, match="needs TensorRT"):
        require_tensorrt()


def test_extra_profiles_ask_for_no_extra_weight_memory(monkeypatch):
    """Every trunk profile after the first sets IOptimizationProfile.extra_memory_target = 0 (when TensorRT has it)."""
    from types import SimpleNamespace

    from polygraphy.backend.trt import Profile

    from ddit_export.export.trt_build import _profiles

    plan = make_plan(FLUX_DEV, FLUX_GEOM, (1, 2, 4), 512, "bf16", 32)
    monkeypatch.setattr(Profile, "to_trt", lambda self, builder, network: SimpleNamespace(extra_memory_target=1.0))
    trunk = plan["engines"][0]
    got = [p.to_trt(None, None).extra_memory_target for p in _profiles(trunk)]
    assert got == [1.0, 0.0, 0.0]
    monkeypatch.setattr(Profile, "to_trt", lambda self, builder, network: SimpleNamespace())  # TensorRT < 10
    assert all(not hasattr(p.to_trt(None, None), "extra_memory_target") for p in _profiles(trunk))


def test_engine_weights_are_measured_after_the_build(monkeypatch, tmp_path):
    """plan["weights"]["measured"]: GPU memory taken by loading the engines, not a computed figure."""
    import types

    from ddit_export.export import trt_build
    from tests.runtime.test_tensorrt import fake_trt

    plan = make_plan(FLUX_DEV, FLUX_GEOM, (1, 2), 512, "bf16", 32)
    (tmp_path / "trt").mkdir()
    for e in plan["engines"]:
        (tmp_path / e["plan"]).write_bytes(b"x")
    free = iter([10_000_000, 7_500_000])
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (next(free), 20_000_000))
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(**vars(fake_trt())))
    got = trt_build.measure_weights(tmp_path, plan)
    assert got["device_bytes"] == 2_500_000 and "mem_get_info" in got["how"]


def test_polygraphy_pin_has_create_config_strip_plan():
    """CreateConfig(strip_plan=) exists from polygraphy 0.49.7 on (its CHANGELOG): every pin must say so."""
    import tomllib
    from pathlib import Path

    from packaging.requirements import Requirement
    from packaging.version import Version

    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for deps in project["optional-dependencies"].values() for r in deps]
    pins = [r for r in reqs if r.name == "polygraphy"]
    assert pins
    for r in pins:
        assert not r.specifier.contains(Version("0.49.6")), str(r)


def test_build_with_tensorrt_loads_the_model_once(monkeypatch, tmp_path):
    from ddit_export.export import trt_build
    from ddit_export.models import registry

    loads, got = [], {}
    real = registry.load_model
    monkeypatch.setattr(registry, "load_model", lambda *a, **kw: loads.append(a) or real(*a, **kw))
    monkeypatch.setattr(trt_build, "require_tensorrt", lambda: None)
    monkeypatch.setattr(trt_build, "prepare_tensorrt", lambda path, s, t, log, model=None: got.update(model=model))
    monkeypatch.setattr(trt_build, "build_engines", lambda path, log: None)
    settings = BuildSettings(model="tiny", sizes=(1, 2), out=str(tmp_path / "b"))
    trt_build.build_with_tensorrt(settings, log=lambda *a: None)
    assert len(loads) == 1 and got["model"] is not None
