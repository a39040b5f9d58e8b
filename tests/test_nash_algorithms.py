"""The Nash update rules: one step against a hand-worked value, convergence to the solver's
regularized equilibrium on intransitive bandits (exact and sampled), and the reward-based
baselines ending elsewhere."""


import pytest
import torch

from alignlab.lab.preference_bandit import PreferenceBandit
from alignlab.nash import egpo, inpo, mirror_prox, mnpo, nash_md, spo
from alignlab.nash.baselines import bradley_terry_reward, dpo_policy, reward_policy
from alignlab.nash.run import NASH_METHODS, run_nash
from alignlab.nash.tabular import NashBanditConfig, NashState

G = torch.Generator()


@pytest.fixture
def rps():
    """Rock-paper-scissors with certain wins (A = P - 1/2 has entries +-1/2), pi_ref = (1/2, 1/4, 1/4),
    beta = 1/2. From pi = pi_ref: P(. > pi) - 1/2 = A pi = (0, -1/8, 1/8)."""
    A = torch.tensor([[0, .5, -.5], [-.5, 0, .5], [.5, -.5, 0]], dtype=torch.float64)
    return PreferenceBandit(torch.log(torch.tensor([[0.5, 0.25, 0.25]], dtype=torch.float64)), (0.5 + A)[None], beta=0.5)


def _one_step(module, game, **kw):
    return module.exact_step(game, NashState(game.reference_logps.clone()), NashBanditConfig(**kw), G)[0].exp().tolist()


# pi_ref exp(A pi_ref) normalized; each value worked by hand from the fixture's docstring.
MIRROR_STEP = [0.498052, 0.219765, 0.282183]


def test_nash_md_step(rps):
    # m = eta beta = 0.5 mixes pi_ref with itself: the opponent is pi_ref; pi_1 ∝ pi_ref exp(A pi_ref)
    assert _one_step(nash_md, rps, eta=1.0) == pytest.approx(MIRROR_STEP, abs=1e-6)


def test_nash_mp_step(rps):
    # half = softmax(log pi_ref + A pi_ref / 1.5) = (0.499133, 0.229612, 0.271255);
    # A half = (-0.020821, -0.134939 + ..., ...): full = softmax(log pi_ref + A half / 1.5)
    assert _one_step(mirror_prox, rps, eta=1.0) == pytest.approx([0.493937, 0.232103, 0.273960], abs=1e-6)


def test_inpo_step_minimizes_its_loss_to_the_mirror_descent_step(rps):
    # (1 - eta beta) log pi + eta beta log pi_ref = log pi_ref at pi = pi_ref: the same step as above
    assert _one_step(inpo, rps, eta=1.0) == pytest.approx(MIRROR_STEP, abs=1e-6)


def test_egpo_step(rps):
    # half = the mirror step; full = softmax(log pi_ref + A half)
    assert _one_step(egpo, rps, eta=1.0) == pytest.approx([0.486397, 0.225237, 0.288366], abs=1e-6)


def test_spo_step(rps):
    # advantages P(. > pi) = (1/2, 3/8, 5/8), mean 1/2: z += 2 * pi * (0, -1/8, 1/8) = (0, -1/16, 1/16)
    assert _one_step(spo, rps, learning_rate=2.0) == pytest.approx([0.499512, 0.234624, 0.265864], abs=1e-6)


def test_mnpo_step_is_its_closed_form_and_inpo_with_one_member(rps):
    other = torch.log(torch.tensor([[0.2, 0.3, 0.5]], dtype=torch.float64))
    state = NashState(rps.reference_logps.clone(), population=[other])
    cfg = NashBanditConfig(eta=1.0, population=2)
    members, lam = mnpo.population(state, cfg)
    assert lam.tolist() == [0.5, 0.5] and members[0] is other
    expected = mnpo.closed_form_step(rps, members, lam, 1.0)
    assert torch.allclose(mnpo.exact_step(rps, state, cfg, G), expected, atol=1e-6)
    assert not torch.allclose(expected, inpo.mirror_descent_step(rps, rps.reference_logps, 1.0), atol=1e-3)
    one = mnpo.exact_step(rps, state, NashBanditConfig(eta=1.0, population=1), G)
    assert one[0].exp().tolist() == pytest.approx(MIRROR_STEP, abs=1e-6)


def test_extragradient_step_hand_worked():
    theta = torch.nn.Parameter(torch.tensor([2.0]))
    egpo.extragradient_step([theta], lambda: 0.5 * (theta ** 2).sum(), lr=0.5)
    assert float(theta.detach()) == pytest.approx(1.5)  # look-ahead 2 - 0.5*2 = 1; 2 - 0.5*1


GAMES = {"rps": lambda: PreferenceBandit.rock_paper_scissors(prompts=4, beta=0.2, seed=0),
         "random": lambda: PreferenceBandit.random_intransitive(prompts=4, arms=5, beta=0.2, seed=0)}


@pytest.fixture(scope="module")
def solved():
    return {name: (game, game.nash_equilibrium()[0]) for name, game in ((n, f()) for n, f in GAMES.items())}


@pytest.mark.parametrize("family", GAMES)
@pytest.mark.parametrize("method", NASH_METHODS)
def test_exact_methods_converge_to_the_regularized_equilibrium(solved, family, method):
    game, target = solved[family]
    spec = NASH_METHODS[method]
    result = run_nash(game, NashBanditConfig(method=method, iterations=150 if method == "mnpo" else 60, eta=min(spec.eta, 1.0),
                                             learning_rate=spec.learning_rate), target)
    assert result["tv_start"] > 0.15  # MNPO's opponents lag (the mean of 4 past iterates): more iterations
    assert result["tv"] < (0.015 if method == "nash_md" else 1e-3), result["history"]


@pytest.mark.parametrize("method", NASH_METHODS)
def test_sampled_methods_converge_to_the_regularized_equilibrium(solved, method):
    game, target = solved["random"]
    spec = NASH_METHODS[method]
    result = run_nash(game, NashBanditConfig(method=method, iterations=200, sampled=True, eta=min(spec.eta, 1.0),
                                             learning_rate=spec.learning_rate), target)
    assert result["tv"] < 0.04, result["history"]


def test_nash_md_constant_step_bias_shrinks_with_the_step(solved):
    game, target = solved["rps"]
    tv = [run_nash(game, NashBanditConfig(method="nash_md", iterations=300, eta=eta), target)["tv"] for eta in (1.0, 0.25)]
    assert tv[0] > 0.01 and tv[1] < tv[0] / 3


def test_reward_based_methods_end_elsewhere_on_intransitive_preferences(solved):
    for family, (game, target) in solved.items():
        bt = reward_policy(game, bradley_terry_reward(game))
        assert game.tv_distance(bt, target) > 0.3, family
    game, target = solved["random"]
    dpo = dpo_policy(game, pairs=64, steps=300, seed=0)
    assert game.tv_distance(dpo, target) > 0.3
    assert game.tv_distance(dpo, bt) < 0.05  # DPO on reference pairs lands on the Bradley-Terry reward's optimum


def test_bad_settings_are_refused(solved):
    game, _ = solved["rps"]
    with pytest.raises(ValueError, match="unknown Nash method 'nash'"):
        run_nash(game, NashBanditConfig(method="nash"))
    with pytest.raises(ValueError, match="eta \\* beta"):
        run_nash(game, NashBanditConfig(method="inpo", eta=10.0))
    with pytest.raises(ValueError, match="feedback"):
        run_nash(game, NashBanditConfig(method="inpo", feedback="votes"))
