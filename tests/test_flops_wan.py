"""The analytic Wan FLOP count against torch's FlopCounterMode on a tiny WanTransformer3DModel (size 1: the
diffusers model itself). On the CPU torch does not count the fused attention kernel, so the test adds the
attention products by sdpa's own formula (2·L_q·L_k·d each for QKᵀ and AV)."""
import torch
from torch.utils.flop_counter import FlopCounterMode

from ddit_export.flops import is_wan, step_flops, wan_step_flops

CFG = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
           text_dim=16, freq_dim=32, ffn_dim=40, num_layers=2, rope_max_seq_len=32)


def test_size_one_matches_torch_flop_counter():
    from diffusers import WanTransformer3DModel

    m = WanTransformer3DModel(**CFG).eval()
    b, frames, side, text = 2, 3, 8, 5
    x, e = torch.randn(b, 4, frames, side, side), torch.randn(b, text, 16)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        m(x, torch.tensor([500, 300]), e)
    n, d = frames * (side // 2) ** 2, 24
    attention = CFG["num_layers"] * b * (2 * 2 * n * n * d + 2 * 2 * n * text * d)
    assert fc.get_total_flops() + attention == wan_step_flops(dict(m.config), n, text, 1, batch=b)
    assert step_flops(dict(m.config), n, text, 1, batch=b) == wan_step_flops(dict(m.config), n, text, 1, batch=b)


def test_coarse_sizes_cost_less_and_lora_counts():
    assert is_wan(CFG) and not is_wan({"joint_attention_dim": 4, "num_layers": 1})
    n = 4 * 16 * 16
    f1, f2, f4 = (wan_step_flops(CFG, n, 8, k) for k in (1, 2, 4))
    assert f4 < f2 < f1
    assert wan_step_flops(CFG, n, 8, 2, lora_rank=4) > f2
    assert wan_step_flops(CFG, n, 8, 1, lora_rank=4) == f1  # size 1 runs no LoRA
