"""The Nash losses (alignlab.losses.nash) against hand-worked values."""

import math

import pytest
import torch

from alignlab.losses.nash import (geometric_mixture_logps, inpo_loss, mnpo_loss, nash_md_loss, nash_mp_loss,
                                  self_play_rewards)

L = math.log


def test_geometric_mixture():
    # (0.8 * 0.5)^0.5 : (0.2 * 0.5)^0.5 = 2 : 1
    out = geometric_mixture_logps(torch.tensor([L(0.8), L(0.2)]), torch.tensor([L(0.5), L(0.5)]), 0.5)
    assert out.exp().tolist() == pytest.approx([2 / 3, 1 / 3])
    with pytest.raises(ValueError, match="mixture_coef"):
        geometric_mixture_logps(torch.zeros(2), torch.zeros(2), 1.5)


def test_nash_md_loss_hand_worked_and_its_gradient():
    policy = torch.tensor([L(0.5), L(0.25)], requires_grad=True)
    ref = torch.tensor([L(0.5), L(0.5)])
    loss, metrics = nash_md_loss(policy, ref, torch.tensor([0.9, 0.2]), beta=0.5)
    # advantages: 0.9 - 0.5 - 0 = 0.4;  0.2 - 0.5 - 0.5 * log(0.5) = 0.046574
    # loss = -(0.4 * log 0.5 + 0.046574 * log 0.25) / 2 = (0.277259 + 0.064565) / 2
    assert float(loss.detach()) == pytest.approx(0.170912, abs=1e-5)
    loss.backward()
    assert policy.grad.tolist() == pytest.approx([-0.2, -0.023287], abs=1e-5)  # -advantage / B: no grad through it
    assert float(metrics["nash/win_rate"]) == pytest.approx(0.55)


def test_nash_mp_loss_hand_worked():
    loss, _ = nash_mp_loss(torch.tensor([L(0.5)]), torch.tensor([L(0.25)]), torch.tensor([L(0.5)]), torch.tensor([1.0]),
                           beta=0.5, eta=2.0)
    # advantage = 1 - 0.5 - 0 - log(0.5 / 0.25) / 2 = 0.153426; loss = -0.153426 * log 0.5
    assert float(loss) == pytest.approx(0.153426 * 0.693147, abs=1e-5)


def test_inpo_loss_hand_worked_with_weights():
    # pair 1: policy log-ratio 1.0, previous -0.5, reference 1.0; eta beta = 0.2:
    #   h = 1 - 0.8 * (-0.5) - 0.2 * 1 = 1.2, loss (1.2 - 0.2)^2 = 1;  pair 2: h = 0, loss 0.04
    loss, metrics = inpo_loss(torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -3.0]), torch.tensor([-1.5, -1.0]),
                              torch.tensor([-1.0, -1.0]), torch.tensor([0.0, -2.0]), torch.tensor([-1.0, -2.0]),
                              beta=0.5, eta=0.4, weights=torch.tensor([3.0, 1.0]))
    assert float(loss) == pytest.approx((3 * 1.0 + 0.04) / 4)
    assert float(metrics["nash/h"]) == pytest.approx(0.6)


def test_mnpo_loss_hand_worked_and_inpo_is_a_population_of_one():
    # opponents' log-ratios 2 and -2 weighted 1/4, 3/4: -1; eta beta = 0.5; reference log-ratio 0.5
    #   h = 1 - 0.5 * (-1) - 0.5 * 0.5 = 1.25; loss = (1.25 - 0.25)^2 = 1
    loss, _ = mnpo_loss(torch.tensor([0.0]), torch.tensor([-1.0]), torch.tensor([[1.0, -1.0]]), torch.tensor([[-1.0, 1.0]]),
                        torch.tensor([0.5]), torch.tensor([0.0]), beta=1.0, eta=0.5, opponent_weights=torch.tensor([0.25, 0.75]))
    assert float(loss) == pytest.approx(1.0)
    g = torch.Generator().manual_seed(0)
    x = [torch.randn(5, generator=g) for _ in range(6)]
    one, _ = mnpo_loss(x[0], x[1], x[2][:, None], x[3][:, None], x[4], x[5], beta=0.3, eta=0.7, opponent_weights=torch.ones(1))
    assert float(one) == pytest.approx(float(inpo_loss(*x, beta=0.3, eta=0.7)[0]))
    with pytest.raises(ValueError, match=r"\(B, m\)"):
        mnpo_loss(x[0], x[1], x[2][:, None], x[3][:, None], x[4], x[5], beta=0.3, eta=0.7, opponent_weights=torch.ones(2) / 2)
    with pytest.raises(ValueError, match="eta \\* beta"):
        inpo_loss(*x, beta=1.0, eta=2.0)


def test_inpo_loss_gives_no_gradient_to_previous_or_reference():
    x = [torch.randn(4, requires_grad=True) for _ in range(6)]
    inpo_loss(*x, beta=0.5, eta=0.5)[0].backward()
    assert all(t.grad is None for t in x[2:]) and x[0].grad is not None


def test_self_play_rewards_are_win_rates_among_the_samples():
    p = torch.tensor([[[0.5, 0.8, 0.3], [0.2, 0.5, 0.6], [0.7, 0.4, 0.5]]])
    assert self_play_rewards(p)[0].tolist() == pytest.approx([0.55, 0.4, 0.55])
    with pytest.raises(ValueError, match="n >= 2"):
        self_play_rewards(torch.ones(2, 1, 1))
