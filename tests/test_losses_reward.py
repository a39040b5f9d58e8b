"""Reward-model losses and ensemble aggregation against hand-worked values."""

import math

import pytest
import torch

from alignlab.losses.reward import binary_feedback, bradley_terry, gated_bradley_terry, rated_entries, rating_regression
from alignlab.rewards.aggregate import aggregate


def _log_sigmoid(x):
    return -math.log1p(math.exp(-x))


def test_bradley_terry_margin_smoothing_centering_by_hand():
    rc, rr = torch.tensor([1.0, 0.5]), torch.tensor([0.2, 1.5])
    margin = torch.tensor([0.3, 0.0])
    loss, m = bradley_terry(rc, rr, margin=margin, label_smoothing=0.1, center_coef=0.01)
    # pair 1: d = 1.0-0.2-0.3 = 0.5; pair 2: d = -1.0
    l1 = -0.9 * _log_sigmoid(0.5) - 0.1 * _log_sigmoid(-0.5) + 0.01 * 1.2**2
    l2 = -0.9 * _log_sigmoid(-1.0) - 0.1 * _log_sigmoid(1.0) + 0.01 * 2.0**2
    assert loss.item() == pytest.approx((l1 + l2) / 2, abs=1e-6)
    assert m["accuracy"].item() == 0.5 and m["margin_mean"].item() == pytest.approx((0.8 - 1.0) / 2)


def test_bradley_terry_plain_is_log_sigmoid_and_weights_average():
    rc, rr = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0])
    loss, _ = bradley_terry(rc, rr, weights=torch.tensor([3.0, 1.0]))
    expected = (3 * -_log_sigmoid(2.0) + 1 * -_log_sigmoid(-1.0)) / 4
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="label_smoothing"):
        bradley_terry(rc, rr, label_smoothing=0.5)


def test_bradley_terry_flip_rate_by_hand_and_bounded():
    rc, rr = torch.tensor([2.0, 0.0, -30.0]), torch.tensor([0.0, 0.0, 0.0])
    losses, _ = bradley_terry(rc, rr, flip_rate=0.1, per_example=True)
    # d = 2: 0.9 * sigmoid(2) + 0.1 * sigmoid(-2) = 0.9 * 0.880797 + 0.1 * 0.119203 = 0.804637
    assert losses[0].item() == pytest.approx(-math.log(0.804637), abs=1e-5)
    assert losses[1].item() == pytest.approx(math.log(2), abs=1e-6)  # d = 0: 1/2 whatever the flip rate
    # a pair the model contradicts by 30 costs at most -log(0.1): read as a flipped label, no longer pulled
    assert losses[2].item() == pytest.approx(-math.log(0.1), abs=1e-5)
    rc = torch.tensor([-30.0], requires_grad=True)
    bradley_terry(rc, torch.tensor([0.0]), flip_rate=0.1)[0].backward()
    assert abs(rc.grad.item()) < 1e-6
    rc.grad = None
    bradley_terry(rc, torch.tensor([0.0]), label_smoothing=0.1)[0].backward()
    assert rc.grad.item() == pytest.approx(-0.9, abs=1e-5)  # smoothing still pulls with weight 1 - eps
    assert_flip_zero = bradley_terry(torch.tensor([0.7]), torch.tensor([0.2]), flip_rate=0.0)[0]
    assert assert_flip_zero.item() == pytest.approx(-_log_sigmoid(0.5), abs=1e-6)
    for bad in ({"flip_rate": 0.5}, {"flip_rate": 0.1, "label_smoothing": 0.1}):
        with pytest.raises(ValueError, match="flip_rate"):
            bradley_terry(rc, torch.tensor([0.0]), **bad)


def test_bradley_terry_prefers_larger_chosen_reward_and_gradient_sign():
    rc = torch.tensor([0.3], requires_grad=True)
    loss, _ = bradley_terry(rc, torch.tensor([0.0]))
    loss.backward()
    assert rc.grad.item() < 0  # raising the chosen reward lowers the loss


def test_rating_regression_ignores_missing_ratings():
    pred = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    target = torch.tensor([[2.0, 2.0], [1.0, 99.0]])
    mask = torch.tensor([[True, True], [True, False]])
    loss, m = rating_regression(pred, target, mask)
    assert loss.item() == pytest.approx((1 + 0 + 4) / 3)
    assert m["mae"].item() == pytest.approx((1 + 0 + 2) / 3)


def test_binary_feedback_by_hand():
    logits, labels = torch.tensor([1.0, -2.0]), torch.tensor([True, True])
    loss, m = binary_feedback(logits, labels, pos_weight=2.0)
    assert loss.item() == pytest.approx(-(2 * _log_sigmoid(1.0) + 2 * _log_sigmoid(-2.0)) / 2, abs=1e-6)
    assert m["accuracy"].item() == 0.5


