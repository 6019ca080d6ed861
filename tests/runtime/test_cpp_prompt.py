"""Prompts in, pixels out through the C++ runtime: the C++ word tokenizer equals models/text.py (ids and every
error message), ddit_encode equals Python's aoti text encoder bit for bit, ddit_decode equals images.pixels_to_pil,
and `ddit-run --prompt ... --out x.png` writes the image `ddit-export generate --backend aoti` writes, bit for bit.
ddit-run's option table: --help lists every option; every bad input is one `error:` line and exit 2."""
import ctypes as C
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

from tests.runtime.cpp_api import DDiTError, fptr

pytestmark = pytest.mark.cpp

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]
STEPS = 12
PROMPTS = ["a large red circle at the center", "a small blue square at the left"]


def _prompt_array(prompts):
    return (C.c_char_p * len(prompts))(*[p.encode() for p in prompts])


def _encode(lib, rt, prompts):
    info = lib.info(rt)
    n = len(prompts)
    states = np.zeros((n, info.text_len, info.joint_dim), np.float32)
    pooled = np.zeros((n, info.pooled_dim), np.float32)
    lib.call("ddit_encode", rt, _prompt_array(prompts), n, fptr(states), C.c_size_t(states.size), fptr(pooled),
             C.c_size_t(pooled.size))
    return states, pooled


def _vocab(bundle):
    te = json.loads((bundle / "manifest.json").read_text())["text_encoder"]
    return te["vocab"], te["max_length"]


@pytest.fixture(scope="module")
def runtime(cpp_lib, aoti_bundle):
    rt = cpp_lib.open(aoti_bundle)
    yield rt
    cpp_lib.close(rt)


TOKENIZER_CASES = [
    ["a red circle"], ["A RED Circle"], ["a red\tcircle\n"], ["a\u00a0red, circle!"], ["3 cats"], ["café"],
    ["don't 7"], ['it\'s a "red" circle'], ["a red\x01circle"], ["a\\b"], ["x€"], ["a zebra and a unicorn"],
    ["zebra", "unicorn ant"], [""], [" ... "], ["a red circle", ""], ["red " * 25], ["zebra " * 30],
]


@pytest.mark.parametrize("prompts", TOKENIZER_CASES, ids=range(len(TOKENIZER_CASES)))
def test_tokenizer_equals_python(cpp_lib, runtime, aoti_bundle, prompts):
    """The same prompts succeed, and the same fail with VocabularyError's exact message as DDIT_ERR_ARGUMENT."""
    from ddit_export.errors import VocabularyError
    from ddit_export.models.text import tokenize

    vocab, max_length = _vocab(aoti_bundle)
    try:
        tokenize(vocab, max_length, prompts)
        want = None
    except VocabularyError as e:
        want = str(e)
    try:
        _encode(cpp_lib, runtime, prompts)
        got = None
    except DDiTError as e:
        assert e.code == 1, e
        got = e.message
    assert got == want


def test_tokenizer_case_and_punctuation_give_the_same_ids(cpp_lib, runtime):
    a = _encode(cpp_lib, runtime, ["a red circle"])
    b = _encode(cpp_lib, runtime, ["A, RED  (circle)!"])
    c = _encode(cpp_lib, runtime, ["a circle red"])
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert np.abs(a[0] - c[0]).max() > 1e-4  # word order is in the states


def test_encode_equals_python_aoti_encoder(cpp_lib, runtime, aoti_bundle):
    from ddit_export.runtime.backends.aoti import AotiTextEncoder
    from ddit_export.runtime.bundle_model import open_bundle

    info = cpp_lib.info(runtime)
    vocab, max_length = _vocab(aoti_bundle)
    assert (info.has_text_encoder, info.has_decoder, info.max_words) == (1, 1, max_length)
    aoti_model, _ = open_bundle(aoti_bundle, backend="aoti")
    assert isinstance(aoti_model.backend, AotiTextEncoder)  # Python's aoti path runs the compiled encoder too
    ort_model, _ = open_bundle(aoti_bundle)
    prompts = PROMPTS + [" ".join(vocab[:max_length])]
    states, pooled = _encode(cpp_lib, runtime, prompts)
    py = aoti_model.encode(prompts)
    np.testing.assert_array_equal(states, py.states.numpy())
    np.testing.assert_array_equal(pooled, py.pooled.numpy())
    ort = ort_model.encode(prompts)
    np.testing.assert_allclose(states, ort.states.numpy(), atol=1e-5)
    np.testing.assert_allclose(pooled, ort.pooled.numpy(), atol=1e-5)


