"""alignlab's command line: a thin dispatcher (parse, build, run, save)."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import sys
from typing import Any

from alignlab.config import ConfigError, config_help, resolve
from alignlab.feedback.commands import add_parser as add_feedback_parser


LAB_EXPERIMENTS = ("bon-overoptimization", "judge-agreement", "nash-bandit", "nash-lm", "online-vs-offline",
                   "overoptimization", "pluralistic", "rm-accuracy")


def parse_flags(tokens: list[str]) -> dict[str, Any]:
    """`--key value`, `--key=value`, and bare `--flag` (true) into a dict; anything else errors."""
    flags, i = {}, 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or token == "--":
            raise ConfigError(f"unexpected argument {token!r} (settings are given as --key value)")
        key = token[2:]
        if "=" in key:
            key, value = key.split("=", 1)
        elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            value, i = tokens[i + 1], i + 1
        else:
            value = "true"
        flags[key.replace("-", "_")] = value
        i += 1
    return flags


def cmd_train(args, rest: list[str]) -> int:
    from alignlab.train.distributed import is_main
    from alignlab.train.trainers import TRAINERS

    trainer = TRAINERS.get(args.algorithm)
    if trainer is None:
        print(f"error: unknown algorithm '{args.algorithm}'; available: {', '.join(TRAINERS)}", file=sys.stderr)
        return 2
    if args.help_settings:
        print(trainer.help())
        return 0
    cfg = trainer.resolve(args.config, parse_flags(rest))
    session = trainer.run(cfg, dry_run=args.dry_run)
    if not is_main():  # launched on several processes: the main one reports
        return 0
    if session.dry_run_text is not None:
        print(session.dry_run_text)
        return 0
    print(f"alignlab: {trainer.name} done: {session.summary['steps']} steps; model saved to {session.final_dir}")
    for line in trainer.report(session):
        print(line)
    return 0


def cmd_data_inspect(args, rest: list[str]) -> int:
    from alignlab.data.inspect import inspect_dataset, render_inspect
    from alignlab.models.load import load_tokenizer

    flags = parse_flags(rest)
    columns = None
    if "columns" in flags:
        from alignlab.config import _parse_mapping

        columns = _parse_mapping("columns", flags.pop("columns"), "command line")
    if flags:
        raise ConfigError(f"unknown option(s) for data inspect: {', '.join('--' + k for k in flags)}")
    tokenizer = None if args.no_tokenizer else load_tokenizer(args.model)
    result = inspect_dataset(args.file, tokenizer, max_length=args.max_length, format=args.format, columns=columns)
    print(render_inspect(result))
    # The report is for people; the exit code is for scripts: non-zero unless every row is valid.
    if not result["records"] or result["invalid"]:
        problem = (f"{result['invalid']} invalid row(s)" if result["invalid"] else "") + \
                  (" and " if result["invalid"] and not result["records"] else "") + \
                  ("no valid rows" if not result["records"] else "")
        print(f"error: {args.file}: {problem} (see the report above)", file=sys.stderr)
        return 1
    return 0


def cmd_data_strength(args, rest: list[str]) -> int:
    import json

    from alignlab.data.strength import write_strength
    from alignlab.rewards.model import load_reward_source

    if rest:
        raise ConfigError(f"unknown option(s) for data strength: {' '.join(rest)}")
    output = args.output or str(args.file).rsplit(".", 1)[0] + ".strength.jsonl"
    summary = write_strength(args.file, output, load_reward_source(args.rm, progress=True), show=args.show)
    print(json.dumps(summary, indent=1, ensure_ascii=False))
    return 0


def cmd_eval_rm(args, rest: list[str]) -> int:
    import json
    from pathlib import Path

    from alignlab.data import load_records
    from alignlab.data.records import PairwiseRecord
    from alignlab.eval.reward_eval import evaluate_pairs
    from alignlab.rewards.model import load_reward_source

    if rest:
        raise ConfigError(f"unknown option(s) for eval rm: {' '.join(rest)}")
    records = [r for r in load_records(args.data, format=args.format).records if isinstance(r, PairwiseRecord)]
    if not records:
        raise ValueError(f"{args.data}: no pairwise records to evaluate on")
    source = load_reward_source(args.model, how=args.how, batch_size=args.batch_size, max_length=args.max_length,
                                progress=True)
    result = evaluate_pairs(source, records, output_dir=args.output)
    if args.consistency:
        from alignlab.eval.consistency import build_contrast_pairs, reward_consistency

        result["consistency"] = reward_consistency(source, build_contrast_pairs(records, min_similarity=args.min_similarity))
        if args.output:
            (Path(args.output) / "rm_eval.json").write_text(json.dumps(result, indent=1))
    shown = {k: v for k, v in result.items() if k != "reliability"}
    print(json.dumps(shown, indent=1))
    if args.output:
        print(f"written: {args.output}/rm_eval.json, {args.output}/reliability.png")
    return 0


def cmd_eval_winrate(args, rest: list[str]) -> int:
    from alignlab.eval.winrate import render_winrate
    from alignlab.eval.winrate_run import run_winrate

    if rest:
        raise ConfigError(f"unknown option(s) for eval winrate: {' '.join(rest)}")
    report = run_winrate(args)
    print(render_winrate(report))
    if args.output:
        print(f"written: {args.output}")
    return 0


def cmd_bon(args, rest: list[str]) -> int:
    import json

    from alignlab.rewards.bon import read_prompts, run_best_of_n
    from alignlab.rewards.model import load_reward_source
    from alignlab.train.run import refuse_existing_output

    if rest:
        raise ConfigError(f"unknown option(s) for bon: {' '.join(rest)}")
    refuse_existing_output(args.output, args.overwrite, move=False)  # before loading any model
    source = load_reward_source(args.rm, how=args.how, progress=True, direction=args.direction)
    summary = run_best_of_n(args.policy, source, read_prompts(args.prompts), n=args.n, output=args.output,
                            max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed,
                            overwrite=args.overwrite)
    print(json.dumps(summary, indent=1))
    return 0


def cmd_lab(args, rest: list[str]) -> int:
    from alignlab.experiments.bon_overoptimization import BoNOveroptConfig, run_bon_overoptimization
    from alignlab.experiments.judge_agreement import JudgeAgreementConfig, run_judge_agreement
    from alignlab.experiments.nash_bandit import NashBanditLabConfig, run_nash_bandit
    from alignlab.experiments.nash_lm import NashLMConfig, run_nash_lm
    from alignlab.experiments.online_vs_offline import OnlineVsOfflineConfig, run_online_vs_offline
    from alignlab.experiments.overoptimization import OveroptConfig, run_overoptimization
    from alignlab.experiments.pluralistic import PluralisticConfig, run_pluralistic
    from alignlab.experiments.rm_accuracy import RMAccuracyConfig, run_rm_accuracy

    experiments = {"bon-overoptimization": (BoNOveroptConfig, run_bon_overoptimization),
                   "overoptimization": (OveroptConfig, run_overoptimization),
                   "pluralistic": (PluralisticConfig, run_pluralistic),
                   "rm-accuracy": (RMAccuracyConfig, run_rm_accuracy),
                   "nash-bandit": (NashBanditLabConfig, run_nash_bandit),
                   "nash-lm": (NashLMConfig, run_nash_lm),
                   "judge-agreement": (JudgeAgreementConfig, run_judge_agreement),
                   "online-vs-offline": (OnlineVsOfflineConfig, run_online_vs_offline)}
    if args.experiment not in experiments:
        print(f"error: unknown experiment '{args.experiment}'; available: {', '.join(experiments)}", file=sys.stderr)
        return 2
    cls, run = experiments[args.experiment]
    flags = parse_flags(rest)
    if flags.pop("help_settings", None):
        print(config_help(cls))
        return 0
    run(resolve(cls, args.config, flags))
    return 0


def cmd_demo(args, rest: list[str]) -> int:
    from alignlab.experiments.demo import DemoConfig, run_demo

    cfg = resolve(DemoConfig, args.config, parse_flags(rest))
    if args.output:
        cfg = dataclasses.replace(cfg, output=args.output)
    run_demo(cfg)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignlab", description="Learning from human feedback.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a policy: alignlab train dpo --config my.yaml [--key value ...]")
    train.add_argument("algorithm", help="algorithm: sft | dpo | rm (reward model) | pm (pairwise preference model) | ppo | grpo | rloo | reinforce_pp | remax | p3o | ppo_lagrangian (the trainer table: alignlab.train.trainers)")
    train.add_argument("--config", help="YAML file of settings (flags override it)")
    train.add_argument("--dry-run", action="store_true", help="explain the run (batches, memory, data) and exit")
    train.add_argument("--help-settings", action="store_true", help="list every setting with its default")
    train.set_defaults(func=cmd_train)

    data = sub.add_parser("data", help="dataset tools")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    inspect = data_sub.add_parser("inspect", help="what a dataset holds: format, counts, lengths, problems")
    inspect.add_argument("file")
    inspect.add_argument("--model", default="embedded", help="tokenizer to count tokens with")
    inspect.add_argument("--max-length", type=int, default=1024)
    inspect.add_argument("--format", default="auto")
    inspect.add_argument("--no-tokenizer", action="store_true", help="count characters instead of tokens")
    inspect.set_defaults(func=cmd_data_inspect)

    strength = data_sub.add_parser("strength", help="score each pair's preference strength with an RM ensemble")
    strength.add_argument("file")
    strength.add_argument("--rm", required=True, help="reward model (ensemble) folder from `alignlab train rm --ensemble K`, or DIR1+DIR2+... (separately trained models as one ensemble)")
    strength.add_argument("--output", help="output jsonl (default FILE.strength.jsonl)")
    strength.add_argument("--show", type=int, default=10, help="how many likely-mislabeled pairs to list")
    strength.set_defaults(func=cmd_data_strength)

    evaluate = sub.add_parser("eval", help="evaluate models")
    eval_sub = evaluate.add_subparsers(dest="eval_command", required=True)
    eval_rm = eval_sub.add_parser("rm", help="reward model: accuracy (per subset), calibration, length bias, ensemble disagreement")
    eval_rm.add_argument("--model", required=True, help="folder written by `alignlab train rm` (its final/), or DIR1+DIR2+... as one ensemble")
    eval_rm.add_argument("--data", required=True, help="held-out preference data (any supported format)")
    eval_rm.add_argument("--format", default="auto")
    eval_rm.add_argument("--how", default="mean", help="ensemble aggregation: mean | wco | uwo")
    eval_rm.add_argument("--batch-size", type=int, default=16)
    eval_rm.add_argument("--max-length", type=int, default=512)
    eval_rm.add_argument("--output", help="folder for rm_eval.json and reliability.png")
    eval_rm.add_argument("--consistency", action="store_true",
                         help="also score reward consistency on contrast pairs of similar prompts built from the data")
    eval_rm.add_argument("--min-similarity", type=float, default=0.5, help="Jaccard word similarity for contrast pairs")
    eval_rm.set_defaults(func=cmd_eval_rm)

    winrate = eval_sub.add_parser("winrate", help="win-rate of a policy against a baseline under a judge, "
                                                  "with a bootstrap interval and a length-controlled win-rate")
    winrate.add_argument("--policy", help="model folder (or 'embedded') to sample the policy's responses from")
    winrate.add_argument("--baseline", help="model folder (or 'embedded') to sample the baseline's responses from")
    winrate.add_argument("--policy-responses", help="JSONL of the policy's responses (prompt + response per line) instead of --policy")
    winrate.add_argument("--baseline-responses", help="JSONL of the baseline's responses (prompt + response per line) instead of --baseline")
    winrate.add_argument("--prompts", help=".jsonl with a `prompt` field per line, or .txt, one per line (needed when sampling)")
    winrate.add_argument("--judge", default="judge:embedded",
                         help="preference source: judge:embedded | judge:DIR (LLM judge), pm:DIR (pairwise preference "
                              "model), rm:DIR, lab:TASK, annotator:REWARD (see docs/preferences.md)")
    winrate.add_argument("--gold", help="gold reward (e.g. lab:sentiment): also report the judge's agreement with it")
    winrate.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the interval")
    winrate.add_argument("--max-new-tokens", type=int, default=128)
    winrate.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (0: greedy)")
    winrate.add_argument("--seed", type=int, default=0, help="seed of sampling and of the bootstrap")
    winrate.add_argument("--batch-size", type=int, default=16, help="batch size of sampling and of an LLM judge")
    winrate.add_argument("-o", "--output", help="write the report as JSON here")
    winrate.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    winrate.set_defaults(func=cmd_eval_winrate)

    bon = sub.add_parser("bon", help="Best-of-N: sample N responses per prompt, keep the best by a reward model")
    bon.add_argument("--policy", default="embedded", help="policy to sample from")
    bon.add_argument("--rm", required=True, help="reward model folder (from `alignlab train rm`), or DIR1+DIR2+... as one ensemble")
    bon.add_argument("--prompts", required=True, help=".jsonl with a `prompt` field per line, or .txt, one per line")
    bon.add_argument("--n", type=int, default=8)
    bon.add_argument("--how", default="mean", help="ensemble aggregation: mean | wco | uwo")
    bon.add_argument("--direction", help="multi-objective RM: weights over its attributes instead of its gate (DPA), "
                                         "e.g. helpful=0.8,concise=0.2 or 0.8,0.2")
    bon.add_argument("--max-new-tokens", type=int, default=128)
    bon.add_argument("--temperature", type=float, default=1.0)
    bon.add_argument("--seed", type=int, default=0)
    bon.add_argument("--output", default="bon.jsonl", help="where the selections go (jsonl: prompt, completion, reward)")
    bon.add_argument("--overwrite", action="store_true", help="replace an existing --output (moved aside to NAME.old-<time>)")
    bon.set_defaults(func=cmd_bon)

    lab = sub.add_parser("lab", help="measurement experiments with simulated feedback and a known gold reward")
    lab.add_argument("experiment", help=" | ".join(LAB_EXPERIMENTS))
    lab.add_argument("--config", help="YAML of experiment settings (flags override it; --help-settings lists them)")
    lab.set_defaults(func=cmd_lab)

    demo = sub.add_parser("demo", help="RLHF end to end on CPU: sample, label, DPO, evaluate")
    demo.add_argument("--output", help="output folder (default runs/demo-<time>)")
    demo.add_argument("--config", help="YAML of demo settings")
    demo.set_defaults(func=cmd_demo)
    add_feedback_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    try:
        return args.func(args, rest)
    except KeyboardInterrupt as exc:  # Ctrl-C: no traceback; a training run has saved a checkpoint
        return _interrupted(exc, sys.argv[1:] if argv is None else argv)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        if type(exc).__name__ != "DiskFull":  # a trainer that does not name its run folder
            exc = f"no space left on device ({exc.filename or exc}): free some space, then rerun the same command " \
                  "with --resume latest (checkpoints are written atomically: the newest one is intact)"
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # typed errors from the data layer and model loading read well as-is
        if type(exc).__name__ in ("DataError", "ModelSourceError", "TrainingAborted", "EmbeddedModelMissing"):
            print(f"error: {exc}", file=sys.stderr)
            return 1
        raise


def _interrupted(exc: KeyboardInterrupt, argv: list[str]) -> int:
    from alignlab.train.loop import TrainingInterrupted
    from alignlab.train.run import resume_command

    if isinstance(exc, TrainingInterrupted):
        print(f"\nalignlab: interrupted at step {exc.step}; checkpoint saved to {exc.checkpoint}\n"
              f"  resume with: {resume_command(argv, exc.run_dir)}", file=sys.stderr)
    else:
        print("\nalignlab: interrupted", file=sys.stderr)
    return 130


if __name__ == "__main__":
    sys.exit(main())