def test_ensemble_aggregations_by_hand():
    rewards = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 3.0]])  # K=3 members, N=2 responses
    assert aggregate(rewards, "mean").tolist() == pytest.approx([2.0, 1.0])
    assert aggregate(rewards, "wco").tolist() == [1.0, 0.0]
    # population variance: [2/3, 2]; UWO with lambda 0.5
    assert aggregate(rewards, "uwo", uwo_coef=0.5).tolist() == pytest.approx([2.0 - 1 / 3, 1.0 - 1.0])
    with pytest.raises(ValueError, match="unknown aggregation"):
        aggregate(rewards, "max")


def test_reward_sources_function_and_ensemble():
    from alignlab.rewards.base import EnsembleReward, FunctionReward, RewardSource

    length = FunctionReward(lambda rs: [len(r) for r in rs], "length", responses_only=True)
    negative = FunctionReward(lambda ps, rs: [-len(r) / 2 for r in rs], "half")
    assert isinstance(length, RewardSource)
    assert length.score(["p", "q"], ["ab", "abcd"]).tolist() == [2.0, 4.0]
    ens = EnsembleReward([length, negative], how="wco")
    assert ens.score(["p", "q"], ["ab", "abcd"]).tolist() == [-1.0, -2.0]
    assert ens.member_scores(["p"], ["ab"]).shape == (2, 1)
    with pytest.raises(ValueError, match="one prompt per response"):
        length.score(["p"], ["a", "b"])
    with pytest.raises(ValueError, match="unknown aggregation"):
        EnsembleReward([length], how="median")


def test_cost_model_loss_by_hand():
    from alignlab.losses.reward import cost_model_loss

    # chosen (safer) cost -1 and safe; rejected cost 0.5 and unsafe
    loss, m = cost_model_loss(torch.tensor([-1.0]), torch.tensor([0.5]), torch.tensor([False]), torch.tensor([True]))
    expected = -_log_sigmoid(1.5) - _log_sigmoid(1.0) - _log_sigmoid(0.5)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert m["accuracy"].item() == 1.0 and m["sign_accuracy"].item() == 1.0
    # both unsafe: the safe-sign term for the chosen one flips
    loss, m = cost_model_loss(torch.tensor([-1.0]), torch.tensor([0.5]), torch.tensor([True]), torch.tensor([True]))
    assert loss.item() == pytest.approx(-_log_sigmoid(1.5) - _log_sigmoid(-1.0) - _log_sigmoid(0.5), abs=1e-6)
    assert m["sign_accuracy"].item() == 0.5


def test_rating_regression_per_example_sums_to_the_loss_over_rated_entries():
    pred = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    target = torch.tensor([[2.0, 2.0], [1.0, 99.0]])
    mask = torch.tensor([[True, True], [True, False]])
    per, m = rating_regression(pred, target, mask, per_example=True)
    torch.testing.assert_close(per, torch.tensor([1.0, 4.0]))  # (1 + 0), (4); the unrated 99 never read
    assert per.sum().item() / rated_entries(mask) == pytest.approx(m["mse"].item()) == pytest.approx(5 / 3)


def test_gated_bradley_terry_by_hand():
    # two attributes; pair 1's gate logits (0, ln 3) weigh them 1/4, 3/4; pair 2's (0, 0) weigh them 1/2, 1/2
    chosen = torch.tensor([[2.0, 0.0], [1.0, 3.0]])
    rejected = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])
    log_beta = torch.tensor(math.log(2.0), requires_grad=True)
    losses, m = gated_bradley_terry(chosen, rejected, logits, logits, log_beta, per_example=True)
    # pair 1: R_c = 0.5, R_r = 0.75, d = -0.25; pair 2: R_c = 2, R_r = 1, d = 1; beta = 2
    assert losses[0].item() == pytest.approx(-_log_sigmoid(-0.5), abs=1e-6)
    assert losses[1].item() == pytest.approx(-_log_sigmoid(2.0), abs=1e-6)
    assert m["accuracy"].item() == 0.5 and m["margin_mean"].item() == pytest.approx(0.375)
    assert m["beta"].item() == pytest.approx(2.0)
    mean, _ = gated_bradley_terry(chosen, rejected, logits, logits, log_beta)
    assert mean.item() == pytest.approx(losses.mean().item())


def test_gated_bradley_terry_trains_the_gate_towards_the_deciding_attribute_and_not_the_rewards():
    chosen = torch.tensor([[0.0, 1.0]], requires_grad=True)  # attribute 1 decides the pair
    rejected = torch.tensor([[1.0, 0.0]])
    logits = torch.zeros(1, 2, requires_grad=True)
    loss, _ = gated_bradley_terry(chosen, rejected, logits, logits, torch.tensor(0.0))
    loss.backward()
    assert logits.grad[0, 1] < 0 < logits.grad[0, 0]  # a step against the gradient raises attribute 1's weight
    assert chosen.grad is None  # the attribute rewards are constants of the gate's stage
