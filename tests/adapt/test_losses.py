"""The training schedule: learning rate shape and the (seed, step)-pure batches that make resumes exact."""
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
