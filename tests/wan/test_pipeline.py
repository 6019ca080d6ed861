"""The WanPipeline drop-in: ``pipe.transformer = DDiTWanTransformer(...)`` on a tiny random Wan 2.1 pipeline."""
import pytest
import torch

from ddit_export.errors import ConfigError
from ddit_export.settings import ScheduleSettings


def _pipe(wan_dir):
    from diffusers import WanPipeline

    return WanPipeline.from_pretrained(str(wan_dir), local_files_only=True)


def _run(pipe, steps=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return pipe("a red circle", num_frames=5, height=32, width=32, num_inference_steps=steps, guidance_scale=3.0,
                generator=g, output_type="np").frames[0]


def _wrap(pipe, schedule):
    from ddit_export.models.wan import MultiPatchWan
    from ddit_export.runtime.pipeline_wan import DDiTWanTransformer

    trunk = pipe.transformer
    if isinstance(trunk, DDiTWanTransformer):
        trunk = trunk.model.unwrap()
    return DDiTWanTransformer(MultiPatchWan(trunk), schedule, scheduler=pipe.scheduler)


def test_all_fine_schedule_is_bit_exact_and_coarse_steps_happen(wan_dir):
    pipe = _pipe(wan_dir)
    ref = _run(pipe)
    pipe.transformer = _wrap(pipe, ScheduleSettings(tau=1e-12))  # the rule never passes: every step fine
    same = _run(pipe)
    assert pipe.transformer.trace.sizes == [1] * 6
    assert (same == ref).all()
    pipe.transformer = _wrap(pipe, ScheduleSettings(tau=1e9))  # always passes after the warm-up
    coarse = _run(pipe)
    sizes = pipe.transformer.trace.sizes
    assert len(sizes) == 6 and sizes[:3] == [1, 1, 1] and max(sizes[3:]) > 1  # one decision per step (CFG shares)
    assert coarse.shape == ref.shape and not (coarse == ref).all()


def test_image_to_video_inputs_are_refused(wan_dir):
    pipe = _pipe(wan_dir)
    wrapped = _wrap(pipe, ScheduleSettings())
    x = torch.randn(1, pipe.transformer.config.in_channels, 2, 4, 4)
    with pytest.raises(ConfigError, match="image-to-video"):
        wrapped(x, torch.tensor([500.0]), torch.randn(1, 3, pipe.transformer.config.text_dim),
                encoder_hidden_states_image=torch.randn(1, 2, 8))


def test_a_saved_wrapped_pipeline_loads_back_wrapped_with_its_schedule_and_scheduler(wan_dir, tmp_path):
    import json

    from diffusers import WanPipeline, WanTransformer3DModel

    from ddit_export.runtime.pipeline_wan import DDiTWanTransformer

    pipe = _pipe(wan_dir)
    pipe.set_progress_bar_config(disable=True)
    pipe.transformer = _wrap(pipe, ScheduleSettings(tau=1e9, warmup=4))
    with torch.no_grad():  # adapters that differ from their initialisation, so a dropped file would show
        for p in pipe.transformer.model.adapter_parameters():
            p.add_(0.01 * torch.randn_like(p))
    ref = _run(pipe)
    ref_sizes = pipe.transformer.trace.sizes
    assert max(ref_sizes) > 1
    pipe.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["transformer"] == [
        "ddit_export.runtime.pipeline_wan", "DDiTWanTransformer"]

    back = WanPipeline.from_pretrained(str(tmp_path), local_files_only=True)
    back.set_progress_bar_config(disable=True)
    assert isinstance(back.transformer, DDiTWanTransformer)
    assert vars(back.transformer.schedule) == vars(pipe.transformer.schedule)
    assert type(back.scheduler) is type(pipe.scheduler) and dict(back.scheduler.config) == dict(pipe.scheduler.config)
    out = _run(back)
    assert back.transformer.scheduler is back.scheduler  # the wrapper follows its pipeline's scheduler again
    assert back.transformer.trace.sizes == ref_sizes
    assert torch.equal(torch.as_tensor(out), torch.as_tensor(ref))
    _run(back, steps=5)  # a second generation starts a fresh history (the scheduler's step_index says so)
    assert len(back.transformer.trace.steps) == 5

    # the transformer folder alone, passed to the pipeline by hand; and the trunk loads as a plain Wan transformer
    alone = DDiTWanTransformer.from_pretrained(tmp_path / "transformer")
    again = WanPipeline.from_pretrained(str(tmp_path), transformer=alone, local_files_only=True)
    again.set_progress_bar_config(disable=True)
    assert torch.equal(torch.as_tensor(_run(again)), torch.as_tensor(ref))
    plain = WanTransformer3DModel.from_pretrained(tmp_path / "transformer")
    for k, v in pipe.transformer.model.trunk.state_dict().items():
        assert torch.equal(plain.state_dict()[k], v), k

    # --model wan --weights on the saved folder: the trunk under the project's own wrapper, the saved schedule as
    # the model's default, the saved adapters (every weight equal)
    from ddit_export.models.registry import load_config_only, load_model

    loaded = load_model("wan", tmp_path)
    assert type(loaded.transformer.trunk) is WanTransformer3DModel
    assert loaded.schedule_defaults == pipe.transformer.schedule == load_config_only("wan", tmp_path).schedule_defaults
    for k, v in pipe.transformer.model.state_dict().items():
        assert torch.equal(loaded.transformer.state_dict()[k], v), k
