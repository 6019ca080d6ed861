import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from ddit_export.flops import step_flops
from ddit_export.models.flux import MultiPatchFlux
from ddit_export.settings import AdapterSettings
from tests.helpers import tiny_inputs, tiny_trunk

HAND_CFG = dict(num_attention_heads=1, attention_head_dim=4, in_channels=4, out_channels=None,
                joint_attention_dim=2, pooled_projection_dim=2, num_layers=1, num_single_layers=1,
                guidance_embeds=False)


def test_hand_count_on_a_tiny_config():
    # d=4, 4 image tokens, 1 text token, k=1:
    #   conditioning 2*(256*4 + 4*4) + 2*2*4 + 2*4*4 = 2128; context embedder 2*1*2*4 = 16
    #   stem + head 2*4*4*4 * 2 = 256
    #   double block: modulations 2*(2*4*24) = 384; q,k,v,out 4*2*4*16 = 512 (image) + 4*2*1*16 = 128 (text);
    #     attention over 5 tokens 2*2*25*4 = 400; ff 2*4*4*16*2 = 1024 (image) + 256 (text)   -> 2704
    #   single block: modulation 2*4*12 = 96; q,k,v 3*2*5*16 = 480; attention 400; proj_mlp 2*5*4*16 = 640;
    #     proj_out 2*5*20*4 = 800                                                               -> 2416
    #   norm_out modulation 2*4*8 = 64
    assert step_flops(HAND_CFG, 4, 1) == 2128 + 16 + 256 + 2704 + 2416 + 64
    assert step_flops(HAND_CFG, 4, 1, batch=3) == 3 * 7584


def test_text_tokens_do_not_shrink_with_the_patch_size():
    big_text = step_flops(HAND_CFG, 64, 50, k=4) - step_flops(HAND_CFG, 64, 10, k=4)
    assert big_text > 0
    cfg = tiny_trunk().config  # width 32 >> 12 channels (in HAND_CFG the k=4 residual block would dominate)
    assert step_flops(cfg, 64, 0, k=4) < step_flops(cfg, 64, 0, k=2) < step_flops(cfg, 64, 0, k=1)


@pytest.mark.parametrize("guidance", [False, True])
@pytest.mark.parametrize("k", [1, 2, 4])
def test_matches_torch_flop_counter(k, guidance):
    trunk = tiny_trunk(guidance=guidance, layers=(2, 1))
    model = MultiPatchFlux(trunk, adapter=AdapterSettings(rank=4))
    inp = tiny_inputs(batch=2)
    # CPU attention runs as the flash-attention-for-cpu op, which FlopCounterMode does not map by default
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
               lambda q, k, v, *args, out_shape=None, **kw: sdpa_flop_count(q, k, v)}
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as fc:
        model(*inp.values(), torch.full((2,), 3.5) if guidance else None, size=k, grid=(8, 8))
    assert fc.get_total_flops() == step_flops(trunk.config, 64, 5, k, lora_rank=4, batch=2)
