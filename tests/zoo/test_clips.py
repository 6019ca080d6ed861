import numpy as np
import pytest

from ddit_export.models.text import tokenize
from ddit_export.zoo import clips as C


def test_clips_are_deterministic_in_range_and_captioned_in_vocabulary():
    a, caps, recs = C.make_batch(3, 6)
    b, caps2, _ = C.make_batch(3, 6)
    assert np.array_equal(a, b) and caps == caps2
    assert a.shape == (6, C.FRAMES, 3, C.SIDE, C.SIDE) and a.min() >= -1 and a.max() <= 1
    tokenize(C.VIDEO_VOCAB, 24, caps)  # every word known, every caption short enough
    moving = [r for r in recs if any(s.motion in C.DIRECTIONS for s in r.shapes)]
    for r in moving:  # a moving shape's frames differ from first to last
        assert not np.array_equal(C.render(r)[0], C.render(r)[-1])


def test_heldout_split_holds_heldout_triples_and_train_never_does():
    rng = np.random.default_rng(0)
    for _ in range(200):
        tr, ho = C.sample_clip(rng, "train"), C.sample_clip(rng, "heldout")
        assert tr.split == "train" and ho.split == "heldout"
    with pytest.raises(ValueError):
        C.sample_clip(rng, "test")


def test_motion_words_follow_the_grammar():
    rng = np.random.default_rng(1)
    seen = {s.motion for _ in range(300) for s in C.sample_clip(rng).shapes}
    assert seen == set(C.MOTIONS)
    s = C.MovingShape("circle", "red", "large", "left", (1.0, 2.0), (1.0, 1.0), position="right")
    assert s.phrase() == "a large red circle moving left"
    assert C.MovingShape("square", "blue", "small", "turning", (0, 0), (0, 0), "green").phrase() == \
        "a small blue square turning green"
