import numpy as np
import pytest

from ddit_export.schedule import ladder_family, oracle_search
from ddit_export.schedule.oracle import flops_ratio

COST = {1: 1.0, 2: 0.34, 4: 0.17}


def test_family_spends_the_budget():
    fam = ladder_family(28, COST, 0.5)
    assert len(fam) > 5 and all(0.475 <= flops_ratio(s, COST) <= 0.5 for s in fam)
    for s in fam:  # monotone after the head: 4s, then 2s, then fine to the end
        body = s[next((i for i, k in enumerate(s) if k > 1), len(s)):]
        assert list(body) == sorted(body, key=lambda k: -k) or body[-1] == 1
        assert s[-1] == 1


def test_oracle_finds_the_known_best_per_prompt_and_the_best_static():
    fam = ladder_family(28, COST, 0.5)
    want = [fam[3], fam[-2], fam[3]]  # each toy prompt likes one schedule; two of three like fam[3]

    def score(s):
        return np.array([-float(sum(a != b for a, b in zip(s, w))) for w in want])

    r = oracle_search(fam, score)
    assert r.per_prompt == want
    assert np.array_equal(r.oracle_scores, [0.0, 0.0, 0.0])
    assert r.candidates[r.best_static] == fam[3]
    assert r.scores.shape == (len(fam), 3)
    with pytest.raises(ValueError):
        oracle_search([], score)
