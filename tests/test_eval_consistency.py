import pytest

from alignlab.data.records import PairwiseRecord
from alignlab.eval.consistency import build_contrast_pairs, reward_consistency
from alignlab.rewards.base import FunctionReward


def records():
    return [PairwiseRecord("What is the capital of France?", "Paris", "x"),
            PairwiseRecord("What is the capital of Spain?", "Madrid", "x"),
            PairwiseRecord("Bake a cake for me", "Flour, eggs.", "x")]


def test_contrast_pairs_match_similar_prompts_once():
    pairs = build_contrast_pairs(records(), min_similarity=0.5)
    assert len(pairs) == 1
    assert {pairs[0].response_a, pairs[0].response_b} == {"Paris", "Madrid"}
    assert pairs[0].similarity == pytest.approx(5 / 7)  # {what,is,the,capital,of} of 7 words


def test_consistency_of_a_prompt_aware_and_a_prompt_blind_reward():
    pairs = build_contrast_pairs(records(), min_similarity=0.5)
    aware = FunctionReward(lambda ps, rs: [float(("France" in p) == (r == "Paris")) for p, r in zip(ps, rs)], "aware")
    blind = FunctionReward(lambda rs: [len(r) for r in rs], "blind", responses_only=True)
    assert reward_consistency(aware, pairs)["consistency"] == 1.0
    out = reward_consistency(blind, pairs)  # ranks the same response first under both prompts
    assert out["consistency"] == 0.0 and out["directional_accuracy"] == 0.5
    with pytest.raises(ValueError, match="no contrast pairs"):
        reward_consistency(aware, [])
