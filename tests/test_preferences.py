"""The preference-source protocol: Bradley-Terry from rewards, simulated annotators, order
averaging and the one probability check."""

import math

import pytest
import torch

import alignlab.lab  # noqa: F401  (registers lab:TASK rewards)
from alignlab.preferences import (
    AnnotatorPreference,
    PreferenceSource,
    RewardPreference,
    both_orders,
    build_preference_source,
    check_probabilities,
    register_preference_family,
)
from alignlab.preferences.spec import PREFERENCE_FAMILIES
from alignlab.rewards.base import FunctionReward

LENGTH = FunctionReward(lambda texts: [float(len(t)) for t in texts], name="len", responses_only=True)


def test_reward_preference_is_bradley_terry_by_hand():
    source = RewardPreference(LENGTH, temperature=2.0)
    p = source.prefer(["q", "q"], ["abcd", "a"], ["ab", "abc"])
    # sigmoid((4 - 2) / 2) = sigmoid(1); sigmoid((1 - 3) / 2) = sigmoid(-1)
    s1 = 1 / (1 + math.exp(-1))
    assert p.tolist() == pytest.approx([s1, 1 - s1], abs=1e-6)
    assert isinstance(source, PreferenceSource)


def test_reward_preference_is_antisymmetric():
    source = RewardPreference(LENGTH, temperature=0.7)
    a, b = ["x", "hello", "hey"], ["yy", "hi", "hey"]
    p_ab, p_ba = source.prefer(["q"] * 3, a, b), source.prefer(["q"] * 3, b, a)
    assert torch.allclose(p_ab + p_ba, torch.ones(3))
    assert p_ab[2].item() == pytest.approx(0.5)


def test_both_orders_cancels_position_bias():
    # A judge that adds +0.2 to whichever answer is shown first, on top of a fair 0.5.
    def biased(prompts, first, second):
        return torch.full((len(first),), 0.7)

    p = both_orders(biased, ["q"], ["a"], ["b"])
    assert p.item() == pytest.approx(0.5)


def test_annotator_samples_hard_labels_at_the_bradley_terry_rate():
    source = AnnotatorPreference(LENGTH, temperature=1.0, seed=3)
    n = 4000
    labels = source.prefer(["q"] * n, ["ab"] * n, ["a"] * n)
    assert set(labels.unique().tolist()) <= {0.0, 1.0}
    assert labels.mean().item() == pytest.approx(1 / (1 + math.exp(-1)), abs=0.03)
    flipped = AnnotatorPreference(LENGTH, temperature=1e-3, flip_prob=1.0, seed=0).prefer(["q"], ["ab"], ["a"])
    assert flipped.item() == 0.0


def test_annotator_is_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    a = AnnotatorPreference(LENGTH, seed=5).prefer(["q"] * 50, ["ab"] * 50, ["a"] * 50)
    after = torch.rand(1)
    b = AnnotatorPreference(LENGTH, seed=5).prefer(["q"] * 50, ["ab"] * 50, ["a"] * 50)
    assert torch.equal(a, b) and torch.equal(before, after)


@pytest.mark.parametrize("bad, message", [([0.5, float("nan")], "nan for pair 1"),
                                          ([1.5, 0.5], "1.5 for pair 0"),
                                          ([0.5], "returned 1 probabilities for 2 pairs")])
def test_check_probabilities_names_the_source(bad, message):
    with pytest.raises(ValueError, match="judge-x") as err:
        check_probabilities(bad, 2, "judge-x")
    assert message in str(err.value)


def test_reward_returning_nan_is_an_error():
    nan = FunctionReward(lambda texts: [float("nan")] * len(texts), name="nanny", responses_only=True)
    with pytest.raises(ValueError, match="nanny.*not finite"):
        RewardPreference(nan).prefer(["q"], ["a"], ["b"])


def test_specs_build_each_kind():
    soft = build_preference_source("lab:sentiment", temperature=0.5)
    assert isinstance(soft, RewardPreference) and soft.temperature == 0.5
    hard = build_preference_source("annotator:lab:sentiment", flip_prob=0.1, seed=2)
    assert isinstance(hard, AnnotatorPreference) and hard.flip_prob == 0.1
    with pytest.raises(ValueError, match="annotator:REWARD"):
        build_preference_source("nonsense:thing")
    with pytest.raises(ValueError, match="flip_prob applies to simulated annotators"):
        build_preference_source("lab:sentiment", flip_prob=0.2)


def test_registered_family_receives_its_options():
    seen = {}

    def factory(name, options):
        seen.update(name=name, **options)
        return RewardPreference(LENGTH)

    register_preference_family("testfam", factory)
    try:
        build_preference_source("testfam:some/path", temperature=0.3, seed=7, batch_size=4)
        assert seen == {"name": "some/path", "temperature": 0.3, "seed": 7, "batch_size": 4}
        with pytest.raises(ValueError, match="already registered"):
            register_preference_family("testfam", lambda n, o: None)
        with pytest.raises(ValueError, match="built in"):
            register_preference_family("annotator", factory)
    finally:
        PREFERENCE_FAMILIES.pop("testfam", None)


def test_both_orders_sums_to_one_bit_for_bit():
    torch.manual_seed(0)
    x, y = torch.rand(20000), torch.rand(20000)

    def judge(prompts, first, second):
        return x if first == "a" else y

    total = both_orders(judge, None, "a", "b") + both_orders(judge, None, "b", "a")
    assert torch.equal(total, torch.ones(20000))
    torch.testing.assert_close(both_orders(judge, None, "a", "b"), 0.5 * (x + 1 - y), atol=1e-7, rtol=0)
