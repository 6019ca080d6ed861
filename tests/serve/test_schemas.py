"""Request validation (no Ray): the HTTP 400 message is the CLI's error line for the same input."""
import pytest
from click.testing import CliRunner

from ddit_export.bundle import load
from ddit_export.cli import main
from ddit_export.errors import ConfigError, DDiTError
from ddit_export.runtime.bundle_model import BundleModel
from ddit_export.serve.schemas import Limits, decode_png, parse_request, parse_size


@pytest.fixture(scope="module")
def manifest_model(flux_mini_bundle):
    """What the front end validates with: the manifest only, no ONNX Runtime session."""
    return BundleModel("flux-mini", load(flux_mini_bundle, hashes=False), None)


# (request body, the same input as generate's CLI options)
SAME_AS_CLI = [
    ({"steps": 0}, ["--steps", "0"]),
    ({"seed": -1}, ["--seed", "-1"]),
    ({"tau": -1}, ["--tau", "-1"]),
    ({"eps": 1.5}, ["--eps", "1.5"]),
    ({"schedule": "4,4"}, ["--schedule", "4,4"]),
    ({"schedule": "4,x"}, ["--schedule", "4,x"]),
    ({"sizes": "1,3"}, ["--sizes", "1,3"]),
    ({"sizes": [1, 8]}, ["--sizes", "1,8"]),
    ({"prompt": "3 cats"}, ["--prompt", "3 cats"]),
    ({"prompt": "a zebra"}, ["--prompt", "a zebra"]),
    ({"size": "64x64"}, ["--height", "64", "--width", "64"]),
    ({"policy": "ladder:n4=30"}, ["--policy", "ladder:n4=30"]),
    ({"cache_interval": 0}, ["--cache-interval", "0"]),
    ({"coarse_first": "3:8"}, ["--coarse-first", "3:8"]),
]


@pytest.mark.parametrize("body,cli", SAME_AS_CLI, ids=[str(b) for b, _ in SAME_AS_CLI])
def test_http_message_is_the_cli_message(manifest_model, flux_mini_bundle, tmp_path, body, cli):
    with pytest.raises(DDiTError) as e:
        parse_request(body, manifest_model)
    r = CliRunner().invoke(main, ["generate", "--bundle", str(flux_mini_bundle), "--out", str(tmp_path / "x.png"),
                                  *cli])
    assert r.exit_code == 2
    assert r.output.strip().splitlines()[-1] == f"error: {e.value}"


@pytest.mark.parametrize("body,match", [
    ({"foo": 1}, "unknown field"), ({"n": 9}, r"n must be in \[1, 4\]"), ({"seed": True}, "must be an integer"),
    ({"tau": "x"}, "must be a number"), ({"response_format": "url"}, "b64_json"), ({"model": "other"}, "not served"),
    ({"size": "big"}, "WIDTHxHEIGHT"), ({"timeout": 0}, "timeout"), ({"steps": 999}, "steps must be <="),
    ([1, 2], "JSON object"), ({"size": "32x32", "height": 32}, "not both"),
    ({"cache_switch": 1}, "must be true/false"),
])
def test_request_only_errors(manifest_model, body, match):
    with pytest.raises(DDiTError, match=match):
        parse_request(body, manifest_model, Limits())


def test_valid_request_gives_the_generate_settings(manifest_model):
    job = parse_request({"prompt": "a red circle", "n": 2, "size": "32x32", "seed": 3, "policy": "ddit",
                         "trace": False}, manifest_model)
    s = job.settings
    assert s.prompts == ("a red circle",) * 2 and s.seed == 3 and s.schedule.policy == "ddit"
    assert (job.n, job.trace) == (2, False)
    default = parse_request({}, manifest_model).settings
    assert default.prompts == (manifest_model.default_prompt,) and default.schedule.policy == "ladder"
    assert parse_size("48x32") == (32, 48)
    cached = parse_request({"cache_interval": 5, "cache_switch": True}, manifest_model).settings.cache
    assert (cached.mode, cached.interval, cached.switch) == ("taylor", 5, True)


def test_png_round_trip():
    from PIL import Image

    from ddit_export.serve.schemas import png_b64

    im = Image.new("RGB", (4, 3), (10, 20, 30))
    assert list(decode_png(png_b64(im)).getdata()) == list(im.getdata())


def test_body_parsing_depth_and_message_cap():
    from ddit_export.errors import ConfigError
    from ddit_export.serve.schemas import (MAX_JSON_DEPTH, MAX_MESSAGE_CHARS, error_body, is_json_content_type,
                                           parse_json_body)

    assert parse_json_body(b'{"schedule": [1, 2]}') == {"schedule": [1, 2]}
    for depth in (MAX_JSON_DEPTH + 1, 100_000):  # past json's own recursion limit: no RecursionError
        with pytest.raises(ConfigError, match="nested too deeply"):
            parse_json_body(b"[" * depth + b"]" * depth)
    with pytest.raises(ConfigError, match="not valid JSON"):
        parse_json_body(b"\xff{")
    msg = error_body("words not in the model's vocabulary: " + "z" * 1_000_000)["error"]["message"]
    assert len(msg) < MAX_MESSAGE_CHARS + 100 and msg.endswith("more characters)")
    assert is_json_content_type(None) and is_json_content_type("application/json; charset=utf-8")
    assert is_json_content_type("application/merge-patch+json")
    assert not is_json_content_type("text/plain") and not is_json_content_type("application/x-www-form-urlencoded")


def test_policy_fine_in_a_request(manifest_model):
    from ddit_export.serve.schemas import _check_schedule

    job = parse_request({"policy": "fine", "steps": 6}, manifest_model)
    assert job.settings.schedule.policy == "fine"
    _check_schedule(job.settings, manifest_model)


def test_carry_in_a_request(manifest_model):
    """The HTTP field ``carry`` (runtime/carry.py) as generate --carry; a bad value is the CLI's one-line error."""
    job = parse_request({"schedule": "1,2,1,2,1,1", "steps": 6, "carry": "fine"}, manifest_model)
    assert job.settings.schedule.carry == "fine"
    assert parse_request({"schedule": "1,2,1,2,1,1", "steps": 6}, manifest_model).settings.schedule.carry == "off"
    with pytest.raises(ConfigError, match="carry must be one of off, fine, got 'sideways'"):
        parse_request({"steps": 6, "carry": "sideways"}, manifest_model)
    with pytest.raises(ConfigError, match="carry"):
        parse_request({"steps": 6, "carry": 1}, manifest_model)
