"""The Best-of-N overoptimization experiment end to end on tiny random models (seconds)."""

import json

from alignlab.cli import main


def test_bon_overoptimization_writes_curves_for_every_selector(tmp_path, tiny_policy_dir, capsys):

    out = tmp_path / "lab"
    code = main(["lab", "bon-overoptimization", "--policy", str(tiny_policy_dir), "--rm-model", "embedded-encoder",
                 "--output", str(out), "--train-prompts", "12", "--eval-prompts", "3", "--samples", "4",
                 "--max-new-tokens", "6", "--ensemble", "2", "--rm-epochs", "1", "--rm-batch-size", "8"])
    assert code == 0
    result = json.loads((out / "bon_overoptimization.json").read_text())
    ns = sorted({p["n"] for p in result["points"]})
    assert ns == [1, 2, 4]
    assert {p["label"] for p in result["points"]} == {"single", "mean", "wco", "uwo"}
    at1 = [p for p in result["points"] if p["n"] == 1]
    assert len({round(p["gold_reward"], 9) for p in at1}) == 1  # N=1 is the base policy whatever the selector
    for label in ("single", "wco"):  # the proxy's own expected score cannot fall as N grows
        proxy = [p["proxy_reward"] for p in sorted(result["points"], key=lambda p: p["n"]) if p["label"] == label]
        assert proxy == sorted(proxy)
    assert (out / "bon_overoptimization.png").is_file()
    assert "Best-of-N" in capsys.readouterr().out
