"""The Best-of-N overoptimization experiment end to end on tiny random models (seconds)."""

import json

import pytest

from alignlab.cli import main


def test_bon_overoptimization_writes_curves_for_every_selector(tmp_path, tiny_policy_dir, capsys):

    out = tmp_path / "lab"
    code = main(["lab", "bon-overoptimization", "--policy", str(tiny_policy_dir), "--rm-model", "embedded-encoder",
                 "--output", str(out), "--train-prompts", "12", "--eval-prompts", "3", "--samples", "4",
                 "--max-new-tokens", "6", "--ensemble", "2", "--rm-epochs", "1", "--rm-batch-size", "8",
                 "--full-rm-epochs", "1", "--full-rm-head-learning-rate", "1e-3"])
    assert code == 0
    import yaml

    assert yaml.safe_load((out / "rm-full" / "config.yaml").read_text())["head_learning_rate"] == 1e-3
    result = json.loads((out / "bon_overoptimization.json").read_text())
    ns = sorted({p["n"] for p in result["points"]})
    assert ns == [1, 2, 4]
    assert {p["label"] for p in result["points"]} == {"single", "mean", "wco", "uwo", "full"}
    # accuracy of every selector on the held-out labels, and the gold reward's own (the ceiling)
    assert set(result["heldout_accuracy"]) == {"single", "mean", "wco", "uwo", "full"}
    # every pair of each prompt's 6 samples is labelled; 20% of the 12 prompts are held out whole
    assert result["labelled_pairs"] == 12 * 15 and result["heldout_pairs"] == round(0.2 * 12) * 15
    rows = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    split_prompts = {s: {json.dumps(r["prompt"]) for r in rows if r["split"] == s} for s in ("train", "heldout")}
    assert len(split_prompts["heldout"]) == 2 and not split_prompts["train"] & split_prompts["heldout"]
    assert all(0.0 <= v <= 1.0 for v in result["heldout_accuracy"].values())
    assert 0.0 <= result["gold_ceiling_heldout"] <= 1.0
    at1 = [p for p in result["points"] if p["n"] == 1]
    assert len({round(p["gold_reward"], 9) for p in at1}) == 1  # N=1 is the base policy whatever the selector
    for label in ("single", "wco"):  # the proxy's own expected score cannot fall as N grows
        proxy = [p["proxy_reward"] for p in sorted(result["points"], key=lambda p: p["n"]) if p["label"] == label]
        assert proxy == sorted(proxy)
    for p in result["points"]:  # interval over prompts around each mean; paired differences from the single member
        assert p["gold_reward_ci"][0] - 1e-9 <= p["gold_reward"] <= p["gold_reward_ci"][1] + 1e-9
        assert ("minus_single" in p) == (p["label"] != "single")
    single = {p["n"]: p["gold_reward"] for p in result["points"] if p["label"] == "single"}
    for p in result["points"]:
        if p["label"] != "single":
            assert p["minus_single"] == pytest.approx(p["gold_reward"] - single[p["n"]], abs=1e-9)
            assert p["minus_single_ci"][0] - 1e-9 <= p["minus_single"] <= p["minus_single_ci"][1] + 1e-9
    by = {(p["label"], p["n"]): p for p in result["points"]}  # each doubling's gain, with its interval
    for (label, n), p in by.items():
        assert ("gain_from_half" in p) == (n > 1)
        if n > 1:
            assert p["gain_from_half"] == pytest.approx(p["gold_reward"] - by[label, n // 2]["gold_reward"], abs=1e-9)
            assert p["gain_from_half_ci"][0] - 1e-9 <= p["gain_from_half"] <= p["gain_from_half_ci"][1] + 1e-9
    candidates = [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()]
    assert len(candidates) == 3 * 4 and len(candidates[0]["members"]) == 2
    assert all(c["wco"] == pytest.approx(min(c["members"]), abs=1e-5) for c in candidates)
    assert (out / "bon_overoptimization.png").is_file()
    assert "Best-of-N" in capsys.readouterr().out


def test_bon_overoptimization_with_fine_tuned_members(tmp_path, tiny_policy_dir):
    """members: fine-tuned trains K full models from seeds seed..seed+K-1 and reads them as one ensemble."""
    import yaml

    out = tmp_path / "lab"
    assert main(["lab", "bon-overoptimization", "--policy", str(tiny_policy_dir), "--output", str(out),
                 "--train-prompts", "10", "--eval-prompts", "2", "--samples", "4", "--max-new-tokens", "6",
                 "--ensemble", "2", "--members", "fine-tuned", "--full-rm-epochs", "1", "--rm-batch-size", "8"]) == 0
    seeds = [yaml.safe_load((out / f"rm-member{k}" / "config.yaml").read_text())["seed"] for k in range(2)]
    assert seeds == [0, 1] and not (out / "rm-full").exists() and not (out / "rm").exists()
    result = json.loads((out / "bon_overoptimization.json").read_text())
    assert {p["label"] for p in result["points"]} == {"single", "mean", "wco", "uwo"}
    candidates = [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()]
    assert all(len(c["members"]) == 2 and c["single"] == c["members"][0] for c in candidates)
    assert all(c["wco"] == pytest.approx(min(c["members"]), abs=1e-5) for c in candidates)
    # each member is centered on the training responses (its own zero), so min and variance compare like with like
    for k in range(2):
        assert "reward_offset" in json.loads((out / f"rm-member{k}" / "final" / "alignlab_reward.json").read_text())
    assert main(["lab", "bon-overoptimization", "--members", "copies", "--output", str(tmp_path / "bad")]) == 2


def test_bon_overoptimization_reuses_an_earlier_runs_samples(tmp_path, tiny_policy_dir, capsys):
    """--reuse-samples labels and scores the same responses as an earlier run, without sampling;
    settings that change the samples are refused, naming them."""
    common = ["--train-prompts", "10", "--eval-prompts", "2", "--samples", "4", "--max-new-tokens", "6",
              "--ensemble", "2", "--rm-epochs", "1", "--rm-batch-size", "8", "--full-rm", "false"]
    first = tmp_path / "first"
    assert main(["lab", "bon-overoptimization", "--policy", str(tiny_policy_dir), "--output", str(first), *common]) == 0
    samples = [json.loads(line) for line in (first / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 10 * 6  # every train prompt's k = 6 responses, in sampling order

    def candidates(folder):
        return [(c["prompt_index"], c["response"], c["gold"]) for c in map(json.loads, (folder / "candidates.jsonl").read_text().splitlines())]

    def responses(folder):
        rows = [json.loads(line) for line in (folder / "pairs.jsonl").read_text().splitlines()]
        return {r[k] for r in rows for k in ("chosen", "rejected")}

    second = tmp_path / "second"  # fewer labels (disjoint pairs) of the same responses
    assert main(["lab", "bon-overoptimization", "--policy", str(tiny_policy_dir), "--output", str(second),
                 "--reuse-samples", str(first), "--all-pairs", "false", *common]) == 0
    assert candidates(second) == candidates(first)
    assert (second / "samples.jsonl").read_text() == (first / "samples.jsonl").read_text()
    assert json.loads((second / "bon_overoptimization.json").read_text())["labelled_pairs"] == 10 * 3
    assert responses(second) <= responses(first)
    fewer = tmp_path / "fewer"  # fewer responses per prompt: the first 2 of each prompt's 6
    assert main(["lab", "bon-overoptimization", "--policy", str(tiny_policy_dir), "--output", str(fewer),
                 "--reuse-samples", str(first), "--pairs-per-prompt", "1", *common]) == 0
    kept = [json.loads(line) for line in (fewer / "samples.jsonl").read_text().splitlines()]
    assert kept == [s for n, s in enumerate(samples) if n % 6 < 2]
    result = json.loads((fewer / "bon_overoptimization.json").read_text())
    assert result["labelled_pairs"] == 10 and result["members_alone"]["n"] == [1, 2, 4]
    single = [p["gold_reward"] for p in result["points"] if p["label"] == "single"]
    assert result["members_alone"]["gold_reward"][0] == pytest.approx(single) and len(result["members_alone"]["gold_reward"]) == 2
    # each selector against the average member alone: its gold minus the mean of the members' own curves
    gold = {(p["label"], p["n"]): p["gold_reward"] for p in result["points"]}
    alone = result["members_alone"]["gold_reward"]
    for v in result["versus_average_member"]:
        i = result["members_alone"]["n"].index(v["n"])
        average = sum(curve[i] for curve in alone) / len(alone)
        assert v["minus_average_member"] == pytest.approx(gold[v["label"], v["n"]] - average, abs=1e-6)
        assert v["minus_average_member_ci"][0] - 1e-9 <= v["minus_average_member"] <= v["minus_average_member_ci"][1] + 1e-9
    assert {(v["label"], v["n"]) for v in result["versus_average_member"]} == {(l, n) for l in ("mean", "wco", "uwo") for n in (1, 2, 4)}
    # a run from before samples.jsonl: the distinct responses of its pairs.jsonl
    (first / "samples.jsonl").unlink()
    third = tmp_path / "third"
    assert main(["lab", "bon-overoptimization", "--policy", str(tiny_policy_dir), "--output", str(third),
                 "--reuse-samples", str(first), *common]) == 0
    assert candidates(third) == candidates(first) and responses(third) == responses(first)
    capsys.readouterr()
    assert main(["lab", "bon-overoptimization", "--policy", str(tiny_policy_dir), "--output", str(tmp_path / "x"),
                 "--reuse-samples", str(first), *common, "--samples", "8", "--pairs-per-prompt", "4"]) == 2
    err = capsys.readouterr().err
    assert "samples: 4 there, 8 here" in err and "pairs_per_prompt: 3 there, 4 here" in err
    lines = (first / "candidates.jsonl").read_text().splitlines()
    (first / "candidates.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    assert main(["lab", "bon-overoptimization", "--policy", str(tiny_policy_dir), "--output", str(tmp_path / "y"),
                 "--reuse-samples", str(first), *common]) == 1  # a data error
    assert "candidates.jsonl: 7 candidates, expected 2 prompts x 4" in capsys.readouterr().err


def test_bon_command_keeps_the_best_of_n_by_the_reward_model(tmp_path, tiny_policy_dir, capsys):
    from alignlab.data.records import PairwiseRecord
    from alignlab.rewards.model import RewardModelSource
    from alignlab.train.reward import RMConfig, train_reward_model

    records = [PairwiseRecord(prompt=f"About {t}.", chosen=f"{t} good", rejected=f"{t} bad") for t in "abcdefgh"]
    rm = train_reward_model(RMConfig(output_dir=str(tmp_path / "rm"), max_steps=1, progress=False), train_records=records)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Write one sentence about tea."}\n{"prompt": "Write one sentence about snow."}\n')
    out = tmp_path / "bon.jsonl"
    assert main(["bon", "--policy", str(tiny_policy_dir), "--rm", str(rm.final_dir), "--prompts", str(prompts),
                 "--n", "4", "--max-new-tokens", "5", "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and all(r["n"] == 4 for r in rows)
    source = RewardModelSource(rm.final_dir)
    for r in rows:  # the kept completion scores what was recorded, and at least the mean of the n
        assert source.score([r["prompt"]], [r["completion"]]).item() == pytest.approx(r["reward"], abs=1e-4)
        assert r["reward"] >= r["mean_reward_of_n"] - 1e-6
    # two folders read as one ensemble: the same model twice picks the same completions
    twice = tmp_path / "twice.jsonl"
    assert main(["bon", "--policy", str(tiny_policy_dir), "--rm", f"{rm.final_dir}+{rm.final_dir}", "--prompts",
                 str(prompts), "--n", "4", "--max-new-tokens", "5", "--output", str(twice), "--how", "wco"]) == 0
    assert [r["completion"] for r in map(json.loads, twice.read_text().splitlines())] == [r["completion"] for r in rows]
    # a direction over the attributes (DPA): this model has the one attribute "reward", so any
    # positive weight picks the same completions; a name it does not have is a clear error
    steered = tmp_path / "steered.jsonl"
    assert main(["bon", "--policy", str(tiny_policy_dir), "--rm", str(rm.final_dir), "--prompts", str(prompts),
                 "--n", "4", "--max-new-tokens", "5", "--output", str(steered), "--direction", "reward=2"]) == 0
    assert [json.loads(line)["completion"] for line in steered.read_text().splitlines()] == [r["completion"] for r in rows]
    assert main(["bon", "--policy", str(tiny_policy_dir), "--rm", str(rm.final_dir), "--prompts", str(prompts),
                 "--direction", "helpful=1"]) == 2
    assert "unknown attribute(s) ['helpful']" in capsys.readouterr().err
    prompts.write_text('{"prompt": "ok"}\n{"prompt": 7}\n')
    assert main(["bon", "--policy", str(tiny_policy_dir), "--rm", str(rm.final_dir), "--prompts", str(prompts)]) == 2
    assert "line 2, field 'prompt'" in capsys.readouterr().err


def test_reuse_checks_the_settings_that_made_the_samples(tmp_path):
    """Train samples need the same policy and length; Best-of-N candidates also the same prompts
    and samples. An overoptimization run's folder serves as well as a Best-of-N run's."""
    from alignlab.experiments.bon_overoptimization import CANDIDATE_SAMPLING, BoNOveroptConfig
    from alignlab.experiments.overoptimization import OveroptConfig
    from alignlab.experiments.proxies import TRAIN_SAMPLING, check_reusable

    with pytest.raises(ValueError, match="no bon_overoptimization.json or overoptimization.json"):
        check_reusable(tmp_path, BoNOveroptConfig(), TRAIN_SAMPLING)
    (tmp_path / "overoptimization.json").write_text(json.dumps({"config": {**vars(OveroptConfig(seed=3))}}))
    check_reusable(tmp_path, OveroptConfig(seed=5), TRAIN_SAMPLING)  # new labels of the same samples
    with pytest.raises(ValueError, match="seed: 3 there, 5 here"):
        check_reusable(tmp_path, BoNOveroptConfig(seed=5), CANDIDATE_SAMPLING)
    with pytest.raises(ValueError, match="max_new_tokens: 40 there, 20 here"):
        check_reusable(tmp_path, OveroptConfig(seed=3, max_new_tokens=20), TRAIN_SAMPLING)
    check_reusable(tmp_path, OveroptConfig(seed=3, pairs_per_prompt=1), TRAIN_SAMPLING)  # fewer responses: fine


def test_heldout_accuracy_counts_a_tied_pair_half():
    """Held-out pairs: one tied by every selector, one ranked right, one wrong -> 0.5 each; the
    full model ranks two of three right -> 2/3 (a tie must not count as a miss or a hit)."""

    from alignlab.data.records import PairwiseRecord
    from alignlab.experiments.proxies import heldout_accuracy
    from alignlab.rewards.base import EnsembleReward, FunctionReward

    heldout = [PairwiseRecord(prompt="p", chosen=f"c{i}", rejected=f"r{i}") for i in range(3)]
    member = {"c0": 1.0, "r0": 1.0, "c1": 2.0, "r1": 0.0, "c2": 0.0, "r2": 3.0}
    full = {"c0": 1.0, "r0": 0.0, "c1": 2.0, "r1": 0.0, "c2": 0.0, "r2": 3.0}

    def table(scores):
        return FunctionReward(lambda texts: [scores[t] for t in texts], responses_only=True)

    acc = heldout_accuracy(heldout, EnsembleReward([table(member)] * 3), table(full), uwo_coef=1.0)
    assert set(acc) == {"single", "mean", "wco", "uwo", "full"}
    for label in ("single", "mean", "wco", "uwo"):
        assert acc[label] == pytest.approx(0.5)
    assert acc["full"] == pytest.approx(2 / 3)
