import itertools
import math

import pytest
import torch

from alignlab.rewards.bon import best_of_n_kl, expected_best_of_n, select_best


def test_best_of_n_kl_formula():
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(4) == pytest.approx(math.log(4) - 0.75)


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_expected_best_of_n_equals_enumeration_over_subsets(n):
    g = torch.Generator().manual_seed(n)
    proxy, gold = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    got = expected_best_of_n(proxy, gold, n)
    for p in range(3):
        subsets = list(itertools.combinations(range(5), n))
        brute = sum(gold[p, max(s, key=lambda j: proxy[p, j])].item() for s in subsets) / len(subsets)
        assert got[p].item() == pytest.approx(brute, abs=1e-6)


def test_select_best_and_limits():
    scores = torch.tensor([[0.1, 0.9, 0.3], [2.0, 1.0, 0.0]])
    assert select_best(scores).tolist() == [1, 0]
    assert expected_best_of_n(scores, scores, 3).tolist() == pytest.approx([0.9, 2.0])
    assert expected_best_of_n(scores, scores, 1).tolist() == pytest.approx([1.3 / 3, 1.0])
    with pytest.raises(ValueError):
        expected_best_of_n(scores, scores, 4)
