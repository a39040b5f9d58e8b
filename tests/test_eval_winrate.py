"""Win-rate under a preference source: outcomes, bootstrap coverage, the length-controlled
win-rate, judge agreement and the `alignlab eval winrate` command."""

import json
import math

import pytest
import torch

from alignlab.cli import main
from alignlab.eval.metrics import bootstrap_ci
from alignlab.eval.winrate import (
    judge_agreement,
    length_controlled_winrate,
    logistic_fit,
    preference_outcomes,
    winrate_summary,
)


def test_outcomes_count_exact_ties_as_half():
    assert preference_outcomes([0.9, 0.5, 0.2, 0.5000001]).tolist() == [1.0, 0.5, 0.0, 1.0]
    s = winrate_summary([0.9, 0.5, 0.2, 0.7], [1, 1, 1, 1], [1, 1, 1, 1], n_boot=50)
    assert (s["wins"], s["ties"], s["losses"], s["winrate"]) == (2, 1, 1, 0.625)


def test_logistic_fit_recovers_known_coefficients():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20000, generator=g, dtype=torch.float64)
    y = (torch.rand(20000, generator=g, dtype=torch.float64) < torch.sigmoid(0.4 - 1.5 * x)).double()
    theta0, theta1 = logistic_fit(x, y)
    assert theta0 == pytest.approx(0.4, abs=0.05) and theta1 == pytest.approx(-1.5, abs=0.07)
    # with soft targets the fit is exact: y = σ(θ0 + θ1 x) is its own maximum-likelihood solution
    assert logistic_fit(x[:50], torch.sigmoid(0.3 + 0.8 * x[:50])) == pytest.approx((0.3, 0.8), abs=1e-6)


def test_bootstrap_interval_covers_the_true_winrate_about_95_percent_of_the_time():
    # A synthetic judge: the policy wins each pair with probability 0.7, ties with 0.1.
    true_rate, covered, reps = 0.7 + 0.05, 0, 200
    g = torch.Generator().manual_seed(1)
    for rep in range(reps):
        u = torch.rand(300, generator=g)
        p = torch.where(u < 0.7, 0.8, torch.where(u < 0.8, 0.5, 0.2))
        low, high = bootstrap_ci(preference_outcomes(p), n=500, seed=rep)
        covered += low <= true_rate <= high
    assert 0.90 <= covered / reps <= 0.99


def test_length_control_removes_a_pure_length_bias():
    # The judge prefers the longer response and sees nothing else; the policy is longer on average.
    g = torch.Generator().manual_seed(2)
    n = 4000
    policy_len = 100 + 40 * torch.rand(n, generator=g)
    baseline_len = 80 + 40 * torch.rand(n, generator=g)
    p_judge = torch.sigmoid((policy_len - baseline_len) / 10)
    won = (torch.rand(n, generator=g) < p_judge).float()  # hard labels from the biased judge
    s = winrate_summary(won, policy_len, baseline_len, n_boot=100)
    assert s["winrate"] > 0.75
    assert s["length_controlled"]["winrate"] == pytest.approx(0.5, abs=0.04)
    assert s["length_controlled"]["slope_per_std"] > 1
    # and a real advantage at equal length survives: the judge adds +1 logit for the policy
    won_better = (torch.rand(n, generator=g) < torch.sigmoid((policy_len - baseline_len) / 10 + 1)).float()
    lc = length_controlled_winrate(preference_outcomes(won_better), policy_len - baseline_len)
    assert lc["winrate"] == pytest.approx(1 / (1 + math.exp(-1)), abs=0.04)


def test_judge_agreement_skips_and_counts_ties():
    r = judge_agreement([0.9, 0.2, 0.5, 0.8, 0.6], [1.0, 1.0, 3.0, 0.0, 2.0], [0.0, 0.0, 1.0, 0.0, 5.0])
    # pair 0 agrees, 1 disagrees, 2 judge tie, 3 gold tie, 4 disagrees
    assert r == {"agreement": pytest.approx(1 / 3), "pairs": 3, "judge_ties": 1, "gold_ties": 1}


def _responses(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


POSITIVE = ["What a wonderful, great, lovely film. I loved it.", "Excellent and delightful, truly great.",
            "A great and happy story, wonderful acting.", "Brilliant, I enjoyed every minute, superb."]
NEGATIVE = ["Terrible, awful, boring film. I hated it.", "Dreadful and dull, truly bad.",
            "A bad and sad story, awful acting.", "Horrible, I disliked every minute, poor."]


def test_cli_winrate_with_response_files_and_a_lab_judge(tmp_path, capsys):
    prompts = [f"Review {i}:" for i in range(4)]
    pol = _responses(tmp_path / "pol.jsonl", [{"prompt": p, "response": r} for p, r in zip(prompts, POSITIVE)])
    base = _responses(tmp_path / "base.jsonl", [{"prompt": p, "completion": r} for p, r in zip(prompts, NEGATIVE)])
    out = tmp_path / "wr.json"
    rc = main(["eval", "winrate", "--policy-responses", pol, "--baseline-responses", base, "--judge", "lab:sentiment",
               "--gold", "lab:sentiment", "--n-boot", "200", "-o", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["pairs"] == 4 and report["winrate"] == 1.0 and report["interval"] == [1.0, 1.0]
    assert report["gold"]["agreement"] == 1.0 and report["gold"]["winrate"] == 1.0
    assert "length-controlled" in capsys.readouterr().out
    assert main(["eval", "winrate", "--policy-responses", pol, "--baseline-responses", base,
                 "--judge", "lab:sentiment", "-o", str(out)]) == 2  # refuses to overwrite


def test_cli_winrate_bad_input_is_one_clear_line(tmp_path, capsys):
    pol = _responses(tmp_path / "pol.jsonl", [{"prompt": "a", "response": "x"}, {"prompt": "b", "response": "y"}])
    other = _responses(tmp_path / "other.jsonl", [{"prompt": "a", "response": "x"}, {"prompt": "c", "response": "y"}])
    bad = _responses(tmp_path / "bad.jsonl", [{"prompt": "a", "response": 3}])
    cases = [(["--policy-responses", pol, "--baseline-responses", other], "row 2: .* different prompts"),
             (["--policy-responses", pol, "--baseline-responses", bad], "bad.jsonl.*line 1.*response"),
             (["--policy-responses", pol], "exactly one of --baseline"),
             (["--policy-responses", pol, "--baseline-responses", pol, "--judge", "nonsense:x"], "unknown reward")]
    for args, message in cases:
        rc = main(["eval", "winrate", "--judge", "lab:sentiment", *args] if "--judge" not in args
                  else ["eval", "winrate", *args])
        err = capsys.readouterr().err
        assert rc != 0 and len(err.strip().splitlines()) == 1, err
        assert __import__("re").search(message, err), err


def test_cli_winrate_samples_two_model_folders_with_a_judge(tiny_policy_dir, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("Hello\nTell me a story\n")
    out = tmp_path / "wr.json"
    rc = main(["eval", "winrate", "--policy", str(tiny_policy_dir), "--baseline", str(tiny_policy_dir),
               "--prompts", str(prompts), "--judge", f"judge:{tiny_policy_dir}", "--max-new-tokens", "4",
               "--n-boot", "20", "-o", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["pairs"] == 2 and report["judge"] == f"judge:{tiny_policy_dir}"
