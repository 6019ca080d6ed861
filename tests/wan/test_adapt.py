"""Self-distillation of the Wan coarse sizes with ``adapt`` (the trainer is the FLUX one; the contract differs)."""
import torch


def test_adapt_trains_wan_adapters_that_load_back(tmp_path):
    from ddit_export.adapt import adapt
    from ddit_export.models.registry import load_model
    from ddit_export.settings import AdaptSettings

    out = tmp_path / "adapters.safetensors"
    s = AdaptSettings(model="tiny-wan", rank=4, steps=3, batch=4, num_prompts=4, sample_steps=4, eval_images=0,
                      work=str(tmp_path / "work"), out=str(out), lr=1e-2)
    result = adapt(s, progress=False, log=lambda *a: None)
    assert out.is_file()
    m = load_model("tiny-wan", adapters=out)
    assert m.transformer.family == "wan" and m.transformer.adapter_settings.rank == 4
    fresh = load_model("tiny-wan", adapter=m.transformer.adapter_settings)  # same seed, untrained adapters
    before = fresh.transformer.adapter_state_dict()
    moved = [k for k, a in m.transformer.adapter_state_dict().items() if not torch.equal(a, before[k])]
    assert any(k.startswith("stems.") for k in moved) and any(k.startswith("loras.") for k in moved)
    assert result.state["step"] == 3
