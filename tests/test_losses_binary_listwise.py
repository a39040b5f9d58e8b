"""KTO, PRO and LiPO-lambda against values worked out by hand, and their properties."""

import math

import pytest
import torch

from alignlab.losses import LOSSES, get_loss, kto, kto_reference_point, lipo_lambda, pro
from alignlab.losses.preference import dpo, simpo

NAN = float("nan")


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def t(values, requires_grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=requires_grad)


def close(actual: torch.Tensor, expected, rtol: float = 1e-9) -> bool:
    return torch.allclose(actual, torch.as_tensor(expected, dtype=actual.dtype), rtol=rtol, atol=1e-12)


# --- KTO ------------------------------------------------------------------------------------------

# r = pi - ref = [0.5, -0.2, 0.1]; labels: desirable, undesirable, desirable.
KTO_POLICY = [-5.0, -6.0, -7.0]
KTO_REFERENCE = [-5.5, -5.8, -7.1]
KTO_LABELS = [True, False, True]


def kto_inputs(requires_grad: bool = False):
    return t(KTO_POLICY, requires_grad), t(KTO_REFERENCE, requires_grad), torch.tensor(KTO_LABELS)


def test_kto_matches_hand_value():
    beta, z0, w_d, w_u = 0.3, 0.2, 1.5, 0.8
    expected = [
        w_d * (1 - sigmoid(beta * (0.5 - z0))),
        w_u * (1 - sigmoid(beta * (z0 - (-0.2)))),
        w_d * (1 - sigmoid(beta * (0.1 - z0))),
    ]
    policy, reference, labels = kto_inputs()
    per_example, metrics = kto(policy, reference, labels, beta=beta, kl_reference=torch.tensor(z0),
                               desirable_weight=w_d, undesirable_weight=w_u, per_example=True)
    assert close(per_example, expected)
    loss, _ = kto(policy, reference, labels, beta=beta, kl_reference=z0, desirable_weight=w_d, undesirable_weight=w_u)
    assert loss.item() == pytest.approx(sum(expected) / 3, rel=1e-9)
    assert metrics["rewards/chosen"].item() == pytest.approx(0.3 * (0.5 + 0.1) / 2)
    assert metrics["rewards/rejected"].item() == pytest.approx(0.3 * -0.2)
    assert metrics["kl"].item() == pytest.approx(0.2)
    assert (metrics["count/desirable"].item(), metrics["count/undesirable"].item()) == (2, 1)


def test_kto_weights_scale_only_their_own_examples():
    policy, reference, labels = kto_inputs()
    base, _ = kto(policy, reference, labels, beta=0.3, kl_reference=0.1, per_example=True)
    heavier, _ = kto(policy, reference, labels, beta=0.3, kl_reference=0.1, desirable_weight=2.0,
                     undesirable_weight=0.5, per_example=True)
    assert close(heavier, base * torch.tensor([2.0, 0.5, 2.0], dtype=torch.float64))


def test_kto_gradient_signs_and_detached_references():
    policy, reference, labels = kto_inputs(requires_grad=True)
    kl_reference = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    loss, _ = kto(policy, reference, labels, beta=0.3, kl_reference=kl_reference)
    loss.backward()
    assert policy.grad[0] < 0 and policy.grad[2] < 0  # desirable: raise its likelihood
    assert policy.grad[1] > 0  # undesirable: lower it
    assert reference.grad is None and kl_reference.grad is None


def test_kto_reference_point_by_hand():
    policy, reference = t([-5.0, -6.0], requires_grad=True), t([-5.5, -6.1])
    z0 = kto_reference_point(policy, reference)
    assert z0.item() == pytest.approx((0.5 + 0.1) / 2) and not z0.requires_grad
    assert kto_reference_point(t([-5.0, -6.0]), t([-4.0, -6.2])).item() == 0.0  # mean -0.4 clamps at 0


def test_kto_batch_without_undesirable_examples_reports_zero_with_count():
    policy, reference, _ = kto_inputs()
    loss, metrics = kto(policy, reference, torch.ones(3, dtype=torch.bool), beta=0.3, kl_reference=0.0)
    assert torch.isfinite(loss) and metrics["rewards/rejected"].item() == 0.0
    assert metrics["count/undesirable"].item() == 0


