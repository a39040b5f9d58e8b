"""The preference bandit: valid preference tensors and a solver whose equilibrium is checked by
its residual and by hand-worked cases."""

import math

import pytest
import torch

from alignlab.lab.preference_bandit import PreferenceBandit

FAMILIES = {"rps": PreferenceBandit.rock_paper_scissors, "random": PreferenceBandit.random_intransitive,
            "bt": PreferenceBandit.bradley_terry}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("beta", [0.05, 0.2, 1.0])
def test_solver_reaches_the_fixed_point(family, beta):
    game = FAMILIES[family](prompts=3, arms=5 if family != "rps" else 3, beta=beta, seed=1)
    P = game.preferences
    assert torch.allclose(P + P.transpose(1, 2), torch.ones_like(P))
    z, residual = game.nash_equilibrium()
    assert residual < 1e-8
    assert torch.allclose(game.best_response_logps(z), z, atol=1e-8)
    assert torch.allclose(z.exp().sum(-1), torch.ones(3, dtype=z.dtype))


def test_two_arms_hand_worked():
    # P(0 > pi) - P(1 > pi) = p - 1/2 whatever pi, so pi*(0)/pi*(1) = exp((0.75 - 0.5) / 0.25) = e
    game = PreferenceBandit(torch.log(torch.tensor([[0.5, 0.5]], dtype=torch.float64)),
                            torch.tensor([[[0.5, 0.75], [0.25, 0.5]]], dtype=torch.float64), beta=0.25)
    z, _ = game.nash_equilibrium()
    assert float(z[0, 0].exp()) == pytest.approx(math.e / (1 + math.e), abs=1e-10)
    # the same preferences as a Bradley-Terry reward r0 - r1 = logit(0.75) = log 3: the reward
    # objective's optimum pi_ref exp(r / beta) has odds 3^4 = 81, not e: another solution
    assert 81 / 82 - float(z[0, 0].exp()) > 0.25


def test_symmetric_cycle_with_uniform_reference_is_uniform():
    game = PreferenceBandit.rock_paper_scissors(prompts=1, strength=0.5, beta=0.1)
    game.reference_logps = torch.full((1, 3), -math.log(3), dtype=torch.float64)
    z, _ = game.nash_equilibrium()
    assert z.exp()[0].tolist() == pytest.approx([1 / 3] * 3)
    assert game.exploitability(z) == pytest.approx(0.0, abs=1e-12)  # the minimax winner of rock-paper-scissors


def test_rock_paper_scissors_structure_and_feedback():
    game = PreferenceBandit.rock_paper_scissors(prompts=2, strength=0.4)
    assert float(game.preferences[0, 0, 1]) == pytest.approx(0.9) and float(game.preferences[0, 1, 0]) == pytest.approx(0.1)
    assert float(game.preferences[0, 2, 0]) == pytest.approx(0.9)  # scissors... the cycle closes
    first, second = torch.tensor([[0, 1], [2, 2]]), torch.tensor([[1, 0], [0, 2]])
    assert game.prefer(first, second).flatten().tolist() == pytest.approx([0.9, 0.1, 0.9, 0.5])
    g = torch.Generator().manual_seed(0)
    wins = torch.stack([game.label(first, second, g) for _ in range(4000)]).double().mean(0)
    assert wins.flatten().tolist() == pytest.approx([0.9, 0.1, 0.9, 0.5], abs=0.03)


def test_invalid_preferences_are_refused():
    ref = torch.zeros(1, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="P\\[x, y, y'\\] \\+ P\\[x, y', y\\] = 1"):
        PreferenceBandit(ref, torch.tensor([[[0.5, 0.7], [0.7, 0.5]]], dtype=torch.float64), beta=0.1)
    with pytest.raises(ValueError, match="beta"):
        PreferenceBandit(ref, torch.full((1, 2, 2), 0.5, dtype=torch.float64), beta=0.0)
    with pytest.raises(ValueError, match="matching"):
        PreferenceBandit(ref, torch.full((1, 3, 3), 0.5, dtype=torch.float64), beta=0.1)
