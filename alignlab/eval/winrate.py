"""Win-rate of a policy against a baseline under a preference source (an LLM judge, a pairwise
preference model, a reward model through Bradley-Terry), as `alignlab eval winrate` reports it.

Every function here is pure (tensors or lists in, floats out), except `winrate_report`, which asks
the judge and the gold reward for their verdicts and then calls the others.

- Outcome of a pair: 1 when P(policy ≻ baseline) > 0.5, 0 when < 0.5, ½ on an exact tie (0.5).
  The judge's P is order-averaged where the source does so (`both_orders`), so a judge that
  cannot tell the two apart lands on 0.5 and is counted as a tie.
- Win-rate: the mean outcome, with a percentile bootstrap interval over pairs.
- Length-controlled win-rate (after Dubois et al. 2024, AlpacaEval LC, with length as the only
  covariate): a logistic regression of the outcome on the length difference,
      P(win | Δ) = σ(θ₀ + θ₁ Δ / s),   Δ = len(policy) − len(baseline) in characters, s = std(Δ),
  fitted by maximum likelihood (ties are targets of ½), reported at Δ = 0: σ(θ₀). A judge that
  only rewards length gets ≈ 0.5 here however long the policy's responses are.
- Judge agreement: on pairs where a gold reward tells the two apart and the judge is not tied,
  the share where the judge's preferred response has the higher gold reward.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from alignlab.eval.metrics import Values, _as_1d, bootstrap_ci


def preference_outcomes(p: Values) -> torch.Tensor:
    """(N,) float64: 1 where p > 0.5, 0 where p < 0.5, 0.5 where p == 0.5 exactly."""
    p = _as_1d(p, "p")
    return (p > 0.5).double() + 0.5 * (p == 0.5).double()


def logistic_fit(x: Values, y: Values, *, l2: float = 1e-6, iterations: int = 50) -> tuple[float, float]:
    """(θ₀, θ₁) maximising Σ_i y_i log σ(θ₀ + θ₁ x_i) + (1 − y_i) log σ(−θ₀ − θ₁ x_i) − l2 ‖θ‖²/2,
    y_i in [0, 1] (soft targets allowed), by Newton's method. The tiny ridge keeps the optimum
    finite when the data are separable (every win at Δ > 0)."""
    x, y = _as_1d(x, "x"), _as_1d(y, "y")
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"logistic_fit: x and y must be non-empty and of one length, got {len(x)} and {len(y)}")
    features = torch.stack([torch.ones_like(x), x], dim=1)  # (N, 2)
    theta = torch.zeros(2, dtype=torch.float64)
    ridge = l2 * torch.eye(2, dtype=torch.float64)
    for _ in range(iterations):
        prob = torch.sigmoid(features @ theta)  # (N,)
        grad = features.T @ (y - prob) - l2 * theta
        hessian = features.T @ (features * (prob * (1 - prob))[:, None]) + ridge
        step = torch.linalg.solve(hessian, grad)
        theta = theta + step
        if step.abs().max() < 1e-10:
            break
    return float(theta[0]), float(theta[1])


def length_controlled_winrate(outcomes: Values, length_diff: Values) -> dict:
    """The win-rate at equal length, σ(θ₀), of the logistic regression of `outcomes` on the
    standardised length difference (module docstring); `slope` is θ₁ per standard deviation of Δ
    (> 0: the judge favours the longer response)."""
    y, d = _as_1d(outcomes, "outcomes"), _as_1d(length_diff, "length_diff")
    scale = float(d.std()) if len(d) > 1 and float(d.std()) > 0 else 1.0
    theta0, theta1 = logistic_fit(d / scale, y)
    return {"winrate": float(torch.sigmoid(torch.tensor(theta0))), "slope_per_std": theta1, "length_diff_std": scale}


def judge_agreement(p: Values, gold_a: Values, gold_b: Values) -> dict:
    """Share of pairs where the judge's preferred response (p > 0.5: a) has the higher gold
    reward, over pairs the judge does not tie and the gold reward tells apart; both exclusions
    are counted."""
    p, ga, gb = _as_1d(p, "p"), _as_1d(gold_a, "gold_a"), _as_1d(gold_b, "gold_b")
    if not len(p) == len(ga) == len(gb):
        raise ValueError(f"judge_agreement: {len(p)} judgements for {len(ga)} and {len(gb)} gold rewards")
    judged, decided = p != 0.5, ga != gb
    both = judged & decided
    agree = ((p > 0.5) == (ga > gb)) & both
    n = int(both.sum())
    return {"agreement": float(agree.sum()) / n if n else float("nan"), "pairs": n,
            "judge_ties": int((~judged).sum()), "gold_ties": int((~decided).sum())}


def winrate_summary(p: Values, policy_lengths: Values, baseline_lengths: Values, *, n_boot: int = 1000,
                    alpha: float = 0.05, seed: int = 0) -> dict:
    """Win-rate, its bootstrap interval, win/tie/loss counts and the length-controlled win-rate of
    judgements `p` = P(policy ≻ baseline) for pairs whose responses have the given lengths."""
    outcomes = preference_outcomes(p)
    if len(outcomes) == 0:
        raise ValueError("win-rate: no pairs to compare")
    diff = _as_1d(policy_lengths, "policy_lengths") - _as_1d(baseline_lengths, "baseline_lengths")
    low, high = bootstrap_ci(outcomes, n=n_boot, alpha=alpha, seed=seed)
    return {"pairs": len(outcomes), "winrate": float(outcomes.mean()), "interval": [low, high],
            "confidence": 1 - alpha, "wins": int((outcomes == 1).sum()), "ties": int((outcomes == 0.5).sum()),
            "losses": int((outcomes == 0).sum()), "mean_preference": float(_as_1d(p, "p").mean()),
            "length_controlled": length_controlled_winrate(outcomes, diff),
            "mean_length": {"policy": float(_as_1d(policy_lengths, "l").mean()),
                            "baseline": float(_as_1d(baseline_lengths, "l").mean())}}


def winrate_report(judge, prompts: Sequence, policy: Sequence[str], baseline: Sequence[str], *, gold=None,
                   n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> dict:
    """Judge every (policy, baseline) pair with the preference source `judge`, then
    `winrate_summary`; with a gold reward source, also `judge_agreement` and the gold win-rate."""
    from alignlab.preferences.base import check_probabilities

    p = check_probabilities(judge.prefer(prompts, policy, baseline), len(policy), getattr(judge, "name", "judge"))
    report = {"judge": getattr(judge, "name", "judge"),
              **winrate_summary(p, [len(t) for t in policy], [len(t) for t in baseline], n_boot=n_boot,
                                alpha=alpha, seed=seed)}
    if gold is not None:
        gold_scores = gold.score(list(prompts) * 2, list(policy) + list(baseline)).double().reshape(-1)
        gp, gb = gold_scores[: len(policy)], gold_scores[len(policy):]
        report["gold"] = {"name": getattr(gold, "name", "gold"), **judge_agreement(p, gp, gb),
                          "winrate": float(preference_outcomes(torch.sigmoid(gp - gb)).mean())}
    return report


def render_winrate(report: dict) -> str:
    """A readable table of `winrate_report`'s result."""
    lc = report["length_controlled"]
    lo, hi = report["interval"]
    rows = [("judge", report["judge"]), ("pairs", str(report["pairs"])),
            ("win-rate", f"{report['winrate']:.3f}  [{lo:.3f}, {hi:.3f}] ({report['confidence']:.0%} bootstrap)"),
            ("wins / ties / losses", f"{report['wins']} / {report['ties']} / {report['losses']}"),
            ("length-controlled", f"{lc['winrate']:.3f}  (length slope {lc['slope_per_std']:+.3f} per std)"),
            ("mean length (chars)", f"policy {report['mean_length']['policy']:.1f}, "
                                    f"baseline {report['mean_length']['baseline']:.1f}")]
    if "gold" in report:
        g = report["gold"]
        rows += [(f"gold ({g['name']}) win-rate", f"{g['winrate']:.3f}"),
                 ("judge agreement with gold", f"{g['agreement']:.3f} over {g['pairs']} pairs "
                                               f"({g['judge_ties']} judge ties, {g['gold_ties']} gold ties)")]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
