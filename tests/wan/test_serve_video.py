"""`serve` on a video bundle (issue 23 item 3), without Ray: the batch loop gives every job the clip `generate` makes
for its settings alone, requests take ``frames`` and get clips back (a GIF, or the frames as PNGs), and the video
and image bad inputs are one 400 message each."""
import base64

import numpy as np
import pytest

from ddit_export.api import build_settings
from ddit_export.errors import ConfigError
from ddit_export.runtime.generate import generate
from ddit_export.serve.batching import run_jobs
from ddit_export.serve.schemas import Job, decode_gif, decode_png, parse_request, response_body

P = ["a large red circle moving right on a black background", "a small blue square moving up on a white background"]


@pytest.fixture(scope="module")
def wan_runtime(wan_bundle):
    from ddit_export.runtime.bundle_model import open_bundle

    model, backend = open_bundle(wan_bundle, threads=1)
    yield model, backend
    backend.deactivate()


def _frames(clip):
    return np.stack([np.asarray(f) for f in clip])


def test_batched_clips_equal_generate(wan_runtime):
    """The profile, n=2, the rule and the step cache in one batch: each job's sizes and frames are generate's."""
    model, backend = wan_runtime
    jobs = [build_settings(model, prompts=[P[0]], seed=1, steps=10),
            build_settings(model, prompts=[P[1]] * 2, seed=2, steps=10),
            build_settings(model, prompts=[P[0]], seed=3, steps=10, policy="ddit:tau=0.003,video_std=frame"),
            build_settings(model, prompts=[P[1]], seed=4, steps=10, cache={"mode": "taylor", "interval": 3})]
    with backend:
        refs = [generate(model, backend, s, progress=False) for s in jobs]
        outs = run_jobs(model, backend, jobs)
    for ref, out in zip(refs, outs):
        assert not isinstance(out, BaseException), out
        assert out.trace.sizes == ref.trace.sizes and out.trace.kinds == ref.trace.kinds
        assert list(out.trace.grid) == [4, 8, 8]
        assert len(out.images) == len(ref.images)
        for a, b in zip(out.images, ref.images):
            assert len(a) == 8
            np.testing.assert_array_equal(_frames(a), _frames(b))


def test_requests_take_frames_and_answer_with_clips(wan_runtime):
    model, backend = wan_runtime
    job = parse_request({"prompt": P[0], "steps": 6, "frames": 8}, model)
    assert job.response_format == "b64_gif" and job.settings.frames == 8
    with backend:
        result = run_jobs(model, backend, [job.settings])[0]
    body = response_body(job, result, model.name, {})
    entry = body["data"][0]
    assert entry["frames"] == 8 and list(body["trace"]["grid"]) == [4, 8, 8]
    gif = decode_gif(entry["b64_gif"])
    assert len(gif) == 8
    ref = _frames(result.images[0]).astype(np.float64)
    mse = np.mean((np.stack([np.asarray(f) for f in gif]).astype(np.float64) - ref) ** 2)
    assert 10 * np.log10(255 ** 2 / max(mse, 1e-12)) > 25  # a GIF's palette, not the clip's exact colours
    png = response_body(Job(job.settings, response_format="b64_json"), result, model.name, {})["data"][0]
    assert len(png["b64_json_frames"]) == 8
    np.testing.assert_array_equal(np.stack([np.asarray(decode_png(b)) for b in png["b64_json_frames"]]),
                                  _frames(result.images[0]))
    assert base64.b64decode(entry["b64_gif"])[:6] in (b"GIF87a", b"GIF89a")


@pytest.mark.parametrize("body, needle", [
    ({"prompt": P[0], "frames": 7}, "built for 8 frames"),
    ({"prompt": P[0], "frames": 0}, "frames"),
    ({"prompt": P[0], "response_format": "url"}, "use b64_gif"),
    ({"prompt": P[0], "frames": "8"}, "'frames' must be an integer"),
])
def test_bad_video_requests(wan_runtime, body, needle):
    with pytest.raises(ConfigError) as e:
        parse_request(body, wan_runtime[0])
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_an_image_service_refuses_video_fields(tiny_bundle):
    from ddit_export.runtime.bundle_model import open_bundle

    model, _ = open_bundle(tiny_bundle, threads=1)
    for body, needle in [({"prompt": "a red circle", "frames": 8}, "applies to video"),
                         ({"prompt": "a red circle", "response_format": "b64_gif"}, "use b64_json")]:
        with pytest.raises(ConfigError) as e:
            parse_request(body, model)
        assert needle in str(e.value), e.value
