import json

from click.testing import CliRunner

from ddit_export.cli import main


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_build_inspect_validate_generate(tmp_path, tiny_bundle):
    out = tmp_path / "b"
    r = invoke("build", "--model", "tiny", "--sizes", "1,2", "--out", out)
    assert r.exit_code == 0, r.output
    assert "k=2: 64 tokens, ONNX vs torch max abs diff" in r.output and (out / "manifest.json").is_file()
    r = invoke("inspect", out)
    assert r.exit_code == 0 and "all sha256 verified" in r.output and "8x8" in r.output
    r = invoke("validate", out)
    assert r.exit_code == 0 and "bundle valid" in r.output
    r = invoke("validate", out, "--tol", "0")  # a strict tolerance must fail with exit code 1
    assert r.exit_code == 1 and "FAIL" in r.output
    img, trace = tmp_path / "i.png", tmp_path / "t.json"
    r = invoke("generate", "--bundle", tiny_bundle, "--steps", 12, "--out", img, "--trace", trace)
    assert r.exit_code == 0, r.output
    assert img.is_file() and len(json.loads(trace.read_text())["steps"]) == 12


def test_bundle_errors_are_one_line(bundle_copy, tmp_path):
    (bundle_copy / "weights.bin").write_bytes(b"\0")
    for args in (["inspect", bundle_copy], ["validate", bundle_copy], ["generate", "--bundle", bundle_copy],
                 ["inspect", tmp_path / "nothing"]):
        r = invoke(*args)
        assert r.exit_code == 2, (args, r.output)
        assert r.output.startswith("error: ") and len(r.output.strip().splitlines()) == 1
    r = invoke("build", "--model", "tiny", "--backend", "trt", "--out", tmp_path / "x")
    assert r.exit_code == 2 and "TensorRT" in r.output


def test_flux_folder_bundle_holds_the_transformer_and_needs_weights_to_generate(flux_dir, tmp_path):
    out = tmp_path / "flux"
    r = invoke("build", "--model", "flux", "--weights", flux_dir, "--height", 64, "--width", 64, "--sizes", "1,2",
               "--text-len", 16, "--out", out)
    assert r.exit_code == 0, r.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["model"]["kind"] == "flux" and m["text_encoder"] is None and m["model"]["guidance_embeds"]
    assert [i["name"] for i in m["variants"][0]["inputs"]][-1] == "guidance"
    r = invoke("generate", "--bundle", out, "--steps", 4)
    assert r.exit_code == 2 and "--weights" in r.output
    r = invoke("generate", "--bundle", out, "--weights", flux_dir, "--steps", 5, "--tau", 10, "--prompt", "a red cat",
               "--out", tmp_path / "f.png")
    assert r.exit_code == 0, r.output
    assert "sizes per step: 1,1,1,2,2" in r.output and (tmp_path / "f.png").is_file()


def test_tensorrt_is_used_only_when_possible_and_falls_back_only_when_asked(tiny_bundle, tmp_path):
    r = invoke("generate", "--bundle", tiny_bundle, "--backend", "tensorrt", "--out", tmp_path / "a.png")
    assert r.exit_code == 2 and r.output.startswith("error: ") and len(r.output.strip().splitlines()) == 1
    r = invoke("generate", "--bundle", tiny_bundle, "--backend", "tensorrt", "--fallback-ort", "--steps", 4,
               "--out", tmp_path / "b.png")
    assert r.exit_code == 0, r.output
    assert "falling back to ONNX Runtime" in r.output and (tmp_path / "b.png").is_file()
    r = invoke("generate", "--model", "tiny", "--backend", "onnxruntime", "--out", tmp_path / "c.png")
    assert r.exit_code == 2 and "--bundle" in r.output


def _profile(path, model="tiny", **extra):
    import dataclasses

    from ddit_export.settings import CacheSettings, ScheduleSettings

    schedule = dataclasses.asdict(ScheduleSettings(policy="ladder", head=2, n4=0, tail=3, carry="fine"))
    cache = CacheSettings(mode="taylor", interval=3, switch=True).to_dict()
    d = dict(format="ddit-schedule-profile/1", model=model, policy="ladder:head=2,n4=0,tail=3,carry=fine",
             schedule=schedule, cache=cache, resolution=[32, 32], measured={"flops_ratio": 0.5}, **extra)
    path.write_text(json.dumps(d))
    return d


