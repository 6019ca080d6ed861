import pytest
import torch

from ddit_export.models.patching import coarse_ids, image_ids, init_deembed, init_embed, merge_tokens, unmerge_tokens
from ddit_export.images import pack
from ddit_export.shapes import TokenGeometry


@pytest.mark.parametrize("k", [1, 2, 4])
def test_merge_unmerge_roundtrip(k):
    x = torch.randn(2, 8 * 12, 12)
    m = merge_tokens(x, (8, 12), k)
    assert m.shape == (2, 8 * 12 // k**2, 12 * k * k)
    assert torch.equal(unmerge_tokens(m, (8, 12), k), x)


def test_merge_groups_spatial_blocks():
    # fine tokens numbered by position: a coarse token of size 2 must hold tokens (r, c), (r, c+1), (r+1, c), (r+1, c+1)
    h, w = 4, 6
    x = torch.arange(h * w, dtype=torch.float32).reshape(1, h * w, 1)
    m = merge_tokens(x, (h, w), 2)
    assert m[0, 0].tolist() == [0, 1, 6, 7]
    assert m[0, 1].tolist() == [2, 3, 8, 9]
    assert m[0, 3].tolist() == [12, 13, 18, 19]


def test_coarse_ids_sit_at_the_centre_of_their_fine_tokens():
    ids = coarse_ids(image_ids((4, 4)), (4, 4), 2)
    assert ids.shape == (4, 3)
    assert ids.tolist() == [[0, 0.5, 0.5], [0, 0.5, 2.5], [0, 2.5, 0.5], [0, 2.5, 2.5]]
    assert coarse_ids(image_ids((4, 4)), (4, 4), 4).tolist() == [[0, 1.5, 1.5]]


def test_tile_init_embeds_the_average_and_copies_the_output():
    w = torch.randn(8, 12)
    x = torch.randn(3, 4 * 12)  # coarse token of size 2 = 4 fine tokens
    we = init_embed(w, 2, "tile")
    avg = x.reshape(3, 4, 12).mean(1)
    torch.testing.assert_close(x @ we.T, avg @ w.T)
    wd, bd = init_deembed(torch.randn(12, 8), torch.randn(12), 2, "tile")
    assert torch.equal(wd[:12], wd[36:]) and torch.equal(bd[:12], bd[12:24])


@pytest.mark.parametrize("k", [2, 4])
def test_pi_resize_preserves_embeddings_of_upsampled_patches(k):
    """FlexiViT's property: embedding a bilinearly upsampled patch with W' equals embedding the patch with W."""
    torch.manual_seed(0)
    w = torch.randn(16, 12, dtype=torch.float64)
    geom_f, geom_c = TokenGeometry(2, 2, 1, 3), TokenGeometry(2 * k, 2 * k, 1, 3)
    img = torch.randn(5, 3, 2, 2, dtype=torch.float64)
    up = torch.nn.functional.interpolate(img, size=(2 * k, 2 * k), mode="bilinear", align_corners=False)
    fine = pack(img, geom_f)[:, 0]  # (5, 12): one fine token
    coarse = merge_tokens(pack(up, geom_c), geom_c.grid, k)[:, 0]  # (5, k*k*12): one coarse token
    we = init_embed(w, k, "pi")
    torch.testing.assert_close(coarse @ we.T, fine @ w.T)
    # and the head: de-embedding with W_out' yields the bilinearly upsampled fine output
    wo = torch.randn(12, 16, dtype=torch.float64)
    wd, _ = init_deembed(wo, None, k, "pi")
    h = torch.randn(5, 16, dtype=torch.float64)
    fine_img = (h @ wo.T).reshape(5, 3, 2, 2)  # one fine token is a 3 x 2 x 2 pixel patch
    up_img = torch.nn.functional.interpolate(fine_img, size=(2 * k, 2 * k), mode="bilinear", align_corners=False)
    torch.testing.assert_close(h @ wd.T, merge_tokens(pack(up_img, geom_c), geom_c.grid, k)[:, 0])


def test_pi_and_tile_inits_differ():
    w = torch.randn(8, 12)
    assert not torch.allclose(init_embed(w, 2, "pi"), init_embed(w, 2, "tile"))
