"""``build --backend aoti`` for a video (Wan) model (issue 23 item 3): every size compiled by AOTInductor with the
weights once in weights.bin, the word encoder in the package, and the Python ``aoti`` backend generating the
clip the ONNX Runtime bundle generates."""
from ddit_export.bundle import load


def test_every_size_and_the_word_encoder_compiled_with_shared_constants(wan_aoti):
    m = load(wan_aoti)  # hashes of the package and the grown weights.bin checked
    sec = m.aoti
    assert [v["size"] for v in sec["variants"]] == list(m.sizes)
    assert sec["inputs"] == ["hidden_states", "timestep", "encoder_hidden_states"]  # the Wan contract
    for v in sec["variants"]:
        assert v["parity_max_abs"] < 1e-4
    offsets = [{row[1] for row in v["constants"]} for v in sec["variants"]]
    shared = set.intersection(*offsets)
    assert len(shared) > 10  # the trunk's constants: the same bytes for every size
    assert sec["text_encoder"]["parity_max_abs"] < 1e-4


def test_aoti_generates_the_onnxruntime_clip(wan_aoti):
    from ddit_export.api import build_settings
    from ddit_export.runtime.bundle_model import open_bundle
    from ddit_export.runtime.generate import generate

    out = {}
    for backend in ("aoti", "onnxruntime"):
        model, be = open_bundle(wan_aoti, backend=backend, threads=1)
        with be:
            r = generate(model, be, build_settings(model, steps=8, static=(1, 1, 4, 2, 4, 2, 1, 1)), progress=False,
                         decode=False)
        out[backend] = r
    a, b = out["aoti"], out["onnxruntime"]
    assert a.trace.sizes == b.trace.sizes == [1, 1, 4, 2, 4, 2, 1, 1]
    diff = float((a.latents - b.latents).abs().max())
    assert diff < 1e-3, diff


def test_the_cli_builds_and_generates_a_wan_aoti_bundle(wan_aoti, tmp_path):
    from .test_runtime import invoke

    r = invoke("generate", "--bundle", wan_aoti, "--backend", "aoti", "--steps", 6, "--out", tmp_path / "c.gif")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "c.gif").stat().st_size > 100
