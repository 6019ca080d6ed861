import pytest
import torch

from ddit_export.models.flux import MultiPatchFlux
from ddit_export.runtime.pipeline import DDiTTransformer
from ddit_export.settings import AdapterSettings, ScheduleSettings
from tests.helpers import tiny_flux_pipeline


@pytest.fixture(scope="module")
def pipe():
    return tiny_flux_pipeline()


def _call(pipe, steps=8):
    return pipe("a red cat", height=64, width=64, num_inference_steps=steps, output_type="latent",
                generator=torch.Generator().manual_seed(0)).images


def test_drop_in_is_exact_when_it_stays_fine_and_switches_sizes_otherwise(pipe):
    original = pipe.transformer
    ref = _call(pipe)
    model = MultiPatchFlux(original, adapter=AdapterSettings(rank=4))
    try:
        pipe.transformer = DDiTTransformer(model, ScheduleSettings(tau=1e-12))
        same = _call(pipe)
        assert pipe.transformer.trace.sizes == [1] * 8
        torch.testing.assert_close(same, ref, rtol=0, atol=1e-6)

        pipe.transformer = DDiTTransformer(model, ScheduleSettings(tau=10.0))
        out = _call(pipe)
        sizes = pipe.transformer.trace.sizes
        assert sizes[:3] == [1, 1, 1] and set(sizes[3:]) == {4}
        assert not torch.allclose(out, ref)
        _call(pipe, steps=6)  # a second generation starts a fresh history and trace
        assert len(pipe.transformer.trace.steps) == 6
    finally:
        pipe.transformer = original


def test_drop_in_refuses_a_policy_it_would_silently_ignore():
    import pytest

    from ddit_export.errors import ConfigError
    from ddit_export.runtime.pipeline import DDiTTransformer
    from ddit_export.settings import ScheduleSettings

    with pytest.raises(ConfigError, match="ladder"):
        DDiTTransformer(None, ScheduleSettings(policy="ladder", n4=4, tail=4))