def test_kto_bad_inputs():
    policy, reference, labels = kto_inputs()
    with pytest.raises(TypeError, match="bool"):
        kto(policy, reference, labels.long(), beta=0.3, kl_reference=0.0)
    with pytest.raises(TypeError):
        kto(policy, reference, labels, beta=0.3, kl_reference=0.0, desirable_wieght=1.0)
    with pytest.raises(ValueError, match="shape|\\(B,\\)"):
        kto(policy, reference[:2], labels, beta=0.3, kl_reference=0.0)


# --- PRO ------------------------------------------------------------------------------------------

# List 1: r = logp/len = [-2, -1, -3], scores [0.5, 1.0, 0.2] -> order 1 > 0 > 2.
# List 2: two real entries (the third is padding holding NaN and length 0): r = [-3, -1],
# scores [0.1, 0.9] -> order 1 > 0.
PRO_LOGPS = [[-6.0, -4.0, -9.0], [-3.0, -5.0, NAN]]
PRO_LENGTHS = [[3, 4, 3], [1, 5, 0]]
PRO_SCORES = [[0.5, 1.0, 0.2], [0.1, 0.9, NAN]]
PRO_MASK = [[True, True, True], [True, True, False]]


def pro_inputs(requires_grad: bool = False):
    return t(PRO_LOGPS, requires_grad), t(PRO_SCORES), torch.tensor(PRO_LENGTHS), torch.tensor(PRO_MASK)


def test_pro_matches_hand_value_with_score_temperatures():
    beta = 0.1  # SFT weight, scaled by (n - 1)^2
    list1 = (
        # anchor 1 vs 0 (gap 0.5) and 2 (gap 0.8); anchor scale = max gap 0.8
        math.log(math.exp(-1 * 0.8) + math.exp(-2 * 0.5) + math.exp(-3 * 0.8)) + 1 * 0.8
        # anchor 0 vs 2 (gap 0.3)
        + math.log(math.exp(-2 * 0.3) + math.exp(-3 * 0.3)) + 2 * 0.3
        + beta * (3 - 1) ** 2 * 4.0  # NLL of the best response (summed log-prob -4)
    )
    list2 = math.log(math.exp(-1 * 0.8) + math.exp(-3 * 0.8)) + 1 * 0.8 + beta * (2 - 1) ** 2 * 5.0
    policy, scores, lengths, mask = pro_inputs()
    per_example, metrics = pro(policy, scores, beta=beta, lengths=lengths, mask=mask, per_example=True)
    assert close(per_example, [list1, list2])
    assert metrics["loss/sft"].item() == pytest.approx((1.6 + 0.5) / 2)
    assert metrics["rewards/chosen"].item() == pytest.approx((-1 + -1) / 2)  # r of the best
    assert metrics["rewards/rejected"].item() == pytest.approx((-3 + -3) / 2)  # r of the worst
    assert metrics["rewards/accuracy"].item() == pytest.approx(4 / 4)


def test_pro_without_temperature_is_plackett_luce_on_the_order():
    list1 = (math.log(math.exp(-1) + math.exp(-2) + math.exp(-3)) + 1) + (math.log(math.exp(-2) + math.exp(-3)) + 2)
    list2 = math.log(math.exp(-1) + math.exp(-3)) + 1
    policy, scores, lengths, mask = pro_inputs()
    per_example, _ = pro(policy, scores, beta=0.0, lengths=lengths, mask=mask, score_temperature=False, per_example=True)
    assert close(per_example, [list1, list2])


def test_pro_of_two_without_temperature_is_bradley_terry_on_mean_log_probs():
    """n = 2, no temperature, no SFT term: -log sigmoid(r_c - r_r), i.e. SimPO with beta 1, gamma 0."""
    logps, lengths = t([[-6.0, -4.0], [-2.0, -9.0]]), torch.tensor([[3, 4], [2, 3]])
    scores = t([[1.0, 0.0], [1.0, 0.0]])
    loss, _ = pro(logps, scores, beta=0.0, lengths=lengths, score_temperature=False)
    expected, _ = simpo(logps[:, 0], logps[:, 1], beta=1.0, gamma=0.0, chosen_lengths=lengths[:, 0], rejected_lengths=lengths[:, 1])
    assert close(loss, expected.item())