def test_bundle_without_compiled_encoder_still_opens(cpp_lib, aoti_bundle, tmp_path):
    """A bundle built before the text encoder was compiled in: opens, says so, refuses prompts (DDIT_ERR_BUNDLE);
    Python's aoti path keeps the word encoder on ONNX Runtime for it."""
    from ddit_export.runtime.backends.onnxruntime import OrtBundleBackend
    from ddit_export.runtime.bundle_model import open_bundle

    old = shutil.copytree(aoti_bundle, tmp_path / "old")
    d = json.loads((old / "manifest.json").read_text())
    d["aoti"].pop("text_encoder")
    (old / "manifest.json").write_text(json.dumps(d))
    rt = cpp_lib.open(old)
    try:
        info = cpp_lib.info(rt)
        assert (info.has_text_encoder, info.max_words, info.has_decoder) == (0, 0, 1)
        with pytest.raises(DDiTError) as e:
            _encode(cpp_lib, rt, PROMPTS[:1])
        assert e.value.code == 2 and "rebuild" in e.value.message
    finally:
        cpp_lib.close(rt)
    model, _ = open_bundle(old, backend="aoti")
    assert isinstance(model.backend, OrtBundleBackend)
    assert model.encode(PROMPTS[:1]).states.shape[0] == 1


def _decode(lib, rt, latents):
    info = lib.info(rt)
    latents = np.ascontiguousarray(latents, np.float32)
    b = latents.shape[0]
    pixels = np.zeros((b, info.height, info.width, 3), np.uint8)
    lib.call("ddit_decode", rt, fptr(latents), C.c_size_t(latents.size), b,
             pixels.ctypes.data_as(C.POINTER(C.c_uint8)), C.c_size_t(pixels.size))
    return pixels


def test_decode_equals_pixels_to_pil(cpp_lib, runtime, aoti_bundle):
    from ddit_export.images import pixels_to_pil
    from ddit_export.runtime.bundle_model import open_bundle

    model, _ = open_bundle(aoti_bundle)
    info = cpp_lib.info(runtime)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1.3, 1.3, (3, info.tokens, info.channels)).astype(np.float32)
    halves = ((np.arange(256) + 0.5) / 127.5 - 1).astype(np.float32)  # ties of the rounding, near enough
    x.reshape(-1)[: halves.size] = halves
    x[2, :4, :] = np.array([-1, 1, 0, -0.0], np.float32)[:, None]
    got = _decode(cpp_lib, runtime, x)
    want = np.stack([np.asarray(im) for im in pixels_to_pil(torch.from_numpy(x), model.geometry())])
    np.testing.assert_array_equal(got, want)
    with pytest.raises(DDiTError) as e:
        cpp_lib.call("ddit_decode", runtime, fptr(x), C.c_size_t(x.size - 1), 3,
                     got.ctypes.data_as(C.POINTER(C.c_uint8)), C.c_size_t(got.size))
    assert e.value.code == 1 and "latents" in e.value.message


def _ddit_run(build, *args):
    return subprocess.run([str(build / "ddit-run"), *map(str, args)], capture_output=True, text=True)


def _png(path):
    from PIL import Image

    with Image.open(path) as im:
        assert im.mode == "RGB"
        return np.asarray(im)


def test_ddit_run_prompts_bit_identical_to_python_aoti(cpp_build, cpp_lib, aoti_bundle, tmp_path):
    """`ddit-run --prompt A --prompt B --seed 0 --out x.png` == `ddit-export generate --bundle --backend aoti`
    with the same settings: the latents bit for bit, the images pixel for pixel, the same file names."""
    from ddit_export.api import generate_images

    result, paths = generate_images(bundle=aoti_bundle, backend="aoti", prompts=PROMPTS, seed=0, steps=STEPS,
                                    out=tmp_path / "py.png", warn=lambda line: None)
    threads = ["--threads", torch.get_num_threads()]  # the same intra-op threads as this process
    r = _ddit_run(cpp_build, aoti_bundle, "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--seed", 0, "--steps",
                  STEPS, "--out", tmp_path / "cpp.png", "--trace", tmp_path / "trace.json", *threads)
    assert r.returncode == 0, r.stderr
    assert [p.name for p in paths] == ["py_0.png", "py_1.png"]
    for i in range(2):
        np.testing.assert_array_equal(_png(tmp_path / f"cpp_{i}.png"), _png(paths[i]))
    trace = json.loads((tmp_path / "trace.json").read_text())
    assert [s["size"] for s in trace["steps"]] == result.trace.sizes
    r = _ddit_run(cpp_build, aoti_bundle, "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--seed", 0, "--steps",
                  STEPS, "--out", tmp_path / "lat.npy", *threads)
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "lat.npy"), result.latents.numpy())


