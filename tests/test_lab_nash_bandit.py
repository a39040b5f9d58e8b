"""`alignlab lab nash-bandit`: a seconds-long smoke run whose numbers are checked, and bad
settings refused before any work."""

import json

from alignlab.cli import main


def test_nash_bandit_smoke(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["lab", "nash-bandit", "--output", str(out), "--seeds", "2", "--prompts", "2", "--iterations", "40",
                 "--sampled-iterations", "60", "--dpo-steps", "150", "--families", "rps", "--methods", "egpo,nash_mp"])
    assert code == 0
    result = json.loads((out / "nash_bandit.json").read_text())
    rps = result["families"]["rps"]
    assert rps["max_solver_residual"] < 1e-8
    for key in ("egpo/exact", "nash_mp/exact"):
        assert rps["tv"][key]["mean"] < 0.01 and len(rps["tv"][key]["per_seed"]) == 2
    for key in ("egpo/sampled", "nash_mp/sampled"):
        assert rps["tv"][key]["mean"] < 0.06
    assert rps["tv"]["bt_reward"]["mean"] > 0.3 and rps["tv"]["dpo"]["mean"] > 0.15
    low, high = rps["tv"]["bt_reward"]["ci95"]
    assert low <= rps["tv"]["bt_reward"]["mean"] <= high
    assert (out / "nash_bandit.png").stat().st_size > 1000
    assert "TV distance" in capsys.readouterr().out


def test_nash_bandit_refuses_unknown_families_and_methods(tmp_path, capsys):
    assert main(["lab", "nash-bandit", "--output", str(tmp_path / "x"), "--families", "rps,chess"]) == 2
    assert "families: unknown ['chess']; valid: rps, random, bt" in capsys.readouterr().err
    assert main(["lab", "nash-bandit", "--output", str(tmp_path / "x"), "--methods", "nash"]) == 2
    assert "methods: unknown ['nash']" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