def test_build_profile_becomes_the_bundles_defaults(tmp_path):
    """build --profile: a calibrated profile's schedule and step cache are what the bundle runs by default."""
    prof, out = tmp_path / "p.json", tmp_path / "b"
    d = _profile(prof)
    r = invoke("build", "--model", "tiny", "--sizes", "1,2", "--out", out, "--profile", prof)
    assert r.exit_code == 0, r.output
    assert "bundle defaults from the profile: ladder:head=2,n4=0,tail=3" in r.output
    assert "one step in 3 computed, switch refresh" in r.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["schedule"] == d["schedule"] and m["cache"] == d["cache"]
    assert m["calibration"]["measured"] == {"flops_ratio": 0.5}
    r = invoke("generate", "--bundle", out, "--steps", 8, "--out", tmp_path / "i.png", "--trace", tmp_path / "t.json")
    assert r.exit_code == 0, r.output
    steps = json.loads((tmp_path / "t.json").read_text())["steps"]
    assert [s["size"] for s in steps][:2] == [1, 1] and "cached" in {s["kind"] for s in steps}


def test_build_profile_refusals_come_before_the_export(tmp_path):
    prof, out = tmp_path / "p.json", tmp_path / "b"
    cases = [("missing", None), ("not json", "{"), ("not a profile", json.dumps({"format": "x"}))]
    for why, text in cases:
        if text is not None:
            prof.write_text(text)
        elif prof.exists():
            prof.unlink()
        r = invoke("build", "--model", "tiny", "--sizes", "1,2", "--out", out, "--profile", prof)
        assert r.exit_code == 2 and r.output.startswith("error: --profile"), (why, r.output)
    _profile(prof, model="flux-mini")
    r = invoke("build", "--model", "tiny", "--out", out, "--profile", prof)
    assert r.exit_code == 2 and "calibrated on 'flux-mini', not on 'tiny'" in r.output
    _profile(prof, frames=8)
    r = invoke("build", "--model", "tiny", "--out", out, "--profile", prof)
    assert r.exit_code == 2 and "a video model's profile" in r.output
    d = _profile(prof)
    prof.write_text(json.dumps({**d, "cache": {"mode": "taylor", "interval": 0}}))
    r = invoke("build", "--model", "tiny", "--out", out, "--profile", prof)
    assert r.exit_code == 2 and "interval" in r.output
    assert not out.exists()


def test_generate_profile_runs_its_schedule_and_cache_with_flags_over_it(tmp_path):
    """generate --profile: the profile's schedule and step cache instead of the model's (a bundle's cache included),
    --cache options over it; a profile of another model is refused before anything loads."""
    prof, trace = tmp_path / "p.json", tmp_path / "t.json"
    _profile(prof)

    def run(*extra):
        r = invoke("generate", "--model", "tiny", "--steps", 8, "--profile", prof, "--out", tmp_path / "i.png",
                   "--trace", trace, *extra)
        assert r.exit_code == 0, r.output
        return [(s["size"], s["kind"]) for s in json.loads(trace.read_text())["steps"]]

    steps = run()
    assert [k for k, _ in steps] == [1, 1, 2, 2, 2, 1, 1, 1] and "cached" in {k for _, k in steps}
    assert "cached" not in {k for _, k in run("--cache", "off")}
    assert [k for _, k in run("--cache-interval", "1")].count("cached") == 0
    d = _profile(prof)
    prof.write_text(json.dumps({**d, "cache": None}))  # measured without a cache: the cache is off
    assert "cached" not in {k for _, k in run()}
    assert "cached" in {k for _, k in run("--cache-interval", "3")}  # a cache knob alone turns it on
    _profile(prof, model="flux-mini")
    r = invoke("generate", "--model", "tiny", "--profile", prof, "--out", tmp_path / "j.png")
    assert r.exit_code == 2 and "not on 'tiny'" in r.output and not (tmp_path / "j.png").exists()


def test_generate_profile_over_a_bundle_with_a_cache(tmp_path, tiny_bundle):
    import shutil

    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    m = json.loads((b / "manifest.json").read_text())
    m["cache"] = {"mode": "taylor", "interval": 3}
    (b / "manifest.json").write_text(json.dumps(m))
    prof, trace = tmp_path / "p.json", tmp_path / "t.json"
    d = _profile(prof, model=m["model"]["name"])
    prof.write_text(json.dumps({**d, "cache": None}))

    def kinds(*extra):
        r = invoke("generate", "--bundle", b, "--steps", 8, "--out", tmp_path / "i.png", "--trace", trace, *extra)
        assert r.exit_code == 0, r.output
        return {s["kind"] for s in json.loads(trace.read_text())["steps"]}

    assert "cached" in kinds()  # the bundle's cache
    assert "cached" not in kinds("--profile", prof)  # the profile was measured without one
