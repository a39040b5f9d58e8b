"""Simulated annotators: Bradley-Terry choice frequencies, label flips, populations, records."""

import math

import pytest
import torch

from alignlab.data.records import PairwiseRecord
from alignlab.lab.annotators import AnnotatorPopulation, BradleyTerryAnnotator, make_preference_pairs


def numeric_gold(texts):
    """Gold reward of a text that spells a number: the number."""
    return torch.tensor([float(t) for t in texts])


def comparisons(r_a: float, r_b: float, n: int):
    return [None] * n, [str(r_a)] * n, [str(r_b)] * n


def test_prob_first_is_the_bradley_terry_sigmoid():
    bt = BradleyTerryAnnotator(numeric_gold, temperature=0.5)
    p = bt.prob_first([None] * 3, ["1.0", "0.0", "0.3"], ["0.5", "1.0", "0.3"])
    expected = [1 / (1 + math.exp(-1.0)), 1 / (1 + math.exp(2.0)), 0.5]  # (r_a - r_b) / tau = 1, -2, 0
    torch.testing.assert_close(p, torch.tensor(expected))


@pytest.mark.parametrize("r_a, r_b, tau", [(0.5, 0.0, 0.5), (0.0, 0.3, 0.2), (0.2, 0.2, 1.0)])
def test_choice_frequency_matches_the_sigmoid(r_a, r_b, tau):
    n = 4000
    bt = BradleyTerryAnnotator(numeric_gold, temperature=tau, seed=3)
    freq = bt.prefer(*comparisons(r_a, r_b, n)).double().mean().item()
    p = 1 / (1 + math.exp(-(r_a - r_b) / tau))
    assert abs(freq - p) < 4 * math.sqrt(p * (1 - p) / n)  # 4 standard errors: ~0.03


@pytest.mark.parametrize("flip_prob", [0.1, 0.3, 1.0])
def test_flip_prob_flips_choices(flip_prob):
    n, p = 4000, 1 / (1 + math.exp(-1.0))
    bt = BradleyTerryAnnotator(numeric_gold, temperature=1.0, flip_prob=flip_prob, seed=1)
    freq = bt.prefer(*comparisons(1.0, 0.0, n)).double().mean().item()
    expected = (1 - flip_prob) * p + flip_prob * (1 - p)
    assert abs(freq - expected) < 4 * math.sqrt(expected * (1 - expected) / n) + 1e-9


def test_flips_are_exact_on_a_noiseless_judge():
    bt = BradleyTerryAnnotator(numeric_gold, temperature=1e-4, flip_prob=0.25, seed=0)
    choices = bt.prefer(*comparisons(1.0, 0.0, 4000))
    assert abs(1 - choices.double().mean().item() - 0.25) < 0.03
    same_seed_no_flip = BradleyTerryAnnotator(numeric_gold, temperature=1e-4, flip_prob=0.0, seed=0)
    assert same_seed_no_flip.prefer(*comparisons(1.0, 0.0, 4000)).all()


def test_annotator_is_seeded_and_leaves_the_global_rng_alone():
    args = comparisons(0.1, 0.0, 200)
    rng = torch.get_rng_state()
    first = BradleyTerryAnnotator(numeric_gold, seed=5).prefer(*args)
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(first, BradleyTerryAnnotator(numeric_gold, seed=5).prefer(*args))
    assert not torch.equal(first, BradleyTerryAnnotator(numeric_gold, seed=6).prefer(*args))


def test_annotator_argument_errors():
    with pytest.raises(ValueError, match="temperature"):
        BradleyTerryAnnotator(numeric_gold, temperature=0.0)
    with pytest.raises(ValueError, match="flip_prob"):
        BradleyTerryAnnotator(numeric_gold, flip_prob=1.5)
    with pytest.raises(ValueError, match="same length"):
        BradleyTerryAnnotator(numeric_gold).prefer([None], ["1"], ["1", "2"])