def test_generate_with_prompts_equals_denoise_then_decode(cpp_lib, runtime):
    from tests.runtime.cpp_api import Request

    info = cpp_lib.info(runtime)
    states, pooled = _encode(cpp_lib, runtime, PROMPTS)
    latents = cpp_lib.denoise(runtime, states, pooled, steps=4, seed=2)
    want = _decode(cpp_lib, runtime, latents)
    q = Request(batch=2, steps=4, guidance=3.5, seed=2, prompts=_prompt_array(PROMPTS))
    pixels = np.zeros((2, info.height, info.width, 3), np.uint8)
    cpp_lib.call("ddit_generate", runtime, C.byref(q), pixels.ctypes.data_as(C.POINTER(C.c_uint8)),
                 C.c_size_t(pixels.size))
    np.testing.assert_array_equal(pixels, want)
    out = np.zeros_like(latents)
    cpp_lib.call("ddit_denoise", runtime, C.byref(q), fptr(out), C.c_size_t(out.size))
    np.testing.assert_array_equal(out, latents)
    q.states, q.states_len = fptr(states), states.size  # prompts and embeddings together: refused
    with pytest.raises(DDiTError) as e:
        cpp_lib.call("ddit_denoise", runtime, C.byref(q), fptr(out), C.c_size_t(out.size))
    assert e.value.code == 1 and "not both" in e.value.message
    bad = Request(batch=1, steps=4, guidance=3.5, prompts=_prompt_array(["a zebra"]))
    with pytest.raises(DDiTError) as e:
        cpp_lib.call("ddit_denoise", runtime, C.byref(bad), fptr(out), C.c_size_t(out.size // 2))
    assert e.value.code == 1 and e.value.message == "words not in the model's vocabulary: zebra"


def test_tau_alone_selects_the_rule(cpp_build, aoti_bundle, tmp_path):
    """As Python's --tau: over a profile of another policy (here a ladder), --tau alone runs the ddit rule."""
    ladder = shutil.copytree(aoti_bundle, tmp_path / "ladder")
    d = json.loads((ladder / "manifest.json").read_text())
    d["schedule"].update(policy="ladder", head=1, n4=2, tail=1)
    (ladder / "manifest.json").write_text(json.dumps(d))
    common = [ladder, "--prompt", PROMPTS[0], "--steps", 6]
    assert _ddit_run(cpp_build, *common, "--trace", tmp_path / "a.json").returncode == 0
    r = _ddit_run(cpp_build, *common, "--tau", "0.01", "--trace", tmp_path / "b.json")
    assert r.returncode == 0, r.stderr
    a = json.loads((tmp_path / "a.json").read_text())["steps"]
    b = json.loads((tmp_path / "b.json").read_text())["steps"]
    assert [s["size"] for s in a] == [1, 4, 4, 2, 2, 1]
    assert {s["reason"] for s in a} == {"static"}
    assert [s["reason"] for s in b][:3] == ["warmup"] * 3 and "static" not in {s["reason"] for s in b}


def _options():
    src = (ROOT / "runtime" / "cpp" / "examples" / "ddit_run.cpp").read_text()
    table = src[src.index("kOptions[] = {"):]
    return re.findall(r'\{"([a-z-]+)", Arg::', table[: table.index("};")])


def test_ddit_run_help_lists_every_option(cpp_build):
    names = _options()
    assert {"prompt", "steps", "tau", "out", "threads", "no-verify", "cache", "cache-threshold", "help"} <= set(names)
    r = _ddit_run(cpp_build, "--help")
    assert r.returncode == 0 and r.stderr == ""
    listed = re.findall(r"^\s+--([a-z-]+)", r.stdout, re.M)
    assert listed == names


@pytest.fixture(scope="module")
def npy(tmp_path_factory, cpp_lib, aoti_bundle):
    """Embedding files: good ones, a 127-float pooled array, NaN in the states; initial latents of the bundle's
    shape."""
    folder = tmp_path_factory.mktemp("npy")
    rt = cpp_lib.open(aoti_bundle)
    try:
        states, pooled = _encode(cpp_lib, rt, PROMPTS[:1])
        info = cpp_lib.info(rt)
    finally:
        cpp_lib.close(rt)
    np.save(folder / "states.npy", states)
    np.save(folder / "pooled.npy", pooled)
    np.save(folder / "pooled127.npy", np.zeros(127, np.float32))
    nan = states.copy()
    nan[0, 0, 0] = np.nan
    np.save(folder / "nan.npy", nan)
    np.save(folder / "latents.npy", np.random.default_rng(0).standard_normal((1, info.tokens, info.channels),
                                                                            np.float32))
    return folder


BAD = [
    (["--polcy", "ddit"], "unknown option --polcy"),
    (["--steps", "abc"], "--steps expects an integer, got 'abc'"),
    (["--steps", "-3"], "--steps must be >= 1, got -3"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--steps"], "--steps expects a value"),
    (["--steps", "--seed", "1"], "--steps expects a value"),
    (["--steps", "4", "--steps", "5"], "--steps given twice"),
    (["--seed", "1.5"], "--seed expects an integer, got '1.5'"),
    (["--tau", "0"], "--tau must be > 0"),
    (["--tau", "-1"], "--tau must be > 0"),
    (["--tau", "nan"], "--tau must be > 0 and finite, got nan"),
    (["--tau", "inf"], "--tau must be > 0 and finite"),
    (["--tau", "x"], "--tau expects a number, got 'x'"),
    (["--eps", "1"], "--eps must be in (0, 1)"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["--cache", "fast"], "--cache must be off or taylor"),
    (["--cache-order", "3"], "--cache-order must be 0, 1 or 2"),
    (["--cache-threshold", "0"], "--cache-threshold must be > 0"),
    (["--policy", "probe"], "--policy must be one of"),
    (["--policy", "ddit", "--ladder", "1,2,1"], "give one of --policy, --schedule"),
    (["--ladder", "1,2"], "--ladder takes HEAD,N4,TAIL"),
    (["--sizes", "1,x"], "--sizes expects integers separated by commas, got '1,x'"),
    (["--out", "{tmp}/missing/x.png"], "folder {tmp}/missing does not exist"),
    (["--trace", "{tmp}/missing/t.json"], "folder {tmp}/missing does not exist"),
    (["--out", "{tmp}/x.jpg"], "give a .png (image) or .npy (latents) path"),
    (["--prompt", "a zebra", "--out", "{tmp}/x.png"], "words not in the model's vocabulary: zebra"),
    (["--prompt", "3 cats"], "has characters this model's word tokenizer cannot read: '3'"),
    (["--prompt", "a red circle", "--states", "{npy}/states.npy", "--pooled", "{npy}/pooled.npy"], "not both"),
    (["extra"], "unexpected argument 'extra'"),
]
BAD_EMBEDDINGS = [
    (["--states", "{npy}/states.npy", "--pooled", "{npy}/pooled127.npy"], "--pooled has 127 floats"),
    (["--states", "{npy}/nan.npy", "--pooled", "{npy}/pooled.npy"], "NaN"),
    (["--states", "{npy}/states.npy"], "give both --states and --pooled"),
    (["--states", "{npy}/missing.npy", "--pooled", "{npy}/pooled.npy"], "cannot open"),
    (["--prompt", "a red circle", "--bench-steps", "1", "--latents", "{npy}/pooled.npy"],
     "--bench-steps with batch 1 takes"),
]


@pytest.mark.parametrize("args,needle", BAD + BAD_EMBEDDINGS, ids=range(len(BAD) + len(BAD_EMBEDDINGS)))
def test_ddit_run_bad_inputs(cpp_build, aoti_bundle, npy, tmp_path, args, needle):
    fill = lambda s: s.format(tmp=tmp_path, npy=npy)  # noqa: E731
    args = [fill(a) for a in args]
    given = {a for a in args if a.startswith("--")}
    if not given & {"--prompt", "--states", "--pooled"}:
        args = ["--prompt", "a red circle"] + args
    if "--steps" not in given:
        args += ["--steps", "2"]  # should it run after all, let it be short
    r = _ddit_run(cpp_build, aoti_bundle, *args)
    lines = r.stderr.splitlines()
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: ") and fill(needle) in lines[0], r.stderr
    assert r.stdout == ""


def test_ddit_run_bench_steps_on_noise_or_the_given_latents(cpp_build, aoti_bundle, npy):
    """`--bench-steps` times every size on the seed's noise, or on `--latents` when given: one JSON line each."""
    for extra in ([], ["--seed", "3"], ["--latents", npy / "latents.npy"]):
        r = _ddit_run(cpp_build, aoti_bundle, "--prompt", "a red circle", "--bench-steps", "1", *extra)
        assert r.returncode == 0, r.stderr
        line = next(l for l in r.stdout.splitlines() if l.startswith('{"batch"'))
        sizes = json.loads(line)["sizes"]
        assert sizes and all(v["step_s"] > 0 and v["after_switch_s"] > 0 for v in sizes.values()), sizes
