import numpy as np

from ddit_export.quality import motion as M
from ddit_export.zoo import clips as C


def test_probe_reads_rendered_truth_and_rejects_noise_and_wrong_captions():
    rng = np.random.default_rng(5)
    truth = [M.adherence(c.render(), c) for c in (C.sample_clip(rng, "heldout" if i % 2 else "train")
                                                  for i in range(300))]
    assert M.aggregate(truth)["all"] >= 0.95  # measured 96.75% on 400 clips (same colour twice: the misses)
    noise = [M.adherence(np.random.default_rng(i).uniform(-1, 1, (8, 3, 32, 32)).astype(np.float32),
                         C.sample_clip(np.random.default_rng(i))) for i in range(50)]
    assert M.aggregate(noise)["all"] == 0.0
    rng = np.random.default_rng(9)
    wrong = [M.adherence(C.sample_clip(rng).render(), C.sample_clip(rng)) for _ in range(100)]
    assert M.aggregate(wrong)["all"] <= 0.1


def test_a_still_frame_fails_a_moving_caption():
    clip = C.MovingShape("circle", "red", "medium", "right", (1.0, 0.0), (1.0, 1.0), position="left")
    c = C.Clip((clip,), "black")
    frames = c.render()
    assert M.adherence(frames, c)["motion"]
    frozen = np.repeat(frames[:1], len(frames), axis=0)
    r = M.adherence(frozen, c)
    assert r["colour"] and not r["motion"] and r["seen"] == ["still"]
    backwards = frames[::-1]
    assert M.adherence(backwards, c)["seen"] == ["left"]
