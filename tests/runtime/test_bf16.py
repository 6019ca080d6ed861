"""bf16 bundles: readable tensor table, an honest validate, and a one-line error instead of a traceback on ORT."""
import numpy as np
import pytest
from click.testing import CliRunner

from ddit_export import bundle as B
from ddit_export.cli import main


@pytest.fixture(scope="module")
def bf16_bundle(tmp_path_factory):
    from ddit_export.export.build import build_bundle
    from ddit_export.settings import BuildSettings

    out = tmp_path_factory.mktemp("bf16") / "tiny"
    return build_bundle(BuildSettings(model="tiny", out=str(out), dtype="bf16", sizes=(1, 2)), progress=False,
                        log=lambda *a: None)


def test_tensor_table_reads_bf16_as_documented(bf16_bundle):
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    m = B.load(bf16_bundle)
    table = m.tensors["transformer_k1.onnx"]
    assert {row[3] for row in table} == {"bfloat16"}
    raw = np.fromfile(bf16_bundle / B.WEIGHTS, np.uint8)
    graph = {t.name: t for t in onnx.load(str(bf16_bundle / "transformer_k1.onnx")).graph.initializer}
    for name, offset, length, dtype, dims in table[:5]:
        bits = raw[offset:offset + length].view(B.storage_dtype(dtype)).reshape(dims)
        ours = B.bf16_to_float32(bits)
        ref = numpy_helper.to_array(graph[name], base_dir=str(bf16_bundle)).astype(np.float32)  # ml_dtypes
        np.testing.assert_array_equal(ours, ref)


def test_bf16_to_float32_known_values():
    bits = np.array([0x3F80, 0xC000, 0x0000, 0x7F80, 0x3EAB], np.uint16)
    np.testing.assert_array_equal(B.bf16_to_float32(bits), np.array([1.0, -2.0, 0.0, np.inf, 0.333984375], np.float32))


def test_shared_weights_load_bf16_tables(bf16_bundle):
    """What the ORT backend builds when TensorRT runs the transformer and ORT only the text encoder."""
    from ddit_export.runtime.backends.onnxruntime import SharedWeights

    w = SharedWeights(bf16_bundle, B.load(bf16_bundle))
    assert w.nbytes == (bf16_bundle / B.WEIGHTS).stat().st_size


def test_validate_says_parity_not_run_and_does_not_claim_valid(bf16_bundle):
    r = CliRunner().invoke(main, ["validate", str(bf16_bundle)])
    assert r.exit_code == 1, r.output
    assert "parity not run: ONNX Runtime's CPU provider has no bfloat16" in r.output
    assert "bundle valid" not in r.output and "NOT validated" in r.output


def test_generate_on_ort_is_one_error_line(bf16_bundle, tmp_path):
    r = CliRunner().invoke(main, ["generate", "--bundle", str(bf16_bundle), "--out", str(tmp_path / "x.png")])
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error: ") and len(r.output.strip().splitlines()) == 1
    assert "bf16" in r.output and "--dtype fp16" in r.output
    assert not (tmp_path / "x.png").exists()


def test_ort_really_cannot_run_bf16_on_cpu(bf16_bundle):
    """The reason for the refusal, kept true: if a future onnxruntime loads it, this fails and the refusal can go."""
    ort = pytest.importorskip("onnxruntime")
    with pytest.raises(Exception, match="MatMul"):
        ort.InferenceSession(str(bf16_bundle / "transformer_k1.onnx"), providers=["CPUExecutionProvider"])
