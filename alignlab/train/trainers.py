"""The one trainer table: `alignlab train NAME` and the Python API find every trainer here.

Each entry says how its settings are resolved and shown, how it runs (every trainer returns a
`TrainingSession` from the one run setup) and what its run reports beyond the common summary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from alignlab.config import config_help, resolve
from alignlab.train.dpo import DPOConfig, train_dpo
from alignlab.train.kto import KTOConfig, train_kto
from alignlab.train.listwise import ListwiseConfig, train_listwise
from alignlab.train.online import ONLINE_METHODS, resolve_online, train_online
from alignlab.train.online.config import OnlineConfig, settings_help
from alignlab.train.pm import PMConfig, train_pm
from alignlab.train.reward import RMConfig, train_reward_model
from alignlab.train.session import TrainingSession
from alignlab.train.sft import SFTConfig, train_sft


@dataclass(frozen=True)
class Trainer:
    name: str
    config: type
    """The settings dataclass (YAML keys and --flags)."""
    resolve: Callable[[str | None, dict], object]
    """(yaml_path, flags) -> the resolved, validated config."""
    run: Callable[..., TrainingSession]
    """run(cfg, dry_run=False) -> the session (dry_run_text set when dry_run)."""
    help: Callable[[], str]
    """Every setting with its help and the default this trainer starts from."""
    report: Callable[[TrainingSession], list[str]]
    """Lines of the finished run's report beyond the common one."""
    paper: str


def _offline_report(session: TrainingSession) -> list[str]:
    s = session.summary
    lines = [f"  {s['examples_per_second']:.2f} examples/s over {s['train_seconds']:.1f}s of training"]
    if s.get("final_eval"):
        lines.append("  final eval: " + ", ".join(f"{k}={v:.4g}" for k, v in s["final_eval"].items()))
    return lines


def _sft_report(session: TrainingSession) -> list[str]:
    s = session.summary
    lines = [f"  {s['tokens_per_second']:.1f} target tokens/s over {s['train_seconds']:.1f}s of training "
             f"({s['target_tokens']} of {s['input_tokens']} tokens are targets)"]
    if s.get("final_eval"):
        lines.append("  final eval: " + ", ".join(f"{k}={v:.4g}" for k, v in s["final_eval"].items()))
    return lines


def _online_report(session: TrainingSession) -> list[str]:
    s = session.summary
    before, after = s.get("eval_before", {}), s.get("final_eval", {})
    lines = [f"  {s['iterations']} iterations, {s['completions_per_second']:.2f} completions/s"]
    lines += [f"  eval {key}: {before[key]:.4g} -> {after[key]:.4g}" for key in sorted(set(before) & set(after))]
    if "pairs" in s:
        lines.append(f"  {s['pairs']} judged pairs trained on, {s['ties_dropped']} tied pairs dropped")
    if "safety_test" in s:
        t = s["safety_test"]
        lines.append(f"  safety test: {t['verdict']} (cost upper bound {t['cost_upper_bound']:.4g} vs threshold "
                     f"{t['threshold']:.4g} at {t['confidence']:.0%} confidence, n={t['n']})")
    return lines


def _online(method: str) -> Trainer:
    return Trainer(method, OnlineConfig, lambda path, flags: resolve_online(method, path, flags), train_online,
                   lambda: settings_help(method), _online_report, ONLINE_METHODS[method].paper)


TRAINERS: dict[str, Trainer] = {
    "dpo": Trainer("dpo", DPOConfig, lambda path, flags: resolve(DPOConfig, path, flags), train_dpo,
                   lambda: config_help(DPOConfig), _offline_report,
                   "Rafailov et al. 2023 and the DPO family (see `--loss`)"),
    "pm": Trainer("pm", PMConfig, lambda path, flags: resolve(PMConfig, path, flags), train_pm,
                  lambda: config_help(PMConfig), _offline_report,
                  "pairwise preference model, antisymmetric by construction (Think-RM / Pairwise-RL)"),
    "rm": Trainer("rm", RMConfig, lambda path, flags: resolve(RMConfig, path, flags), train_reward_model,
                  lambda: config_help(RMConfig), _offline_report,
                  "Bradley-Terry reward models (Ouyang et al. 2022); ArmoRM; Safe RLHF cost models"),
    "sft": Trainer("sft", SFTConfig, lambda path, flags: resolve(SFTConfig, path, flags), train_sft,
                   lambda: config_help(SFTConfig), _sft_report,
                   "supervised fine-tuning on demonstrations (the SFT stage of Ouyang et al. 2022)"),
    "kto": Trainer("kto", KTOConfig, lambda path, flags: resolve(KTOConfig, path, flags), train_kto,
                   lambda: config_help(KTOConfig), _offline_report,
                   "KTO on thumbs-up/down feedback (Ethayarajh et al. 2024, arXiv:2402.01306)"),
    "listwise": Trainer("listwise", ListwiseConfig, lambda path, flags: resolve(ListwiseConfig, path, flags),
                        train_listwise, lambda: config_help(ListwiseConfig), _offline_report,
                        "PRO (Song et al. 2023) and LiPO-lambda (Liu et al. 2024) on rankings and ratings (see `--loss`)"),
    **{method: _online(method) for method in ONLINE_METHODS},
}
