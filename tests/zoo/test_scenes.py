import time

import numpy as np
import pytest

from ddit_export.models.registry import TINY_VOCAB
from ddit_export.models.text import WordTextEncoder, words_of
from ddit_export.zoo import scenes as S
from ddit_export.zoo.scenes import Scene, ShapeSpec


def _rgb(name):
    return np.asarray(S.COLOURS[name]) * 2 - 1


def test_deterministic_from_seed():
    a, ca, sa = S.make_batch(7, 16)
    b, cb, sb = S.make_batch(7, 16)
    c, cc, _ = S.make_batch(8, 16)
    assert a.dtype == np.float32 and a.shape == (16, 3, 32, 32)
    assert np.array_equal(a, b) and ca == cb and sa == sb
    assert ca != cc
    assert a.min() >= -1 and a.max() <= 1


def test_captions_use_only_vocabulary_and_fit_the_encoder():
    _, caps, _ = S.make_batch(0, 500)
    _, held, _ = S.make_batch(1, 200, "heldout")
    words = {w for c in caps + held for w in words_of(c)}
    assert words <= set(TINY_VOCAB)
    assert S.caption_words() <= set(TINY_VOCAB)
    enc = WordTextEncoder(vocab=TINY_VOCAB, max_length=40, dim=8, joint_attention_dim=8, pooled_projection_dim=8,
                          num_heads=2)
    long = S.sample_scene(np.random.default_rng(0), n_shapes=S.MAX_SHAPES, background="striped").caption
    enc.tokenize(caps + held + [long])


def test_caption_grammar():
    sc = Scene((ShapeSpec("circle", "red", "large", "top left"), ShapeSpec("square", "blue", "small", "bottom right")),
               "striped")
    assert sc.caption == ("a large red circle at the top left and a small blue square at the bottom right "
                          "on a striped background")
    assert Scene((ShapeSpec("triangle", "green", "medium", "center"),), "black").caption == \
        "a medium green triangle in the center on a black background"


def test_heldout_rule_is_respected():
    assert 10 < len(S.HELDOUT_TRIPLES) < 60
    _, _, train = S.make_batch(3, 2000, "train")
    _, _, held = S.make_batch(3, 300, "heldout")
    for sc in train:
        assert not any((s.colour, s.shape, s.position) in S.HELDOUT_TRIPLES for s in sc.shapes)
        assert sc.split == "train"
    assert all(sc.split == "heldout" for sc in held)
    # every word combination that is not a held-out triple is still trained: each (colour, shape) pair appears
    seen = {(s.colour, s.shape) for sc in train for s in sc.shapes}
    assert seen == {(c, s) for c in S.COLOURS for s in S.SHAPES}
    with pytest.raises(ValueError):
        S.sample_scene(np.random.default_rng(0), split="test")


@pytest.mark.parametrize("shape", S.SHAPES)
def test_single_large_red_shape_at_center(shape):
    img = S.render(Scene((ShapeSpec(shape, "red", "large", "center"),), "black"))
    cy = 18 if shape == "triangle" else 16  # a triangle's mass sits below its box centre
    assert np.allclose(img[:, cy, 16], _rgb("red"), atol=1e-5)
    assert np.allclose(img[:, 0, 0], -1, atol=1e-5)


@pytest.mark.parametrize("position", list(S.POSITIONS))
def test_attributes_match_rendering(position):
    spec = ShapeSpec("square", "blue", "small", position)
    img = S.render(Scene((spec,), "white"))
    cy, cx, r = spec.geometry(32)
    assert np.allclose(img[:, int(cy), int(cx)], _rgb("blue"), atol=1e-5)
    row, col = S.POSITIONS[position]
    assert row * 32 / 3 <= cy <= (row + 1) * 32 / 3 and col * 32 / 3 <= cx <= (col + 1) * 32 / 3
    # everything far from the shape is background
    mask = np.ones((32, 32), bool)
    mask[max(0, int(cy - r) - 1):int(cy + r) + 2, max(0, int(cx - r) - 1):int(cx + r) + 2] = False
    assert np.allclose(img[:, mask], 1.0)


def test_backgrounds():
    flat = S.render(Scene((), "gray"))
    assert np.allclose(flat, 0.0)
    grad = S.render(Scene((), "gradient"))
    assert grad[0, 0, 0] < grad[0, 31, 0] and np.allclose(grad[:, :, 0], grad[:, :, 31])
    stripes = S.render(Scene((), "striped"))
    assert len(np.unique(stripes[0, :, 0].round(4))) == 2 and np.allclose(stripes[:, :, 0], stripes[:, :, 5])


def test_shapes_are_legible_and_do_not_overlap():
    _, _, scs = S.make_batch(11, 1000)
    for sc in scs:
        assert 1 <= len(sc.shapes) <= S.MAX_SHAPES
        assert len({s.position for s in sc.shapes}) == len(sc.shapes)
        assert all(s.colour != sc.background for s in sc.shapes)
        for i, a in enumerate(sc.shapes):
            assert 2 * a.geometry(32)[2] >= 5
            assert not any(S._overlaps(a, b) for b in sc.shapes[:i])


def test_complexity_buckets():
    rng = np.random.default_rng(0)
    by = {c: [S.sample_scene(rng, complexity=c) for _ in range(50)] for c in S.COMPLEXITIES}
    for c, scs in by.items():
        assert all(s.complexity == c for s in scs)
    assert all(len(s.shapes) == 1 and s.background_kind == "flat" for s in by["simple"])
    assert np.mean([len(s.shapes) for s in by["complex"]]) > np.mean([len(s.shapes) for s in by["medium"]])
    _, _, mixed = S.make_batch(0, 300)
    assert {s.complexity for s in mixed} == set(S.COMPLEXITIES)


def test_constraints_and_size_parameter():
    im, caps, scs = S.make_batch(2, 4, side=64, n_shapes=2, background="gradient")
    assert im.shape == (4, 3, 64, 64)
    assert all(len(s.shapes) == 2 and s.background == "gradient" for s in scs)


def test_batch_is_fast():
    S.make_batch(0, 32)
    best = min(_timed(lambda i=i: S.make_batch(i, 32)) for i in range(5))
    assert best < 0.05


def _timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t
