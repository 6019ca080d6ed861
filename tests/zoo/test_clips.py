import numpy as np
import pytest

from ddit_export.models.text import WordTextEncoder, words_of
from ddit_export.zoo import clips as C
from ddit_export.zoo import scenes as S
from ddit_export.zoo.clips import Clip, MovingShape


def _clips(seed, n, split="train", **kw):
    return [C.sample_clip(np.random.default_rng([seed, i]), split, **kw) for i in range(n)]


def test_batch_is_a_pure_function_of_the_seed():
    a, ca, ra = C.make_batch(7, 12)
    b, cb, rb = C.make_batch(7, 12)
    c, cc, _ = C.make_batch(8, 12)
    assert a.dtype == np.float32 and a.shape == (12, C.FRAMES, 3, C.SIDE, C.SIDE)
    assert np.array_equal(a, b) and ca == cb and ra == rb
    assert ca != cc
    assert a.min() >= -1 and a.max() <= 1
    # a Generator in, the same clips as the seed it was made from
    g, cg, _ = C.make_batch(np.random.default_rng(7), 12)
    assert np.array_equal(g, a) and cg == ca


@pytest.mark.parametrize("frames, side", [(4, 16), (9, 48)])
def test_frames_and_side_are_parameters(frames, side):
    x, caps, clips = C.make_batch(3, 4, frames=frames, side=side)
    assert x.shape == (4, frames, 3, side, side)
    assert np.array_equal(x[0], clips[0].render(frames, side))


def test_captions_use_only_the_vocabulary_and_fit_the_encoder():
    caps = [c.caption for c in _clips(0, 400) + _clips(1, 200, "heldout")]
    words = {w for c in caps for w in words_of(c)}
    assert words <= C.caption_words()
    # every motion word is used
    assert {"moving", "growing", "shrinking", "turning", "appearing", "left", "right", "up", "down"} <= words
    enc = WordTextEncoder(vocab=C.VIDEO_VOCAB, max_length=24, dim=8, joint_attention_dim=8, pooled_projection_dim=8,
                          num_heads=2)
    ids, mask = enc.tokenize(caps)
    assert int(mask.sum(1).max()) <= 24 and max(len(words_of(c)) for c in caps) <= 24


def test_caption_grammar():
    clip = Clip((MovingShape("circle", "red", "large", "left", (1, 2), (1, 1), None, "right"),
                 MovingShape("square", "blue", "small", "turning", (2, 0), (2, 0), "green", "bottom left")), "black")
    assert clip.caption == ("a large red circle moving left and a small blue square turning green "
                            "on a black background")
    still = MovingShape("triangle", "yellow", "medium", "still", (1, 1), (1, 1), None, "center")
    appear = MovingShape("circle", "purple", "small", "appearing", (0, 0), (0, 0), None, "top left")
    assert still.phrase() == "a medium yellow triangle in the center"
    assert appear.phrase() == "a small purple circle appearing at the top left"


def _mask(frame, colour):
    rgb = np.asarray(S.COLOURS[colour], np.float32)[:, None, None] * 2 - 1
    return np.abs(frame - rgb).max(0) < 0.05


def test_rendered_motion_matches_the_ground_truth():
    right = Clip((MovingShape("square", "red", "small", "right", (1, 0), (1, 1), None, "left"),), "black")
    x = right.render()
    first, last = _mask(x[0], "red"), _mask(x[-1], "red")
    assert first.sum() > 10 and first.sum() == last.sum()  # same size, moved
    assert np.nonzero(last)[1].mean() - np.nonzero(first)[1].mean() == pytest.approx(32 / 3, abs=0.5)
    grow = Clip((MovingShape("circle", "blue", "medium", "growing", (1, 1), (1, 1), None, "center"),), "gray")
    g = grow.render()
    assert _mask(g[-1], "blue").sum() > 4 * _mask(g[0], "blue").sum()
    turn = Clip((MovingShape("circle", "red", "large", "turning", (1, 1), (1, 1), "green", "center"),), "black")
    t = turn.render()
    assert _mask(t[0], "red").sum() > 100 and _mask(t[-1], "green").sum() > 100 and not _mask(t[-1], "red").any()
    appear = Clip((MovingShape("circle", "white", "large", "appearing", (1, 1), (1, 1), None, "center"),), "black")
    a = appear.render()
    assert not _mask(a[0], "white").any() and _mask(a[-1], "white").sum() > 100


def test_heldout_split_is_disjoint_by_triple():
    train, held = _clips(2, 500), _clips(3, 300, "heldout")
    assert all(c.split == "train" for c in train) and all(c.split == "heldout" for c in held)
    triples = lambda cs: {(s.colour, s.shape, s.motion) for c in cs for s in c.shapes}  # noqa: E731
    assert not {t for t in triples(train) if C.is_heldout(*t)}
    assert len({t for t in triples(held) if C.is_heldout(*t)}) > 10  # a real held-out set, not one triple
    with pytest.raises(ValueError):
        C.sample_clip(np.random.default_rng(0), "test")


def test_shapes_of_a_clip_are_told_apart_by_colour():
    two = _clips(4, 300, n_shapes=2)
    for c in two:
        a, b = c.shapes
        assert not set(a.colours()) & set(b.colours())
        for f in np.linspace(0, 1, 8):  # never overlap
            (ay, ax, ar), (by, bx, br) = a.geometry(f), b.geometry(f)
            assert np.hypot(ay - by, ax - bx) >= ar + br
        for s in c.shapes:
            assert not any(C.clashes(col, c.background) for col in s.colours())
    assert C.clashes("black", "gradient") and C.clashes("white", "white") and not C.clashes("red", "striped")


def test_ground_truth_records_the_motion():
    for c in _clips(5, 300):
        for s in c.shapes:
            d = np.subtract(s.end, s.start)
            if s.motion in C.DIRECTIONS:
                assert tuple(d) == C.DIRECTIONS[s.motion]
            else:
                assert not d.any()
            assert (s.to_colour is not None) == (s.motion == "turning")
            assert s.motion in C.MOTIONS and s.position in S.POSITIONS


def test_the_clip_grammar_writes_exactly_the_models_video_vocabulary():
    """The vocabulary lives with the text encoder (models/vocab.py); the grammar that trains it must not drift."""
    from ddit_export.models.vocab import VIDEO_VOCAB

    assert C.grammar_words() == set(VIDEO_VOCAB) and VIDEO_VOCAB == sorted(VIDEO_VOCAB)
    rng = np.random.default_rng(3)
    assert set().union(*(C.sample_clip(rng).caption.split() for _ in range(200))) <= set(VIDEO_VOCAB)


def test_two_shape_share_is_a_knob():
    """(The default draw is pinned by tests/wan/test_calibrate_video.py: the shipped calibration split, drawn before
    the knob existed, is what the function draws today.)"""
    rng = lambda i: np.random.default_rng([0, i])  # noqa: E731
    assert all(len(C.sample_clip(rng(i), "train", two_shape=1.0).shapes) == 2 for i in range(40))
    assert all(len(C.sample_clip(rng(i), "train", two_shape=0.0).shapes) == 1 for i in range(40))
    with pytest.raises(ValueError, match="two_shape"):
        C.sample_clip(rng(0), "train", two_shape=1.2)
