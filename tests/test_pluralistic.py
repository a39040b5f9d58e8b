"""Pluralistic reward models and policies (issue 21): hand-worked losses and updates, the exact
max-min policy, EM group recovery and per-group held-out accuracy on a small synthetic population."""

import math

import pytest
import torch

from alignlab.lab.population import Population, candidate_pool, concise_reward, effusive_reward, parse_groups, topic_prompts
from alignlab.losses.pluralistic import gaussian_kl, group_posterior, maxmin_objective, personalized_bt_loss, vpl_loss
from alignlab.pluralistic.maxmin import fit_mixture, maxmin_policy
from alignlab.pluralistic.pairs import fit_linear_bt, pair_data, preference_accuracy
from alignlab.pluralistic.policy import center_rewards, kl_policy
from alignlab.pluralistic.prlhf import train_prlhf
from alignlab.pluralistic.vpl import _context_mask, infer_latents, train_vpl


def test_group_posterior_by_hand():
    # Two groups, two users. User 0 has pairs 0 and 1, user 1 has pair 2. Reward margins per group:
    margins = torch.tensor([[2.0, -1.0], [1.0, 0.0], [-3.0, 1.0]])  # (N, G) r_g(c) - r_g(r)
    prior = torch.tensor([0.25, 0.75])
    q = group_posterior(margins, torch.zeros(3, 2), torch.tensor([0, 0, 1]), 2, prior.log())
    s = lambda x: 1 / (1 + math.exp(-x))
    u0 = [0.25 * s(2) * s(1), 0.75 * s(-1) * s(0)]
    u1 = [0.25 * s(-3), 0.75 * s(1)]
    expected = torch.tensor([[u0[0] / sum(u0), u0[1] / sum(u0)], [u1[0] / sum(u1), u1[1] / sum(u1)]])
    assert torch.allclose(q, expected, atol=1e-6)
    # a user without pairs keeps the prior
    q3 = group_posterior(margins, torch.zeros(3, 2), torch.tensor([0, 0, 1]), 3, prior.log())
    assert torch.allclose(q3[2], prior)


def test_gaussian_kl_and_vpl_loss_by_hand():
    mean, logvar = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, math.log(2.0)]])
    kl = 0.5 * ((1 + 1 - 0 - 1) + (0 + 2 - math.log(2) - 1))
    assert gaussian_kl(mean, logvar).item() == pytest.approx(kl, abs=1e-6)
    assert gaussian_kl(torch.zeros(3, 4), torch.zeros(3, 4)).abs().max() == 0  # q = prior
    bt = -(math.log(1 / (1 + math.exp(-1.0))) + math.log(0.5)) / 2
    loss, m = vpl_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]), mean, logvar, kl_weight=0.3)
    assert loss.item() == pytest.approx(bt + 0.3 * kl, abs=1e-6)
    assert m["bt"].item() == pytest.approx(bt, abs=1e-6) and m["accuracy"].item() == 0.5


def test_personalized_bt_loss_by_hand():
    individual = torch.tensor([[1.0, 2.0], [0.0, 0.0]])  # ||o||^2: 5 and 0, mean 2.5
    loss, _ = personalized_bt_loss(torch.tensor([2.0]), torch.tensor([0.0]), individual, l2=0.1)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-2.0)) + 0.1 * 2.5, abs=1e-6)


def test_maxmin_objective_by_hand():
    ref = torch.log(torch.tensor([[0.5, 0.5]]))
    logps = torch.log(torch.tensor([[0.25, 0.75]]))
    rewards = torch.tensor([[[1.0, 0.0]], [[0.0, 2.0]]])  # group values 0.25 and 1.5
    kl = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    value, m = maxmin_objective(logps, ref, rewards, beta=0.5)
    assert value.item() == pytest.approx(0.25 - 0.5 * kl, abs=1e-6)
    assert torch.allclose(m["group_values"], torch.tensor([0.25, 1.5]))


def test_maxmin_policy_two_groups_by_hand():
    # r_1 = (2, 0), r_2 = (0, 1), uniform reference, beta 1. Interior solution: equal group values
    # 2p = 1 - p, p = 1/3; pi_lambda(y1)/pi_lambda(y2) = exp(3 lambda_1 - 1) = 1/2, lambda_1 = (1 - ln 2) / 3.
    ref = torch.log(torch.tensor([[0.5, 0.5]]))
    sol = maxmin_policy(ref, torch.tensor([[[2.0, 0.0]], [[0.0, 1.0]]]), 1.0)
    assert torch.allclose(sol.logps.exp(), torch.tensor([[1 / 3, 2 / 3]]), atol=1e-4)
    assert sol.group_weights[0].item() == pytest.approx((1 - math.log(2)) / 3, abs=1e-4)
    kl = (5 / 3) * math.log(2) - math.log(3)
    assert sol.value == pytest.approx(2 / 3 - kl, abs=1e-6) and 0 <= sol.gap < 1e-6


def test_maxmin_policy_with_one_binding_group_is_that_group_s_kl_policy():
    # Group 2 is better off than group 1 on every response: only group 1 binds (lambda = (1, 0)).
    ref = torch.log(torch.tensor([[0.2, 0.3, 0.5]]))
    r = torch.tensor([[[1.0, 0.0, 0.5]], [[3.0, 2.0, 2.5]]])
    sol = maxmin_policy(ref, r, 0.5)
    assert torch.allclose(sol.logps, kl_policy(ref, r[0], 0.5), atol=1e-3)
    assert sol.group_weights[0].item() > 0.999


