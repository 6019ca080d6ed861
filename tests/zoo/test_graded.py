"""The graded scene grammar (issue 19, "prompts that differ"): detail grades, fine textures, graded splits; and
that today's grammar is untouched when the new options are not asked for."""
import hashlib
from pathlib import Path

import numpy as np
import pytest

from ddit_export.models.text import WordTextEncoder, words_of
from ddit_export.zoo import scenes as S
from ddit_export.zoo.scenes import Scene, ShapeSpec

ROOT = Path(__file__).resolve().parents[2]


def test_todays_batches_are_unchanged():
    # digests taken from the grammar before the graded options existed (commit 99737bf)
    _, caps, _ = S.make_batch(0, 200)
    _, held, _ = S.make_batch(1, 100, "heldout", side=64)
    assert hashlib.sha256("|".join(caps + held).encode()).hexdigest() == \
        "7b59638cb39b2ac97f73ffd870de5894459548064379494e18990a6953345cb5"
    im, _, _ = S.make_batch(2, 16, side=64)
    assert float(im.astype(np.float64).sum()) == pytest.approx(-31252.2290182187, abs=1e-6)
    assert S.caption_words() == S.caption_words(False) and not S.caption_words() & set(S.FINE_TEXTURES)


def test_vocabulary_lives_with_the_grammar():
    from ddit_export.models import registry

    assert registry.TINY_VOCAB is S.TINY_VOCAB
    assert S.GRADED_VOCAB[:len(S.TINY_VOCAB)] == S.TINY_VOCAB  # old word ids keep their rows
    assert S.caption_words(True) <= set(S.GRADED_VOCAB)
    assert set(S.FINE_TEXTURES) <= S.caption_words(True) - set(S.TINY_VOCAB)


@pytest.mark.parametrize("grade", S.GRADES)
def test_sample_graded_gives_its_grade(grade):
    rng = np.random.default_rng(grade)
    scs = [S.sample_graded(rng, grade, split) for split in ("train", "heldout") for _ in range(150)]
    assert all(sc.grade == grade for sc in scs)
    assert all(sc.split == "heldout" for sc in scs[150:]) and all(sc.split == "train" for sc in scs[:150])
    for sc in scs:
        assert 1 <= len(sc.shapes) <= S.GRADED_MAX_SHAPES
        assert len({s.position for s in sc.shapes}) == len(sc.shapes)
        assert all(s.colour != sc.background for s in sc.shapes)
        for i, a in enumerate(sc.shapes):
            assert not any(S._overlaps(a, b) for b in sc.shapes[:i])
        if len(sc.shapes) >= 6:
            assert all(s.size == "small" for s in sc.shapes)
        assert set(words_of(sc.caption)) <= set(S.GRADED_VOCAB)
    n = [len(sc.shapes) for sc in scs]
    if grade == 1:
        assert set(n) == {1} and all(sc.background in S.FLAT_BACKGROUNDS for sc in scs)
    if grade == 4:  # both kinds of dense: many small shapes, and fine textures
        assert max(n) == 8 and min(n) < 6
        assert {sc.background for sc in scs} >= set(S.FINE_TEXTURES)


def test_grade_of_todays_scenes():
    _, _, scs = S.make_batch(0, 2000)
    grades = {sc.grade for sc in scs}
    assert grades == {1, 2, 3}  # today's grammar never reaches grade 4
    assert all(sc.grade == 1 for sc in scs if sc.complexity == "simple" and sc.shapes[0].size != "small")
    one = ShapeSpec("circle", "red", "large", "center")
    assert Scene((one,), "black").grade == 1
    assert Scene((one,), "gradient").grade == 2
    assert Scene((one, ShapeSpec("square", "blue", "small", "top")), "striped").grade == 3
    assert Scene((one,), "checkered").grade == 4