def test_pro_gradients_padding_and_masking():
    policy, scores, lengths, mask = pro_inputs(requires_grad=True)
    loss, _ = pro(policy, scores, beta=0.1, lengths=lengths, mask=mask)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(policy.grad).all()
    assert policy.grad[1, 2] == 0  # padding gets no gradient
    assert policy.grad[0, 1] < 0 and policy.grad[0, 2] > 0  # best up, worst down
    # The padded list equals the same list without padding.
    alone, _ = pro(t([[-3.0, -5.0]]), t([[0.1, 0.9]]), beta=0.1, lengths=torch.tensor([[1, 5]]), per_example=True)
    per_example, _ = pro(*pro_inputs()[:2], beta=0.1, lengths=lengths, mask=mask, per_example=True)
    assert close(per_example[1:], alone)


def test_pro_ties_are_not_contrasted():
    """Scores [1, 1, 0]: each of the tied pair is contrasted only with the third."""
    logps, lengths = t([[-2.0, -1.0, -3.0]]), torch.tensor([[1, 1, 1]])
    loss, _ = pro(logps, t([[1.0, 1.0, 0.0]]), beta=0.0, lengths=lengths, score_temperature=False)
    expected = (math.log(math.exp(-2) + math.exp(-3)) + 2) + (math.log(math.exp(-1) + math.exp(-3)) + 1)
    assert loss.item() == pytest.approx(expected, rel=1e-9)


# --- LiPO-lambda ----------------------------------------------------------------------------------

# List 1: s = 0.3 * (pi - ref) = 0.3 * [0.5, -0.5, 0.2] = [0.15, -0.15, 0.06]; scores psi =
# [0.2, 0.9, 0.5]. Ranks by s (1 = top): tau = [1, 3, 2].
# List 2: two real entries: s = 0.3 * [0.2, -0.4] = [0.06, -0.12], psi = [0.3, 0.8], tau = [1, 2].
LIPO_POLICY = [[-4.0, -6.0, -5.0], [-3.0, -3.5, NAN]]
LIPO_REFERENCE = [[-4.5, -5.5, -5.2], [-3.2, -3.1, NAN]]
LIPO_SCORES = [[0.2, 0.9, 0.5], [0.3, 0.8, NAN]]
LIPO_MASK = [[True, True, True], [True, True, False]]


def lambda_weight(psi_i, psi_j, tau_i, tau_j):
    gain = lambda psi: 2 ** psi - 1  # noqa: E731
    inverse_discount = lambda tau: 1 / math.log2(1 + tau)  # noqa: E731
    return abs(gain(psi_i) - gain(psi_j)) * abs(inverse_discount(tau_i) - inverse_discount(tau_j))


def lipo_inputs(requires_grad: bool = False):
    return t(LIPO_POLICY, requires_grad), t(LIPO_REFERENCE, requires_grad), t(LIPO_SCORES), torch.tensor(LIPO_MASK)


def test_lipo_lambda_matches_hand_value():
    s = [0.15, -0.15, 0.06]
    list1 = (
        lambda_weight(0.9, 0.2, 3, 1) * -log_sigmoid(s[1] - s[0])  # pair 1 > 0
        + lambda_weight(0.9, 0.5, 3, 2) * -log_sigmoid(s[1] - s[2])  # pair 1 > 2
        + lambda_weight(0.5, 0.2, 2, 1) * -log_sigmoid(s[2] - s[0])  # pair 2 > 0
    )
    list2 = lambda_weight(0.8, 0.3, 2, 1) * -log_sigmoid(-0.12 - 0.06)
    policy, reference, scores, mask = lipo_inputs()
    per_example, metrics = lipo_lambda(policy, reference, scores, beta=0.3, mask=mask, per_example=True)
    assert close(per_example, [list1, list2])
    assert metrics["rewards/accuracy"].item() == pytest.approx(0 / 4)  # the policy has every pair backwards
    assert metrics["rewards/chosen"].item() == pytest.approx((-0.15 + -0.12) / 2)


