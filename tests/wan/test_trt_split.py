"""The TensorRT split export for Wan (issue 23 item 3), on the CPU: one trunk graph for every size (per-size LoRA
picked by ``size_index``, RoPE from a ``pos_ids`` input), a stem and a head per size, checked by the lint and
composed on ONNX Runtime against each full variant graph. The engine build and a TensorRT runtime for Wan need
TensorRT (not here)."""
import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def wan_split(tmp_path_factory):
    from ddit_export.export.build import build_bundle
    from ddit_export.export.trt_build import prepare_tensorrt
    from ddit_export.models.registry import load_model
    from ddit_export.settings import BuildSettings

    model = load_model("tiny-wan")
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # non-zero LoRA and stems: the sizes really differ
        for p in list(model.transformer.loras.parameters()) + list(model.transformer.stems.parameters()):
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    s = BuildSettings(model="tiny-wan", out=str(tmp_path_factory.mktemp("wan-split") / "b"))
    out = build_bundle(s, progress=False, log=lambda *a: None, model=model)
    before = (out / "weights.bin").stat().st_size
    return out, prepare_tensorrt(out, s, model=model, log=lambda *a: None), before


@pytest.mark.slow
def test_stem_trunk_head_compose_to_each_full_wan_variant(wan_split):
    out, plan, _ = wan_split
    assert plan["grid"] == [4, 8, 8] and plan["engines"][0]["inputs"][:4] == ["hidden", "encoder_hidden_states",
                                                                             "timestep", "pos_ids"]
    assert set(plan["parity"]) == {"1", "2", "4"} and max(plan["parity"].values()) < 1e-4
    for e in plan["engines"]:
        assert (out / e["onnx"]).is_file()


@pytest.mark.slow
def test_one_wan_trunk_takes_every_size_by_index(wan_split):
    import onnxruntime as ort

    from ddit_export.models.wan import token_positions

    out, plan, _ = wan_split
    trunk = plan["engines"][0]
    sess = ort.InferenceSession(str(out / trunk["onnx"]), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for prof in trunk["profiles"]:
        k = prof["size"]
        feeds = {n: rng.standard_normal(s[0]).astype(np.float32) for n, s in prof["shapes"].items()}
        feeds.update(timestep=np.full((1,), 500.0, np.float32),
                     pos_ids=token_positions(tuple(plan["grid"]), k).numpy().astype(np.float32),
                     size_index=np.array([plan["size_index"][str(k)]], np.int32))
        y = sess.run(["trunk_out"], feeds)[0]
        assert y.shape[1] == prof["tokens"]
        other = sess.run(["trunk_out"], feeds | {"size_index": np.array([0], np.int32)})[0]
        assert (np.abs(other - y).max() > 1e-4) == (k != 1)  # size k's LoRA, picked by index


@pytest.mark.slow
def test_the_split_reuses_the_variants_weights(wan_split):
    from ddit_export.bundle import load

    out, plan, before = wan_split
    m = load(out)  # hashes of the new graphs and the grown weights.bin
    trunk_offsets = {row[1] for row in m.tensors[plan["engines"][0]["onnx"]]}
    fine_offsets = {row[1] for row in m.tensors["transformer_k1.onnx"]}
    assert len(trunk_offsets & fine_offsets) > 10  # the trunk graph points at the variants' copy of the trunk
    added = (out / "weights.bin").stat().st_size - before
    assert added < 0.5 * before  # only the stacked LoRA and the per-size stems/heads are new


def test_the_tensorrt_backend_binds_each_sizes_positions(wan_split, tmp_path):
    """The TensorRT runtime on Wan engines (fake engines from tests/runtime/test_tensorrt.py, CPU buffers): the
    trunk reads the (frame, row, column) positions of the size it runs, from a buffer written once; no FLUX-only
    buffers (pooled, txt_ids, img_ids)."""
    import shutil

    from ddit_export.models.wan import token_positions
    from ddit_export.export.trt_plan import update_manifest

    from ..runtime.test_tensorrt import BUILT, _fake_backend, _fake_engines

    out, plan, _ = wan_split
    folder = tmp_path / "b"
    shutil.copytree(out, folder)
    update_manifest(folder, plan=plan)
    _fake_engines(folder, plan, build=dict(BUILT, activation_buffer_bytes=4096))
    be = _fake_backend(folder)
    assert be.video and not {"pooled_projections", "txt_ids"} & set(be.buffers)
    for k in plan["sizes"]:
        pos = be.buffers[f"pos_ids_k{k}"]
        assert torch.equal(pos, token_positions(tuple(plan["grid"]), k).float())
        v = be._variant(k, 1)
        trunk = next(ctx for ctx, name in v.contexts if name == "trunk")
        assert trunk.addresses["pos_ids"] == pos.data_ptr() and trunk.shapes["pos_ids"] == (plan["tokens"][str(k)], 3)
        assert trunk.shapes["hidden"] == (1, plan["tokens"][str(k)], be.buffers["hidden"].shape[2])