def test_caption_lengths_and_encoder_length():
    for g in S.GRADES:
        longest = max(len(sc.caption.split()) for sc in S.graded_scenes(300, "train", seed=g, grades=(g,)))
        assert longest <= S.max_caption_words(g)
    # the longest caption there is: 8 shapes, 4 of them at corners
    cells = ["top left", "top right", "bottom left", "bottom right", "top", "left", "right", "bottom"]
    sc = Scene(tuple(ShapeSpec("triangle", "orange", "small", p) for p in cells), "pinstriped")
    assert len(sc.caption.split()) == S.max_caption_words(4) == 71 < S.GRADED_MAX_WORDS
    assert S.max_caption_words() == 39 and S.max_caption_words(3) == 47 > 40
    enc = WordTextEncoder(vocab=S.GRADED_VOCAB, max_length=S.GRADED_MAX_WORDS, dim=8, joint_attention_dim=8,
                          pooled_projection_dim=8, num_heads=2)
    enc.tokenize([sc.caption])


def test_fine_textures_render():
    pin = S.render(Scene((), "pinstriped"))
    assert np.allclose(pin[:, 0::2, :], pin[:, 0:1, :]) and not np.allclose(pin[:, 0], pin[:, 1])
    assert np.allclose(pin[:, :, 0], pin[:, :, 17])  # horizontal
    chk = S.render(Scene((), "checkered"))
    assert np.allclose(chk[:, 0, 0], chk[:, 1, 1]) and np.allclose(chk[:, 0, 0], chk[:, 2, 2])
    assert not np.allclose(chk[:, 0, 0], chk[:, 0, 2]) and not np.allclose(chk[:, 0, 0], chk[:, 2, 0])
    # scaled with the image: the 64 px render averages (area) to the 32 px one
    big = S.render(Scene((), "checkered"), 64).reshape(3, 32, 2, 32, 2).mean(axis=(2, 4))
    assert np.allclose(big, chk, atol=1e-6)
    old = S.render(Scene((), "striped"))
    assert len(np.unique(pin[0, :, 0].round(4))) == len(np.unique(old[0, :, 0].round(4))) == 2


def test_graded_scenes_split():
    a = S.graded_scenes(12, seed=5)
    b = S.graded_scenes(12, seed=5)
    assert [s.caption for s in a] == [s.caption for s in b]
    assert [s.grade for s in a] == [1, 2, 3, 4] * 3
    assert all(s.split == "heldout" for s in a)
    assert [s.caption for s in S.graded_scenes(4, seed=5)] == [s.caption for s in a[:4]]  # a prefix
    assert [s.caption for s in S.graded_scenes(12, seed=6)] != [s.caption for s in a]
    # grade= through sample_scene / make_batch
    _, caps, scs = S.make_batch(3, 6, "heldout", side=64, grade=4)
    assert all(s.grade == 4 for s in scs)
    with pytest.raises(ValueError):
        S.sample_scene(np.random.default_rng(0), grade=4, n_shapes=2)
    with pytest.raises(ValueError):
        S.sample_graded(np.random.default_rng(0), 5)


def test_graded_split_restricted_to_a_models_words():
    scs = S.graded_scenes(30, grades=(1, 2, 3), words=S.TINY_VOCAB, max_words=40)
    assert all(set(words_of(s.caption)) <= set(S.TINY_VOCAB) and len(s.caption.split()) <= 40 for s in scs)
    assert {s.grade for s in scs} == {1, 2, 3}
    with pytest.raises(ValueError, match="checkered, pinstriped") as e:
        S.graded_scenes(4, words=S.TINY_VOCAB, max_words=40)
    assert "grade 4" in str(e.value) and "71 words" in str(e.value)


def test_calibration_split_is_shipped_and_disjoint_from_evaluation():
    cal = S.graded_calibration_scenes()
    held = {s.caption for s in S.graded_scenes(256)}
    assert not held & {s.caption for s in cal}
    assert sorted({s.grade for s in cal}) == list(S.GRADES)
    lines = [ln for ln in (ROOT / "calibration" / "prompts-graded.txt").read_text().splitlines()
             if ln and not ln.startswith("#")]
    assert lines == [s.caption for s in cal]
