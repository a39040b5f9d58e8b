"""The online-RL overoptimization experiment end to end on a tiny random policy (seconds)."""

import json

from alignlab.cli import main


def test_overoptimization_lab_records_gold_proxy_and_kl_per_selector(tmp_path, tiny_policy_dir, capsys):
    out = tmp_path / "lab"
    code = main(["lab", "overoptimization", "--policy", str(tiny_policy_dir), "--output", str(out),
                 "--train-prompts", "12", "--eval-prompts", "3", "--max-new-tokens", "6", "--ensemble", "2",
                 "--rm-epochs", "1", "--rm-batch-size", "8", "--full-rm", "false", "--iterations", "2",
                 "--prompts-per-step", "4", "--samples-per-prompt", "2", "--eval-every", "1", "--rl-eval-prompts", "3",
                 "--selectors", "single,wco"])
    assert code == 0
    result = json.loads((out / "overoptimization.json").read_text())
    for selector in ("single", "wco"):
        pts = [p for p in result["points"] if p["label"] == selector]
        assert [p["step"] for p in pts] == [0, 1, 2, 3, 4]  # before training, then every step (2 per iteration)
        assert pts[0]["kl"] == 0.0  # the untrained LoRA policy is its reference
        assert all(p["kl"] >= 0 and -1 <= p["gold_reward"] <= 1 for p in pts)
        assert result["runs"][selector]["steps"] == 4
    # the wco proxy is the min over members: never above the single member's score at the same point
    before = {p["label"]: p for p in result["points"] if p["step"] == 0}
    assert before["wco"]["proxy_reward"] <= before["single"]["proxy_reward"] + 1e-6
    assert before["wco"]["gold_reward"] == before["single"]["gold_reward"]  # same policy, same samples
    assert (out / "overoptimization.png").is_file() and (out / "pairs.jsonl").is_file()
    assert "Online RL against a proxy" in capsys.readouterr().out
