"""scripts/coarse_ceiling.py (issue 19): the ceiling a coarse head's shape puts on its adapters."""

import torch

from tests.helpers import load_script


def _script():
    return load_script("coarse_ceiling")


def _calls(velocity, grid=(8, 8), n=40, c=3, seed=0):  # 640 blocks of 12 values: far more than 25 features
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        lat = torch.randn(1, grid[0] * grid[1], c, generator=g)
        out.append((lat, 0.05 + 0.9 * i / n, velocity(lat, g), grid))
    return out


def test_the_fit_misses_nothing_a_head_can_hold_and_what_it_cannot():
    s = _script()
    # k=2 blocks hold 4*3 = 12 values. A velocity that is a linear map of the latent: the residual maps hold it all
    lin = torch.randn(3, 3, dtype=torch.float64)
    _, _, miss, dims = s.fit(_calls(lambda lat, g: (lat.double() @ lin).float()), 2, 1)
    assert dims == 12 and miss < 1e-10
    # noise unrelated to the latent: a d-wide head keeps about d of its 12 directions, never more
    noise = _calls(lambda lat, g: torch.randn(lat.shape, generator=g))
    misses = [s.fit(noise, 2, d)[2] for d in (2, 6, 12)]
    assert misses[0] > misses[1] > 0.05 and misses[2] < 1e-10


def test_the_ceiling_backend_returns_the_fine_velocity_at_size_one_and_its_projection_when_coarse():
    s = _script()

    class Fine:
        sizes = (1, 2)

        def run(self, size, latents, cond, timestep, guidance, grid):
            assert size == 1  # the ceiling only ever asks the fine size
            return latents * 2 + 1

    calls = _calls(lambda lat, g: lat * 2 + 1)
    w, u, miss, _ = s.fit(calls, 2, 4)
    be = s._Ceiling(Fine(), {2: (w, u)})
    lat = calls[0][0]
    t = torch.tensor([0.3])
    assert torch.equal(be.run(1, lat, None, t, None, (8, 8)), lat * 2 + 1)
    assert torch.allclose(be.run(2, lat, None, t, None, (8, 8)), lat * 2 + 1, atol=1e-5)  # linear in x: exact
