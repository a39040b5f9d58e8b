"""Pairwise losses against values worked out by hand (plain `math`, from each paper's equation,
at non-default hyperparameters), and their properties."""

import inspect
import math

import pytest
import torch

from alignlab.losses import LOSSES, LossSpec, get_loss, get_spec, list_losses
from alignlab.losses.preference import _fdpo, cdpo, dpo, fdpo_alpha, fdpo_fkl

# A batch of 3: log pi/pi_ref of chosen = [0.4, -0.5, 0.2], of rejected = [-0.4, 0.6, -0.4],
# so h = [0.8, -1.1, 0.6] (the second pair is ranked the wrong way by the policy).
PC = [-10.0, -12.5, -8.0]
PR = [-11.0, -12.0, -9.5]
RC = [-10.4, -12.0, -8.2]
RR = [-10.6, -12.6, -9.1]
LC = [p - r for p, r in zip(PC, RC)]
LR = [p - r for p, r in zip(PR, RR)]
H = [c - r for c, r in zip(LC, LR)]
CHOSEN_LENGTHS = [4, 5, 2]
REJECTED_LENGTHS = [3, 6, 5]

PAIRWISE = list_losses("pairwise")
# Non-default options for the hand-worked values.
OPTIONS = {"cdpo": {"label_smoothing": 0.2}, "fdpo_alpha": {"alpha": 0.7}, "simpo": {"gamma": 0.4}, "cpl": {"lambda_": 0.7}}


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def assert_close(actual, expected, rtol=1.3e-6, atol=1e-9):
    """torch.testing.assert_close costs ~1.3 s of lazy imports on first use; this does not."""
    assert actual.shape == expected.shape and torch.allclose(actual, expected, rtol=rtol, atol=atol), (actual, expected)


def batch(requires_grad: bool = False, pc=PC, pr=PR, rc=RC, rr=RR):
    return [torch.tensor(v, dtype=torch.float64, requires_grad=requires_grad) for v in (pc, pr, rc, rr)]


def call(name: str, tensors, *, beta: float, **options):
    """Call a pairwise loss the way the trainer does: lengths only where the spec asks."""
    spec = LOSSES[name]
    if spec.needs_lengths:
        options = {"chosen_lengths": torch.tensor(CHOSEN_LENGTHS[: len(tensors[0])]),
                   "rejected_lengths": torch.tensor(REJECTED_LENGTHS[: len(tensors[0])]), **options}
    return spec.fn(*tensors, beta=beta, **options)


# --- values by hand ------------------------------------------------------------------------------


def expected(name: str, beta: float) -> float:
    """The batch-mean loss written out from the paper's equation."""
    if name == "dpo":
        return mean(-log_sigmoid(beta * h) for h in H)
    if name == "ipo":
        return mean((h - 1 / (2 * beta)) ** 2 for h in H)
    if name == "cdpo":
        eps = 0.2
        return mean(-(1 - eps) * log_sigmoid(beta * h) - eps * log_sigmoid(-beta * h) for h in H)
    if name == "hinge":
        return mean(max(0.0, 1 - beta * h) for h in H)
    # f-DPO straight from f'(u), u = exp(log-ratio): fine at these small log-ratios.
    if name == "fdpo_js":
        f_prime = lambda u: math.log(2 * u / (1 + u))  # noqa: E731
    elif name == "fdpo_fkl":
        f_prime = lambda u: -1 / u  # noqa: E731
    elif name == "fdpo_alpha":
        f_prime = lambda u: (1 - u ** -0.7) / 0.7  # noqa: E731
    elif name == "simpo":
        return mean(-log_sigmoid(beta / lc * pc - beta / lr * pr - 0.4)
                    for pc, pr, lc, lr in zip(PC, PR, CHOSEN_LENGTHS, REJECTED_LENGTHS))
    elif name == "cpl":
        return mean(-math.log(math.exp(beta * pc) / (math.exp(beta * pc) + math.exp(0.7 * beta * pr)))
                    for pc, pr in zip(PC, PR))
    else:
        raise AssertionError(name)
    return mean(-log_sigmoid(beta * (f_prime(math.exp(c)) - f_prime(math.exp(r)))) for c, r in zip(LC, LR))


@pytest.mark.parametrize("name", PAIRWISE)
def test_loss_matches_hand_value(name):
    beta = 1.5 if name == "hinge" else 0.3  # 1.5: one pair inside the hinge, two outside
    loss, _ = call(name, batch(), beta=beta, **OPTIONS.get(name, {}))
    assert loss.item() == pytest.approx(expected(name, beta), rel=1e-9)


def test_every_pairwise_loss_has_a_hand_value():
    for name in PAIRWISE:
        expected(name, 0.3)  # raises for a loss registered without a test


def test_hinge_hand_value_mixes_active_and_inactive_pairs():
    per_example, _ = call("hinge", batch(), beta=1.5, per_example=True)
    assert per_example.tolist() == pytest.approx([0.0, 1 + 1.5 * 1.1, 1 - 1.5 * 0.6])


