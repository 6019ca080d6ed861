"""scripts/temporal_merge.py (issue 23 item 2): the temporal-merge geometry, and its spatial variants are the
product's spatial sizes (the comparison is against what ships)."""

import torch

from tests.helpers import load_script


def _script():
    return load_script("temporal_merge")


def test_merge_is_inverted_and_groups_two_frames():
    s = _script()
    grid = (4, 8, 8)
    x = torch.randn(2, 4 * 8 * 8, 5)
    for k, kt in s.VARIANTS.values():
        m = s.merge(x, grid, k, kt)
        assert m.shape == (2, (4 // kt) * (8 // k) ** 2, kt * k * k * 5)
        assert torch.equal(s.unmerge(m, grid, k, kt), x)
    # token (f=0, y=0, x=0) of the 1x1x2 merge holds fine tokens (0, 0, 0) and (1, 0, 0), in that order
    m = s.merge(x, grid, 1, 2)
    assert torch.equal(m[:, 0], torch.cat([x[:, 0], x[:, 64]], -1))
    pos = s.positions(grid, 2, 2)
    assert pos.shape == (2 * 4 * 4, 3) and pos[0].tolist() == [0.5, 0.5, 0.5] and pos[-1].tolist() == [2.5, 6.5, 6.5]


def test_spatial_variants_are_the_products_sizes():
    from ddit_export.models.patching import merge_tokens
    from ddit_export.models.wan import token_positions

    s = _script()
    grid, x = (4, 8, 8), torch.randn(1, 256, 6)
    for k in (2, 4):
        assert torch.equal(s.merge(x, grid, k, 1), merge_tokens(x, grid, k))
        assert torch.equal(s.positions(grid, k, 1), token_positions(grid, k))


def test_flops_count_the_merged_tokens():
    s = _script()
    cfg = {"num_attention_heads": 4, "attention_head_dim": 32, "ffn_dim": 512, "freq_dim": 64, "text_dim": 64,
           "in_channels": 3, "out_channels": 3, "patch_size": [2, 4, 4], "num_layers": 6}
    from ddit_export.flops import wan_step_flops

    grid = (4, 8, 8)
    # a spatial variant counts as flops.py counts that size; 2x2x2 (32 tokens) sits between sizes 2 and 4
    assert s.step_flops(cfg, grid, 24, "s2", 32) == wan_step_flops(cfg, 256, 24, 2, 32)
    assert s.step_flops(cfg, grid, 24, "s4", 32) == wan_step_flops(cfg, 256, 24, 4, 32)
    f = {n: s.step_flops(cfg, grid, 24, n, 32) for n in ("fine", "t1", "s2", "t2", "s4")}
    assert f["fine"] > f["t1"] > f["s2"] > f["t2"] > f["s4"]