def test_population_assigns_judges_by_weight_and_routes_each_comparison():
    n = 6000
    lovers = BradleyTerryAnnotator(numeric_gold, temperature=1e-4, seed=1, annotator_id="likes-high")
    haters = BradleyTerryAnnotator(lambda t: -numeric_gold(t), temperature=1e-4, seed=2, annotator_id="likes-low")
    coin = BradleyTerryAnnotator(lambda t: torch.zeros(len(t)), seed=3, annotator_id="coin")
    population = AnnotatorPopulation([lovers, haters, coin], weights=[6, 3, 1], seed=0)
    choices = population.prefer(*comparisons(1.0, 0.0, n))
    ids = population.last_annotators
    assert len(ids) == n
    for name, share in [("likes-high", 0.6), ("likes-low", 0.3), ("coin", 0.1)]:
        assert abs(ids.count(name) / n - share) < 4 * math.sqrt(share * (1 - share) / n)
    by_judge = {name: [c for c, i in zip(choices.tolist(), ids) if i == name] for name in set(ids)}
    assert all(by_judge["likes-high"]) and not any(by_judge["likes-low"])
    assert 0.4 < sum(by_judge["coin"]) / len(by_judge["coin"]) < 0.6
    expected_p = torch.tensor([{"likes-high": 1.0, "likes-low": 0.0, "coin": 0.5}[i] for i in ids])
    torch.testing.assert_close(population.last_prob_first, expected_p)
    # the marginal probability is the weight-mixture of the judges'
    torch.testing.assert_close(population.prob_first(*comparisons(1.0, 0.0, 1)), torch.tensor([0.6 + 0.05]))


def test_population_is_seeded_and_validates():
    make = lambda seed: AnnotatorPopulation(  # noqa: E731
        [BradleyTerryAnnotator(numeric_gold, annotator_id="a"), BradleyTerryAnnotator(numeric_gold, annotator_id="b")],
        seed=seed)
    x, y = make(0), make(0)
    x.prefer(*comparisons(0.0, 0.0, 50))
    y.prefer(*comparisons(0.0, 0.0, 50))
    assert x.last_annotators == y.last_annotators
    with pytest.raises(ValueError, match="unique"):
        AnnotatorPopulation([BradleyTerryAnnotator(numeric_gold), BradleyTerryAnnotator(numeric_gold)])
    with pytest.raises(ValueError, match="weights"):
        AnnotatorPopulation([BradleyTerryAnnotator(numeric_gold)], weights=[0.0])
    with pytest.raises(ValueError, match="at least one"):
        AnnotatorPopulation([])


def test_make_preference_pairs_orients_by_the_choice():
    prompts = [[{"role": "user", "content": f"q{i}"}] for i in range(4)]
    a, b = ["0.9", "0.1", "0.5", "0.4"], ["0.2", "0.8", "0.5", "0.4"]
    judge = BradleyTerryAnnotator(numeric_gold, temperature=1e-4, annotator_id="judge-1")
    records = make_preference_pairs(prompts, a, b, judge)
    assert all(isinstance(r, PairwiseRecord) for r in records) and len(records) == 4
    assert (records[0].chosen, records[0].rejected) == ("0.9", "0.2")
    assert (records[1].chosen, records[1].rejected) == ("0.8", "0.1")
    assert records[0].meta == {"p_first": 1.0, "chosen_first": True, "p_chosen": 1.0}
    assert records[1].meta == {"p_first": 0.0, "chosen_first": False, "p_chosen": 1.0}
    assert [r.prompt for r in records] == prompts and {r.annotator for r in records} == {"judge-1"}
    # identical responses are kept, judged by a fair coin
    assert records[2].chosen == records[2].rejected == "0.5" and records[2].meta["p_first"] == 0.5


def test_make_preference_pairs_records_each_judge_of_a_population():
    population = AnnotatorPopulation([BradleyTerryAnnotator(numeric_gold, annotator_id=k) for k in "xyz"], seed=1)
    records = make_preference_pairs(*comparisons(0.3, 0.1, 30), population)
    assert [r.annotator for r in records] == population.last_annotators
    assert set(population.last_annotators) == {"x", "y", "z"}
    with pytest.raises(ValueError, match="same length"):
        make_preference_pairs([None], ["1"], [], population)