def test_dpo_metrics_by_hand():
    _, metrics = dpo(*batch(), beta=0.3)
    assert metrics["rewards/chosen"].item() == pytest.approx(0.3 * mean(LC))
    assert metrics["rewards/rejected"].item() == pytest.approx(0.3 * mean(LR))
    assert metrics["rewards/margins"].item() == pytest.approx(0.3 * mean(H))
    assert metrics["rewards/accuracy"].item() == pytest.approx(2 / 3)


def test_reference_free_metrics_use_their_own_rewards():
    _, metrics = call("simpo", batch(), beta=1.5, gamma=0.4)
    assert metrics["rewards/chosen"].item() == pytest.approx(mean(1.5 * p / n for p, n in zip(PC, CHOSEN_LENGTHS)))
    _, metrics = call("cpl", batch(), beta=0.3, lambda_=0.7)
    assert metrics["rewards/rejected"].item() == pytest.approx(0.3 * mean(PR))
    assert metrics["rewards/accuracy"].item() == pytest.approx(2 / 3)  # -10 > -11, -12.5 < -12, -8 > -9.5


@pytest.mark.parametrize("name", PAIRWISE)
def test_metrics_are_detached_scalars(name):
    _, metrics = call(name, batch(requires_grad=True), beta=0.3)
    assert {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracy"} <= set(metrics)
    for value in metrics.values():
        assert value.dim() == 0 and not value.requires_grad


# --- properties ------------------------------------------------------------------------------------

# Log-ratios close to 0 (h = [0.05, -0.3]): inside the hinge margin and below IPO's target.
NEAR_REFERENCE = dict(pc=[-10.0, -12.2], pr=[-11.0, -11.9], rc=[-10.1, -12.0], rr=[-11.05, -12.0])


@pytest.mark.parametrize("name", PAIRWISE)
def test_raising_chosen_lowers_loss_and_raising_rejected_raises_it(name):
    tensors = batch(requires_grad=True, **NEAR_REFERENCE)
    loss, _ = call(name, tensors, beta=0.3)
    loss.backward()
    policy_chosen, policy_rejected = tensors[:2]
    assert (policy_chosen.grad < 0).all(), policy_chosen.grad
    assert (policy_rejected.grad > 0).all(), policy_rejected.grad


@pytest.mark.parametrize("name", PAIRWISE)
def test_reference_log_probs_get_no_gradient(name):
    """Decision: every loss detaches its reference inputs, so even a reference tensor that still
    carries a graph gets no gradient (reference-free losses ignore them altogether)."""
    tensors = batch(requires_grad=True)
    loss, _ = call(name, tensors, beta=0.3)
    loss.backward()
    assert tensors[2].grad is None and tensors[3].grad is None
    assert tensors[0].grad is not None and tensors[1].grad is not None


def test_ipo_is_a_regression_past_its_target():
    """Past h = 1/(2 beta), IPO pulls h back: raising the chosen log-prob raises the loss."""
    tensors = batch(requires_grad=True, pc=[-5.0], pr=[-9.0], rc=[-5.0], rr=[-5.0])  # h = 4 > 1/0.6
    get_loss("ipo")(*tensors, beta=0.3)[0].backward()
    assert tensors[0].grad.item() == pytest.approx(2 * (4 - 1 / 0.6))


def test_hinge_has_no_gradient_outside_the_margin():
    tensors = batch(requires_grad=True, pc=[-5.0], pr=[-9.0], rc=[-5.0], rr=[-5.0])  # beta h = 1.2 >= 1
    loss, _ = get_loss("hinge")(*tensors, beta=0.3)
    loss.backward()
    assert loss.item() == 0.0 and tensors[0].grad.item() == 0.0


def test_fdpo_with_reverse_kl_is_dpo():
    tensors = batch()
    loss, metrics = _fdpo(*tensors, beta=0.3, divergence="reverse_kl", per_example=True)
    dpo_loss, dpo_metrics = dpo(*tensors, beta=0.3, per_example=True)
    assert_close(loss, dpo_loss)
    assert metrics.keys() == dpo_metrics.keys()


def test_fdpo_alpha_limits():
    """alpha -> 0 is reverse KL (DPO); alpha = 1 is forward KL (f' differ by a constant)."""
    tensors = batch()
    assert_close(fdpo_alpha(*tensors, beta=0.3, alpha=1e-6)[0], dpo(*tensors, beta=0.3)[0], rtol=1e-5, atol=0)
    assert_close(fdpo_alpha(*tensors, beta=0.3, alpha=1.0)[0], fdpo_fkl(*tensors, beta=0.3)[0])


def test_cdpo_with_no_smoothing_is_dpo():
    tensors = batch()
    assert_close(cdpo(*tensors, beta=0.3, label_smoothing=0.0)[0], dpo(*tensors, beta=0.3)[0])


@pytest.mark.parametrize("name", PAIRWISE)
@pytest.mark.parametrize("chosen,rejected", [(-200.0, -200.0), (-200.0, 200.0), (200.0, -200.0), (200.0, 200.0)])
def test_finite_at_extreme_log_ratios(name, chosen, rejected):
    """Log-ratios of +-200 nats (u = e^200 overflows float32): loss and gradients stay finite."""
    tensors = [torch.tensor([v], requires_grad=True) for v in (chosen - 1.0, rejected - 1.0, -1.0, -1.0)]
    loss, metrics = call(name, tensors, beta=0.3)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(tensors[0].grad).all() and torch.isfinite(tensors[1].grad).all()
    assert all(torch.isfinite(v) for v in metrics.values())


def test_fdpo_fkl_is_exact_below_the_exponent_cap():
    """At a chosen log-ratio of -30 the forward-KL reward is -e^30: large but exact."""
    tensors = [torch.tensor([v], dtype=torch.float64) for v in (-31.0, -1.0, -1.0, -1.0)]
    logit = 0.3 * (-1 / math.exp(-30.0) + 1 / math.exp(0.0))
    assert fdpo_fkl(*tensors, beta=0.3)[0].item() == pytest.approx(-logit + math.log1p(math.exp(logit)), rel=1e-12)


def test_js_reward_saturates_for_large_chosen_ratio():
    tensors = [torch.tensor([v], requires_grad=True) for v in (100.0, 0.0, 0.0, 0.0)]
    get_loss("fdpo_js")(*tensors, beta=0.3)[0].backward()
    assert abs(tensors[0].grad.item()) < 1e-30


@pytest.mark.parametrize("name", PAIRWISE)
def test_per_example_mean_is_the_loss(name):
    options = OPTIONS.get(name, {})
    loss, _ = call(name, batch(), beta=0.3, **options)
    per_example, _ = call(name, batch(), beta=0.3, per_example=True, **options)
    assert per_example.shape == (3,)
    assert_close(per_example.mean(), loss)


# --- API and errors -----------------------------------------------------------------------------


def test_unknown_loss_names_the_valid_ones():
    with pytest.raises(ValueError, match="unknown loss 'nope'") as info:
        get_loss("nope")
    for name in LOSSES:
        assert name in str(info.value)


@pytest.mark.parametrize("name", PAIRWISE)
def test_unknown_option_is_a_type_error(name):
    with pytest.raises(TypeError):
        call(name, batch(), beta=0.3, label_smothing=0.1)


def test_table_declares_each_function_options_and_defaults():
    """spec.options is exactly the function's own keyword options with the same defaults."""
    call_args = {"beta", "per_example", "chosen_lengths", "rejected_lengths", "kl_reference", "lengths", "mask"}
    for name, spec in LOSSES.items():
        assert isinstance(spec, LossSpec) and spec.name == name
        assert spec.kind in ("pairwise", "binary", "listwise")
        parameters = inspect.signature(spec.fn).parameters.values()
        keywords = {p.name: p.default for p in parameters if p.kind is p.KEYWORD_ONLY and p.name not in call_args}
        assert keywords == spec.options, name
        assert spec.default_beta > 0 and spec.paper


def test_reference_free_and_length_flags():
    flags = {name: (LOSSES[name].needs_reference, LOSSES[name].needs_lengths) for name in PAIRWISE}
    assert flags.pop("simpo") == (False, True)
    assert flags.pop("cpl") == (False, False)
    assert set(flags.values()) == {(True, False)}


@pytest.mark.parametrize("name", ["simpo", "cpl"])
def test_reference_free_losses_accept_none_references(name):
    tensors = batch()
    with_none, _ = call(name, [tensors[0], tensors[1], None, None], beta=0.3)
    with_refs, _ = call(name, tensors, beta=0.3)
    assert_close(with_none, with_refs)


def test_check_options_lists_the_valid_ones():
    get_spec("cdpo").check_options({"label_smoothing": 0.3})
    with pytest.raises(ValueError, match="valid options: label_smoothing"):
        get_spec("cdpo").check_options({"gamma": 0.3})


def test_bad_inputs_fail_clearly():
    pc, pr, rc, rr = batch()
    with pytest.raises(ValueError, match="one shape"):
        dpo(pc, pr, rc[:, None], rr, beta=0.1)  # would broadcast to (3, 3)
    with pytest.raises(ValueError, match="needs reference"):
        dpo(pc, pr, None, None, beta=0.1)
    with pytest.raises(ValueError, match="label_smoothing"):
        cdpo(pc, pr, rc, rr, beta=0.1, label_smoothing=0.7)
    with pytest.raises(ValueError, match="beta"):
        get_loss("ipo")(pc, pr, rc, rr, beta=0.0)
    with pytest.raises(ValueError, match="lengths"):
        get_loss("simpo")(pc, pr, beta=2.0, chosen_lengths=torch.tensor([1, 0, 2]), rejected_lengths=torch.tensor([1, 1, 1]))
    with pytest.raises(ValueError, match="alpha"):
        fdpo_alpha(pc, pr, rc, rr, beta=0.1, alpha=1.5)
    with pytest.raises(ValueError, match="lambda_"):
        get_loss("cpl")(pc, pr, beta=0.1, lambda_=0.0)
