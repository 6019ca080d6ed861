"""The training schedule: learning rate shape and the (seed, step)-pure batches that make resumes exact; the
distillation objective (full, or the coarse sizes' block means only)."""
import contextlib
import math

import pytest
import torch

from ddit_export.adapt.losses import batch_indices, lr_at
from ddit_export.settings import AdaptSettings


def test_lr_warms_up_holds_then_decays():
    s = AdaptSettings(steps=100, lr=1e-2, lr_warmup=10)
    assert lr_at(s, 0, 0.0) == 1e-2 / 10
    assert lr_at(s, 50, 0.5) == 1e-2
    assert lr_at(s, 85, 0.85) < 1e-2
    assert abs(lr_at(s, 99, 1.0) - 0.05e-2) < 1e-12  # the floor: min_frac of the peak


def test_batches_depend_on_seed_and_step_only():
    s = AdaptSettings(steps=10, batch=8, seed=5)
    a = batch_indices(s, 3, 1000)
    torch.manual_seed(123)  # the global RNG does not matter
    assert torch.equal(a, batch_indices(s, 3, 1000))
    assert not torch.equal(a, batch_indices(s, 4, 1000))
    assert a.shape == (8,) and int(a.max()) < 1000


@pytest.mark.parametrize("grid, latent_channels, sub", [((4, 4), 3, 4), ((2, 4, 4), 3, 1)], ids=["image", "video"])
def test_blocks_objective_reads_only_the_coarse_sizes_block_means(monkeypatch, grid, latent_channels, sub):
    """``--objective blocks`` scores the block means of (student - teacher) only (what a carried step keeps): an
    error with zero mean in every k x k block costs nothing there and its full MSE under ``full``; an error
    constant in each block costs the same under both. Both token layouts: FLUX's (channels first) and Wan's."""
    from types import SimpleNamespace

    from ddit_export.adapt import losses as L
    from ddit_export.adapt.trajectories import Trajectories
    from ddit_export.runtime.carry import block_mean

    n, ct, k = math.prod(grid), latent_channels * sub, 2
    g = torch.Generator().manual_seed(0)
    target, noise = torch.randn(2, n, ct, generator=g), torch.randn(2, n, ct, generator=g)
    means = block_mean(noise, grid, k, sub, channels_first=len(grid) == 2)
    zeros = torch.zeros(2)
    data = Trajectories(torch.zeros(2, n, ct), target, zeros, zeros.long(), zeros.long(), zeros.bool())
    loaded = SimpleNamespace(transformer=SimpleNamespace(device="cpu", dtype=torch.float32),
                             latent_channels=latent_channels)
    bank = SimpleNamespace(take=lambda idx, device: None)
    idx = torch.arange(2)
    for error, blocks_loss in ((noise - means, 0.0), (means, float(torch.mean(means ** 2)))):
        monkeypatch.setattr(L, "velocity", lambda *a, e=error: target + e)
        full = L.distill_losses(loaded, data, bank, idx, [k], grid, None, contextlib.nullcontext())[k]
        blocks = L.distill_losses(loaded, data, bank, idx, [k], grid, None, contextlib.nullcontext(), "blocks")[k]
        assert float(full) == pytest.approx(float(torch.mean(error ** 2)), rel=1e-5) and float(full) > 0.01
        assert float(blocks) == pytest.approx(blocks_loss, abs=1e-6, rel=1e-5)


def test_objective_is_checked_and_a_run_field():
    from ddit_export.adapt.checkpoint import RUN_FIELDS, changed_run_fields, run_settings
    from ddit_export.errors import ConfigError

    with pytest.raises(ConfigError, match="objective must be one of full, blocks"):
        AdaptSettings(steps=1, objective="means")
    saved = run_settings(AdaptSettings(steps=1))
    assert "objective" in RUN_FIELDS and changed_run_fields(saved, AdaptSettings(steps=1, objective="blocks")) == [
        "objective"]
    del saved["objective"]  # a run from before the option trained the full objective
    assert changed_run_fields(saved, AdaptSettings(steps=1)) == []
