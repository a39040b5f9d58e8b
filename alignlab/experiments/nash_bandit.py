"""`alignlab lab nash-bandit`: do the Nash-learning methods reach the regularized Nash
equilibrium of general (intransitive) preferences, and do reward-based methods not?

For each preference family (rock-paper-scissors cycles, random intransitive matrices, transitive
Bradley-Terry ones for contrast) and each seed, a preference bandit (alignlab.lab.preference_bandit)
is drawn and its equilibrium solved (the residual is reported). Every Nash method
(alignlab.nash.run.NASH_METHODS) runs from pi_ref with full information and with sampled
feedback; the reward-based baselines are the KL-optimal policy of a Bradley-Terry reward fitted
to the same preferences (alignlab.nash.baselines) and DPO on sampled reference pairs. Reported:
the total-variation distance to the equilibrium (mean over prompts), per method, mean over seeds
with a 95% bootstrap interval over seeds. Writes nash_bandit.json and nash_bandit.png.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from alignlab.config import field
from alignlab.eval.metrics import bootstrap_ci
from alignlab.lab.preference_bandit import PreferenceBandit
from alignlab.nash.baselines import bradley_terry_reward, dpo_policy, reward_policy
from alignlab.nash.run import NASH_METHODS, run_nash
from alignlab.nash.tabular import NashBanditConfig

FAMILIES = ("rps", "random", "bt")


@dataclass
class NashBanditLabConfig:
    output: str = field("", "output folder (default runs/nash-bandit-<time>)")
    families: list = field(list(FAMILIES), "preference families: rps (rock-paper-scissors, 3 responses) | random (random intransitive) | bt (transitive Bradley-Terry)")
    methods: list = field(list(NASH_METHODS), "Nash methods: " + " | ".join(NASH_METHODS))
    seeds: int = field(5, "bandits drawn per family (seeds seed..seed+K-1); intervals are over them")
    seed: int = field(0, "first seed")
    prompts: int = field(8, "prompts per bandit")
    arms: int = field(5, "responses per prompt (rps always has 3)")
    beta: float = field(0.2, "KL strength toward pi_ref of the regularized game (tau in the papers)")
    iterations: int = field(200, "iterations with full information (exact win rates, every pair)")
    sampled_iterations: int = field(300, "iterations with sampled feedback")
    samples: int = field(64, "sampled responses or pairs per prompt per iteration")
    feedback: str = field("probability", "sampled feedback: probability (the source's P(y > y')) | label (a Bernoulli draw)")
    dpo_pairs: int = field(64, "DPO baseline: labelled reference pairs per prompt per step")
    dpo_steps: int = field(300, "DPO baseline: Adam steps")
    history_every: int = field(10, "record the distance every N iterations")


def _game(family: str, cfg: NashBanditLabConfig, seed: int) -> PreferenceBandit:
    if family == "rps":
        return PreferenceBandit.rock_paper_scissors(cfg.prompts, 3, beta=cfg.beta, seed=seed)
    if family == "random":
        return PreferenceBandit.random_intransitive(cfg.prompts, cfg.arms, beta=cfg.beta, seed=seed)
    return PreferenceBandit.bradley_terry(cfg.prompts, cfg.arms, beta=cfg.beta, seed=seed)


def _summary(values: list[float], seed: int) -> dict:
    low, high = bootstrap_ci(values, seed=seed) if len(values) > 1 else (values[0], values[0])
    return {"mean": sum(values) / len(values), "ci95": [low, high], "per_seed": values}


def _check(cfg: NashBanditLabConfig) -> None:
    for name, valid, given in (("families", FAMILIES, cfg.families), ("methods", tuple(NASH_METHODS), cfg.methods)):
        unknown = [x for x in given if x not in valid]
        if unknown or not given:
            raise ValueError(f"{name}: unknown {unknown or 'empty list'}; valid: {', '.join(valid)}")
    if cfg.seeds < 1 or cfg.prompts < 1 or cfg.arms < 2:
        raise ValueError("seeds and prompts must be >= 1 and arms >= 2")
    if cfg.feedback not in ("probability", "label"):
        raise ValueError(f"feedback must be probability or label, got {cfg.feedback!r}")


def _run_family(family: str, cfg: NashBanditLabConfig) -> dict:
    runs: dict[str, list] = {}
    curves: dict[str, list] = {}
    residuals = []
    for seed in range(cfg.seed, cfg.seed + cfg.seeds):
        game = _game(family, cfg, seed)
        target, residual = game.nash_equilibrium()
        residuals.append(residual)
        runs.setdefault("reference", []).append(game.tv_distance(game.reference_logps, target))
        bt = reward_policy(game, bradley_terry_reward(game))
        runs.setdefault("bt_reward", []).append(game.tv_distance(bt, target))
        dpo = dpo_policy(game, pairs=cfg.dpo_pairs, steps=cfg.dpo_steps, seed=seed)
        runs.setdefault("dpo", []).append(game.tv_distance(dpo, target))
        for method in cfg.methods:
            spec = NASH_METHODS[method]
            for sampled in (False, True):
                run_cfg = NashBanditConfig(method=method, eta=min(spec.eta, 1.0 / cfg.beta), learning_rate=spec.learning_rate,
                                           sampled=sampled, samples=cfg.samples, feedback=cfg.feedback, seed=seed,
                                           iterations=cfg.sampled_iterations if sampled else cfg.iterations,
                                           history_every=cfg.history_every)
                result = run_nash(game, run_cfg, target)
                key = f"{method}/{'sampled' if sampled else 'exact'}"
                runs.setdefault(key, []).append(result["tv"])
                curves.setdefault(key, []).append(result["history"])
    steps = {key: [s for s, _ in hs[0]] for key, hs in curves.items()}
    mean_curves = {key: [sum(h[i][1] for h in hs) / len(hs) for i in range(len(hs[0]))] for key, hs in curves.items()}
    return {"max_solver_residual": max(residuals), "tv": {k: _summary(v, cfg.seed) for k, v in runs.items()},
            "curves": {k: {"iteration": steps[k], "tv_mean": mean_curves[k]} for k in curves}}


def plot_nash_bandit(result: dict, path) -> Path:
    """One panel per family: mean TV to the equilibrium against iteration per method (exact
    solid, sampled dashed), the reward-based baselines as horizontal lines."""
    from alignlab.eval.plots import _figure, _save

    families = list(result["families"])
    fig, axes = _figure(len(families))
    for ax, family in zip(axes, families):
        data = result["families"][family]
        for i, method in enumerate(result["config"]["methods"]):
            color = f"C{i}"
            for mode, style in (("exact", "-"), ("sampled", "--")):
                curve = data["curves"][f"{method}/{mode}"]
                ax.plot(curve["iteration"], [max(v, 1e-6) for v in curve["tv_mean"]], style, color=color,
                        label=f"{method} ({mode})")
        for key, style in (("bt_reward", ":"), ("dpo", "-.")):
            ax.axhline(data["tv"][key]["mean"], color="black", linestyle=style, label=key.replace("_", " "))
        ax.set_yscale("log")
        ax.set_title(family)
        ax.set_xlabel("iteration")
        ax.set_ylabel("TV to the regularized Nash equilibrium")
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=6, ncol=2)
    return _save(fig, path)


def run_nash_bandit(cfg: NashBanditLabConfig) -> dict:
    _check(cfg)
    t0 = time.perf_counter()
    out = Path(cfg.output or f"runs/nash-bandit-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    result = {"config": asdict(cfg), "date": time.strftime("%Y-%m-%d"),
              "families": {family: _run_family(family, cfg) for family in cfg.families}}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "nash_bandit.json").write_text(json.dumps(result, indent=1))
    plot_nash_bandit(result, out / "nash_bandit.png")
    _print(result, out)
    return result


def _print(result: dict, out: Path) -> None:
    table = Table(title="TV distance to the regularized Nash equilibrium (mean over seeds [95% CI])")
    table.add_column("method")
    families = list(result["families"])
    for family in families:
        table.add_column(family)
    for key in result["families"][families[0]]["tv"]:
        cells = [result["families"][f]["tv"][key] for f in families]
        table.add_row(key, *[f"{c['mean']:.4f} [{c['ci95'][0]:.4f}, {c['ci95'][1]:.4f}]" for c in cells])
    console = Console()
    console.print(table)
    console.print("solver residuals (max): " + ", ".join(f"{f} {result['families'][f]['max_solver_residual']:.1e}"
                                                        for f in families))
    console.print(f"wrote {out / 'nash_bandit.json'} and {out / 'nash_bandit.png'}")