def test_maxmin_policy_beats_every_reward_policy_on_the_max_min_objective():
    g = torch.Generator().manual_seed(0)
    ref = torch.log_softmax(torch.randn(4, 6, generator=g), -1)
    r = torch.randn(3, 4, 6, generator=g)
    sol = maxmin_policy(ref, r, 0.3)
    others = [kl_policy(ref, r[k], 0.3) for k in range(3)] + [kl_policy(ref, r.mean(0), 0.3)]
    for logps in others:
        assert sol.value >= maxmin_objective(logps, ref, r, beta=0.3)[0].item() - 1e-6
    assert sol.gap < 1e-5


def test_kl_policy_and_centering():
    ref = torch.log(torch.tensor([[0.25, 0.75]]))
    logps = kl_policy(ref, torch.tensor([[math.log(3.0), 0.0]]), 1.0)  # 0.25 * 3 : 0.75 * 1
    assert torch.allclose(logps.exp(), torch.tensor([[0.5, 0.5]]))
    assert torch.allclose(center_rewards(torch.tensor([[4.0, 0.0]]), ref), torch.tensor([[3.0, -1.0]]))


def test_fit_linear_bt_is_the_logistic_optimum():
    # 1-D: three pairs say +1, one says -1: w sigma(-w) * 3 = sigma(w) * 1 -> w = ln 3; with weight 2 on
    # the dissenting pair, w = ln(3 / 2).
    c = torch.tensor([[1.0], [1.0], [1.0], [0.0]])
    r = torch.tensor([[0.0], [0.0], [0.0], [1.0]])
    assert fit_linear_bt(c, r, l2=0.0).item() == pytest.approx(math.log(3), abs=1e-4)
    assert fit_linear_bt(c, r, torch.tensor([1.0, 1, 1, 2]), l2=0.0).item() == pytest.approx(math.log(1.5), abs=1e-4)


def test_context_mask_takes_k_pairs_per_user_and_leaves_targets():
    user = torch.tensor([0, 1, 0, 0, 1, 2, 0, 0])
    mask = _context_mask(user, 4, 3, torch.Generator().manual_seed(0))
    assert [int(mask[user == u].sum()) for u in range(3)] == [3, 1, 1]  # user 2 has one pair: kept as context


def test_population_groups_conflict_and_records_carry_users():
    groups = parse_groups("effusive=3,concise=2", 0.2, 0.05)
    pop = Population(groups, seed=0)
    assert pop.users == ["effusive-0", "effusive-1", "effusive-2", "concise-0", "concise-1"]
    assert pop.group_of == [0, 0, 0, 1, 1]
    texts = ["A kettle is absolutely wonderful, delightful and amazing!", "A kettle is there."]
    assert effusive_reward(texts)[0] > effusive_reward(texts)[1] and concise_reward(texts)[1] > concise_reward(texts)[0]
    pool = candidate_pool("a kettle", 12)
    assert len(set(pool)) == 12 and pool == candidate_pool("a kettle", 12)
    records = pop.label(["p"], [pool], 4, seed=0)
    assert [r.annotator for r in records] == [u for u in pop.users for _ in range(4)]
    with pytest.raises(ValueError, match="unknown group 'angry'"):
        parse_groups("effusive=3,angry=2", 0.2, 0.0)


@pytest.fixture(scope="module")
def population_data():
    """12 effusive and 6 concise users, 40 training pairs each (train topics) and 30 held-out pairs
    (other topics)."""
    train, held = topic_prompts(40, 20, seed=0)
    pop = Population(parse_groups("effusive=12,concise=6", 0.2, 0.05), seed=0)
    pools = lambda topics: [candidate_pool(t, 12) for t in topics]
    d = pair_data(pop.label(train, pools(train), 40, seed=0), pop.users)
    h = pair_data(pop.label(held, pools(held), 30, seed=1), pop.users)
    return pop, d, h, torch.tensor(pop.group_of)


def _group_accuracy(acc, truth, g):
    return float(acc[truth == g].mean())


def test_em_mixture_recovers_the_user_groups(population_data):
    pop, d, _, truth = population_data
    mixture = fit_mixture(d, 2, seed=0)
    found = mixture.user_group()
    match = max(float((found == truth).float().mean()), float((found == 1 - truth).float().mean()))
    assert match >= 0.95


def test_vpl_and_prlhf_beat_the_single_model_on_each_group(population_data):
    _, d, h, truth = population_data
    w = fit_linear_bt(d.chosen, d.rejected)
    single = preference_accuracy(h.chosen @ w, h.rejected @ w, h.user, h.n_users)
    vpl = train_vpl(d, steps=200, seed=0)
    z = infer_latents(vpl, d)[h.user]
    prlhf = train_prlhf(d, steps=200, seed=0)
    with torch.no_grad():
        vpl_acc = preference_accuracy(vpl.reward(h.chosen, z), vpl.reward(h.rejected, z), h.user, h.n_users)
        prlhf_acc = preference_accuracy(prlhf.reward(h.chosen, h.user), prlhf.reward(h.rejected, h.user), h.user, h.n_users)
    # The single model follows the majority: the minority (concise) is where it fails.
    assert _group_accuracy(single, truth, 1) < 0.6
    for acc in (vpl_acc, prlhf_acc):
        assert _group_accuracy(acc, truth, 1) > _group_accuracy(single, truth, 1) + 0.2
        assert _group_accuracy(acc, truth, 0) > _group_accuracy(single, truth, 0) - 0.03


def test_encoder_features_are_cached_unit_scale_embeddings(tiny_encoder_dir):
    from alignlab.pluralistic.pairs import EncoderFeatures

    features = EncoderFeatures(str(tiny_encoder_dir))
    x = features(["A kettle is nice.", "A kettle is there.", "A kettle is nice."])
    assert x.shape == (3, 32) and torch.equal(x[0], x[2])
    assert torch.allclose(x.norm(dim=1), torch.full((3,), 32**0.5), atol=1e-4)
    assert len(features.cache) == 2
