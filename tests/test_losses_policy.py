"""Policy-gradient losses, advantage estimators, shaping and controllers against hand-worked values."""

from __future__ import annotations

import math

import pytest
import torch

from alignlab.losses.advantages import (
    discounted_returns,
    gae,
    group_advantages,
    reinforce_pp_advantages,
    remax_advantages,
    rloo_advantages,
    token_rewards,
    whiten,
)
from alignlab.losses.control import adaptive_kl_coef, cost_upper_bound, lagrange_update, lagrangian_advantages
from alignlab.losses.control import safety_test
from alignlab.losses.policy import clipped_surrogate, clipped_value_loss, kl_estimate, kl_loss, p3o_loss
from alignlab.losses.shaping import length_penalty, par_shaping, policy_filter

T = torch.tensor


def test_gae_four_step_example_by_hand():
    # gamma 0.9, lambda 0.8: deltas 0.04, 0.03, 0.02, 0.2; A_t = delta_t + 0.72 A_{t+1}
    rewards = T([[0.0, 0.0, 0.0, 1.0], [0.0, 2.0, 0.0, 0.0]])
    values = T([[0.5, 0.6, 0.7, 0.8], [1.0, 1.0, 9.0, 9.0]])  # row 1: positions 2, 3 are padding
    mask = T([[1, 1, 1, 1], [1, 1, 0, 0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    assert adv[0].tolist() == pytest.approx([0.1466176, 0.14808, 0.164, 0.2], abs=1e-6)
    assert ret[0].tolist() == pytest.approx([0.6466176, 0.74808, 0.864, 1.0], abs=1e-6)
    # the padded values (9.0) never leak in: delta_1 = 2 - 1 = 1, delta_0 = 0.9 * 1 - 1 = -0.1
    assert adv[1].tolist() == pytest.approx([-0.1 + 0.72, 1.0, 0.0, 0.0], abs=1e-6)


def test_gae_with_lambda_one_is_return_minus_value():
    r = T([[0.1, -0.2, 0.3]])
    v = T([[0.4, 0.5, 0.6]])
    adv, ret = gae(r, v, torch.ones(1, 3), gamma=0.5, lam=1.0)
    g = discounted_returns(r, torch.ones(1, 3), gamma=0.5)
    assert g[0].tolist() == pytest.approx([0.1 - 0.1 + 0.075, -0.2 + 0.15, 0.3])
    assert torch.allclose(adv, g - v) and torch.allclose(ret, g)


def test_reward_is_placed_on_the_last_real_token_only():
    mask = T([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    kl = torch.full((3, 4), 0.1)
    out = token_rewards(T([2.0, 3.0, 4.0]), mask, kl, kl_coef=0.5)
    assert out.flatten().tolist() == pytest.approx([-0.05, -0.05, 1.95, 0.0, 2.95, 0, 0, 0, 0, 0, 0, 0])


def test_group_normalized_rloo_and_remax_advantages_by_hand():
    rewards = T([1.0, 2.0, 6.0, 4.0, 4.0, 4.0])
    s = math.sqrt(7.0)  # sample std of (1, 2, 6): sqrt((4 + 1 + 9) / 2)
    grpo = group_advantages(rewards, 3, eps=1e-4)
    assert grpo.tolist() == pytest.approx([-2 / (s + 1e-4), -1 / (s + 1e-4), 3 / (s + 1e-4), 0, 0, 0], abs=1e-6)
    assert group_advantages(rewards, 3, scale=False).tolist() == pytest.approx([-2, -1, 3, 0, 0, 0])
    assert rloo_advantages(rewards, 3).tolist() == pytest.approx([1 - 4, 2 - 3.5, 6 - 1.5, 0, 0, 0])
    assert remax_advantages(rewards, T([2.5, 5.0]), 3).tolist() == pytest.approx([-1.5, -0.5, 3.5, -1, -1, -1])
    with pytest.raises(ValueError, match="n >= 2"):
        rloo_advantages(rewards, 1)
    with pytest.raises(ValueError, match="prompts \\* n"):
        group_advantages(rewards, 4)


def test_reinforce_pp_normalizes_returns_over_the_whole_batch():
    mask = T([[1, 1, 1], [1, 0, 0]])
    rewards = token_rewards(T([2.0, 3.0]), mask, torch.full((2, 3), 0.1), kl_coef=0.5)
    adv = reinforce_pp_advantages(rewards, mask)
    g = [1.85, 1.9, 1.95, 2.95]  # rewards-to-go of the masked tokens
    mean = sum(g) / 4
    std = math.sqrt(sum((x - mean) ** 2 for x in g) / 4)
    want = [(x - mean) / std for x in g]
    assert adv[0].tolist() == pytest.approx(want[:3], abs=1e-5)
    assert adv[1].tolist() == pytest.approx([want[3], 0, 0], abs=1e-5)


def test_whiten_ignores_masked_entries():
    x = T([[1.0, 3.0, 100.0]])
    out = whiten(x, T([[1, 1, 0]]))
    assert out[0].tolist() == pytest.approx([-1.0, 1.0, 0.0], abs=1e-6)


def test_kl_estimators_match_their_definitions():
    logp, ref = T([0.5 - 2.0]), T([-2.0])  # log-ratio 0.5
    assert kl_estimate(logp, ref, "k1").item() == pytest.approx(0.5)
    assert kl_estimate(logp, ref, "k2").item() == pytest.approx(0.125)
    assert kl_estimate(logp, ref, "k3").item() == pytest.approx(math.exp(-0.5) - 1 + 0.5)
    # k3 of equal distributions is 0 and never negative
    assert kl_estimate(T([-1.0, -3.0]), T([-1.0, -0.5]), "k3").min() >= 0
    with pytest.raises(ValueError, match="k4"):
        kl_estimate(logp, ref, "k4")


def test_k2_loss_gradient_is_the_reverse_kl_gradient_on_a_categorical():
    # grad of KL(pi || pi_ref) for pi = softmax(z) equals E_{y~pi}[grad k2] taken in expectation
    z = T([0.3, -0.2, 0.5], ).requires_grad_()
    ref = torch.log_softmax(T([0.0, 0.4, -0.1]), -1)
    logp = torch.log_softmax(z, -1)
    probs = logp.exp().detach()
    expected_k2 = (probs * kl_estimate(logp, ref, "k2")).sum()  # expectation with fixed sampling weights
    (g_k2,) = torch.autograd.grad(expected_k2, z)
    logp = torch.log_softmax(z, -1)
    kl = (logp.exp() * (logp - ref)).sum()
    (g_kl,) = torch.autograd.grad(kl, z)
    assert torch.allclose(g_k2, g_kl, atol=1e-6)


def test_clipped_surrogate_by_hand_with_asymmetric_clip():
    ratios = T([[1.5, 0.5, 1.1, 0.7]])
    adv = T([[1.0, 1.0, -2.0, -1.0]])
    loss, m = clipped_surrogate(ratios.log(), torch.zeros(1, 4), adv, torch.ones(1, 4), clip_low=0.2, clip_high=0.3)
    # tokens: -min(1.5, 1.3) = -1.3; -min(0.5, 0.8) = -0.5; -min(-2.2, -2.2) = 2.2; -min(-0.7, -0.8) = 0.8
    assert loss.item() == pytest.approx((-1.3 - 0.5 + 2.2 + 0.8) / 4)
    assert m["clip_fraction"].item() == pytest.approx(0.5)
    # dual clip bounds the loss of a negative-advantage token whose ratio exploded: min(5, 3 * 1)
    loss, _ = clipped_surrogate(T([[math.log(5.0)]]), T([[0.0]]), T([[-1.0]]), T([[1]]), dual_clip=3.0)
    assert loss.item() == pytest.approx(3.0)


def test_clipped_surrogate_broadcasts_sequence_advantages_and_reduces_over_the_mask():
    logps = torch.zeros(2, 3, requires_grad=True)
    mask = T([[1, 1, 1], [1, 0, 0]])
    loss, _ = clipped_surrogate(logps, torch.zeros(2, 3), T([1.0, -2.0]), mask, reduction="seq_mean_token_mean")
    assert loss.item() == pytest.approx((-1.0 + 2.0) / 2)
    loss.backward()
    assert logps.grad[1, 1:].abs().sum() == 0  # padding gets no gradient
    assert logps.grad[0].tolist() == pytest.approx([-1 / 6] * 3)


def test_clipped_value_loss_by_hand():
    loss, m = clipped_value_loss(T([[1.0, 2.0]]), T([[0.5, 2.5]]), T([[2.0, 1.0]]), torch.ones(1, 2), clip=0.2)
    # both tokens: the clipped prediction (0.7 and 2.3) is further from the return: 0.5 * 1.3^2
    assert loss.item() == pytest.approx(0.845)
    assert m["value_clip_fraction"].item() == 1.0
    loss, _ = clipped_value_loss(T([[1.0, 2.0]]), T([[0.5, 2.5]]), T([[2.0, 1.0]]), torch.ones(1, 2), clip=None)
    assert loss.item() == pytest.approx(0.5)


def test_kl_loss_reference_carries_no_gradient():
    logp = T([[-1.0, -2.0]], ).requires_grad_()
    ref = T([[-1.5, -1.0]]).requires_grad_()
    kl_loss(logp, ref, torch.ones(1, 2)).backward()
    assert ref.grad is None and logp.grad is not None


def test_p3o_gradient_sign_and_invariance_to_a_per_prompt_constant():
    for mode in ("joint", "separate"):
        la, lb = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
        loss, _ = p3o_loss(la, lb, torch.zeros(2), torch.zeros(2), T([1.0, 0.0]), T([0.0, 3.0]), mode=mode)
        ga, gb = torch.autograd.grad(loss, (la, lb))
        # pair 0: a better -> descent raises log pi(a), lowers log pi(b); pair 1 the other way
        assert ga[0] < 0 < gb[0] and ga[1] > 0 > gb[1]
        # the gradient at rho = 1 is -(r_a - r_b) / 2 / P for y_a
        assert ga.tolist() == pytest.approx([-0.25, 0.75])
        la2, lb2 = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
        shift = T([10.0, -7.0])  # a constant per prompt, added to both responses' rewards
        loss2, _ = p3o_loss(la2, lb2, torch.zeros(2), torch.zeros(2), T([1.0, 0.0]) + shift, T([0.0, 3.0]) + shift,
                            mode=mode)
        ga2, gb2 = torch.autograd.grad(loss2, (la2, lb2))
        assert torch.equal(ga, ga2) and torch.equal(gb, gb2) and loss.item() == pytest.approx(loss2.item())


def test_p3o_joint_clip_by_hand():
    # rho = exp(0.5 - 0) = 1.6487 > 1.2 with A = (2 - 0) / 2 = 1: clipped to 1.2 -> loss -1.2
    loss, m = p3o_loss(T([0.5]), T([0.0]), T([0.0]), T([0.0]), T([2.0]), T([0.0]), clip=0.2, mode="joint")
    assert loss.item() == pytest.approx(-1.2) and m["clip_fraction"].item() == 1.0


def test_lagrange_multiplier_rises_above_the_threshold_and_falls_below():
    assert lagrange_update(1.0, 0.5, threshold=0.2, lr=0.1) == pytest.approx(1.03)
    assert lagrange_update(1.0, 0.0, threshold=0.2, lr=0.1) == pytest.approx(0.98)
    assert lagrange_update(0.01, -5.0, threshold=0.2, lr=0.1) == 0.0  # projected onto lambda >= 0
    assert lagrangian_advantages(T([1.0]), T([2.0]), 1.0).item() == pytest.approx(-0.5)


def test_adaptive_kl_controller_by_hand():
    assert adaptive_kl_coef(0.1, 12.0, target=6.0, horizon=10000, n_steps=256) == pytest.approx(0.1 * (1 + 0.2 * 0.0256))
    assert adaptive_kl_coef(0.1, 5.4, target=6.0, horizon=100, n_steps=10) == pytest.approx(0.1 * (1 - 0.1 * 0.1))


def test_cost_upper_bound_and_safety_test_by_hand():
    bound = cost_upper_bound(T([1.0, 2.0, 3.0, 4.0]), delta=0.05)
    # mean 2.5, s = sqrt(5/3), t_{0.95, 3} = 2.353363
    assert bound.upper == pytest.approx(2.5 + 2.353363 * math.sqrt(5 / 3) / 2, abs=1e-5)
    assert cost_upper_bound(T([1.0, 2.0, 3.0, 4.0]), delta=0.05, inflation=2.0).upper > bound.upper
    assert safety_test(T([1.0, 2.0, 3.0, 4.0]), threshold=4.1, delta=0.05)["passed"]
    failed = safety_test(T([1.0, 2.0, 3.0, 4.0]), threshold=3.9, delta=0.05)
    assert not failed["passed"] and failed["cost_upper_bound"] > 3.9


def test_shaping_by_hand():
    assert length_penalty(T([1.0, 1.0]), T([10, 30]), 0.01).tolist() == pytest.approx([0.9, 0.7])
    assert length_penalty(T([1.0]), T([30]), 0.1, target=20).tolist() == pytest.approx([0.0])
    par = par_shaping(T([1.0, 2.0]), T([[0.0, 2.0], [0.0, 0.0]]))
    assert par.tolist() == pytest.approx([0.5, 1 / (1 + math.exp(-2))])


def test_policy_filter_keeps_the_extremes_of_each_group():
    rewards = T([3.0, 1.0, 2.0, 5.0, 5.0, 5.0])
    assert policy_filter(rewards, 3, "best_worst").tolist() == [True, True, False, True, True, False]
    assert policy_filter(rewards, 3, "best_of_n").tolist() == [True, False, False, True, False, False]
    keep = policy_filter(rewards, 3, "best_random", generator=torch.Generator().manual_seed(0))
    assert keep.reshape(2, 3).sum(-1).tolist() == [2, 2] and keep[0] and keep[3]
    assert policy_filter(rewards, 3, "none").all()
