import numpy as np
import pytest
import torch

from ddit_export.runtime.backends.torch import TorchBackend
from ddit_export.runtime.generate import generate
from ddit_export.settings import GenerateSettings, ScheduleSettings


def run(model, **kw):
    kw.setdefault("prompts", ("a red circle",))
    with TorchBackend(model.transformer) as backend:
        return generate(model, backend, GenerateSettings(**kw), progress=False)


def test_dynamic_schedule_changes_sizes_and_traces_every_step(tiny_model):
    r = run(tiny_model, steps=12, schedule=ScheduleSettings(tau=0.01))
    t = r.trace
    assert len(t.steps) == 12 and t.sizes[:3] == [1, 1, 1]
    assert len(set(t.sizes)) > 1, t.sizes
    assert all(s.reason == "warmup" for s in t.steps[:3]) and all(s.sigmas for s in t.steps[3:])
    for s in t.steps:
        assert s.tokens == 256 // s.size**2
        assert s.size == 1 or all(v < 0.01 for k, v in s.sigmas.items() if k == s.size)
    assert t.flops_ratio < 1
    assert r.images[0].size == (32, 32)
    timesteps = [s.timestep for s in t.steps]
    assert timesteps[0] == pytest.approx(1.0) and all(a > b for a, b in zip(timesteps, timesteps[1:]))


def test_same_seed_same_image_and_seed_matters(tiny_model):
    a = run(tiny_model, steps=5, seed=3, static=(1, 2, 4, 2, 1))
    b = run(tiny_model, steps=5, seed=3, static=(1, 2, 4, 2, 1))
    c = run(tiny_model, steps=5, seed=4, static=(1, 2, 4, 2, 1))
    assert torch.equal(a.latents, b.latents) and not torch.equal(a.latents, c.latents)
    assert a.trace.sizes == [1, 2, 4, 2, 1]


def test_batch_of_prompts(tiny_model):
    r = run(tiny_model, prompts=("a red circle", "a blue square"), steps=4, schedule=ScheduleSettings(tau=0.01))
    assert r.latents.shape == (2, 256, 12) and len(r.images) == 2


def test_matches_diffusers_flux_pipeline_when_all_fine(flux_dir):
    """The runtime's loop (noise, shifted sigmas, Euler steps) reproduces FluxPipeline step for step."""
    from diffusers import FluxPipeline

    from ddit_export.models.registry import load_model

    pipe = FluxPipeline.from_pretrained(flux_dir, local_files_only=True)
    ref = pipe("a red cat", height=64, width=64, num_inference_steps=6, guidance_scale=3.5, output_type="latent",
               generator=torch.Generator().manual_seed(7)).images
    m = load_model("flux", flux_dir)
    r = run(m, prompts=("a red cat",), steps=6, height=64, width=64, seed=7, static=(1,) * 6)
    np.testing.assert_allclose(r.latents.numpy(), ref.numpy(), atol=1e-5)


@pytest.mark.parametrize("detail,extra_fine", [(1e9, 0), (0.0, 2)])
def test_probe_policy_reads_x0_after_its_first_step_and_is_traced(tiny_model, detail, extra_fine):
    sched = ScheduleSettings(policy="probe", head=0, n4=1, tail=2, extra=2, detail=detail)
    s = GenerateSettings(prompts=("a red circle",), steps=8, schedule=sched)
    with TorchBackend(tiny_model.transformer) as b:
        r = generate(tiny_model, b, s, progress=False, decode=False)
    tail = 2 + extra_fine
    assert r.trace.sizes == [4] + [2] * (7 - tail) + [1] * tail
    assert r.trace.steps[1].sigmas[2] > 0  # the measured signal, from the step-0 velocity the loop handed over
    assert r.trace.settings["generate"]["schedule"]["policy"] == "probe"