def test_lipo_lambda_with_two_responses_is_weighted_dpo():
    """K = 2: one pair, Delta = (2^psi_1 - 2^psi_2)(1 - 1/log2 3) whatever the ranks, so the loss
    is DPO's times that constant (the paper's 'DPO is the list-size-two case')."""
    pc, pr = t([-4.0, -6.0, -5.0]), t([-4.5, -5.0, -5.1])
    rc, rr = t([-4.2, -6.1, -5.5]), t([-4.4, -5.5, -5.0])
    psi_c, psi_r = t([0.9, 0.6, 1.0]), t([0.1, 0.5, 0.0])
    per_example, _ = lipo_lambda(torch.stack([pc, pr], 1), torch.stack([rc, rr], 1), torch.stack([psi_c, psi_r], 1),
                                 beta=0.3, per_example=True)
    dpo_losses, _ = dpo(pc, pr, rc, rr, beta=0.3, per_example=True)
    constant = (2 ** psi_c - 2 ** psi_r) * (1 - 1 / math.log2(3))
    assert close(per_example, constant * dpo_losses)


def test_lipo_lambda_at_the_reference_uses_the_ideal_ordering():
    """Policy = reference makes every s 0; ties are broken by score, so the weights are those of
    the ideal ranking and the gradient is not zero (a shared rank would zero every weight)."""
    policy = t([[-4.0, -6.0, -5.0]], requires_grad=True)
    psi = [0.2, 0.9, 0.5]  # ideal ranks: tau = [3, 1, 2]
    loss, _ = lipo_lambda(policy, policy.detach().clone(), t([psi]), beta=0.3)
    expected = math.log(2) * (lambda_weight(0.9, 0.2, 1, 3) + lambda_weight(0.9, 0.5, 1, 2) + lambda_weight(0.5, 0.2, 2, 3))
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    loss.backward()
    assert policy.grad[0, 1] < 0 and policy.grad[0, 0] > 0


def test_lipo_lambda_gradients_padding_ties_and_references():
    policy, reference, scores, mask = lipo_inputs(requires_grad=True)
    loss, _ = lipo_lambda(policy, reference, scores, beta=0.3, mask=mask)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(policy.grad).all()
    assert reference.grad is None and policy.grad[1, 2] == 0
    assert policy.grad[0, 1] < 0 and policy.grad[0, 0] > 0  # best up, worst down
    tied, _ = lipo_lambda(t([[-1.0, -2.0]]), t([[-1.5, -1.0]]), t([[0.5, 0.5]]), beta=0.3)
    assert tied.item() == 0.0  # equal scores make no pair


def test_listwise_bad_inputs():
    policy, reference, scores, mask = lipo_inputs()
    with pytest.raises(ValueError, match="one shape"):
        lipo_lambda(policy, reference[:, :2], scores, beta=0.3)
    with pytest.raises(TypeError, match="bool"):
        lipo_lambda(policy, reference, scores, beta=0.3, mask=mask.long())
    with pytest.raises(TypeError):
        lipo_lambda(policy, reference, scores, beta=0.3, mask=mask, temperature=1.0)
    with pytest.raises(ValueError, match="lengths"):
        pro(t([[-1.0, -2.0]]), t([[1.0, 0.0]]), beta=0.1, lengths=torch.tensor([[0, 2]]))


def test_listwise_and_binary_specs():
    assert LOSSES["kto"].kind == "binary" and LOSSES["kto"].needs_reference
    assert (LOSSES["pro"].kind, LOSSES["pro"].needs_reference, LOSSES["pro"].needs_lengths) == ("listwise", False, True)
    assert (LOSSES["lipo_lambda"].kind, LOSSES["lipo_lambda"].needs_reference) == ("listwise", True)
    assert get_loss("lipo_lambda") is lipo_lambda
