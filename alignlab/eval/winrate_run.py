"""`alignlab eval winrate`: where the responses come from (a model folder sampled on prompts, or a
JSONL file of prompt + response rows) and the run itself; the statistics are in `winrate`."""

from __future__ import annotations

import json
from pathlib import Path

from alignlab.data.errors import DataError
from alignlab.data.prompts import json_objects, prompt_row


def read_responses(path) -> tuple[list, list[str]]:
    """(prompts, responses) from a JSONL file with a `prompt` (text or messages) and a `response`
    (or `completion`, as `alignlab bon` writes) per line. Errors name the file, line and field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"responses file {path} does not exist")
    prompts, responses = [], []
    lines = path.read_text(encoding="utf-8").splitlines()
    for row, where in json_objects(path, lines, "with 'prompt' and 'response' fields"):
        prompts.append(prompt_row(row, where)["prompt"])
        response = row.get("response", row.get("completion"))
        if not isinstance(response, str):
            raise DataError(f"expected the response as text, got {type(response).__name__}",
                            field="response", **where)
        responses.append(response)
    if not responses:
        raise ValueError(f"responses file {path} holds no rows")
    return prompts, responses


def same_prompts(prompts: list, other: list, what: str, other_what: str) -> None:
    """Pairs are compared row by row: both sides must hold the same prompts in the same order."""
    if len(prompts) != len(other):
        raise ValueError(f"{what} has {len(prompts)} rows but {other_what} has {len(other)}: pairs are compared row by row")
    bad = next((i for i, (x, y) in enumerate(zip(prompts, other)) if x != y), None)
    if bad is not None:
        raise ValueError(f"row {bad + 1}: {what} and {other_what} hold different prompts "
                         "(pairs are compared row by row, on the same prompt)")


def sample_responses(model_name: str, prompts: list, *, max_new_tokens: int, temperature: float, seed: int,
                     batch_size: int, label: str) -> list[str]:
    """One response a prompt from the model folder `model_name` (greedy when temperature is 0)."""
    import torch

    from alignlab.models.load import load_policy, load_tokenizer
    from alignlab.rollout.base import SamplingParams
    from alignlab.rollout.hf import generate_texts

    tokenizer, model = load_tokenizer(model_name), load_policy(model_name)
    if torch.cuda.is_available():
        model = model.to("cuda")
    params = SamplingParams(n=1, temperature=temperature or 1.0, greedy=temperature == 0,
                            max_new_tokens=max_new_tokens, seed=seed)
    return list(generate_texts(model, tokenizer, prompts, params, batch_size=batch_size, progress=label).texts)


def read_sides(args) -> tuple[list, dict]:
    """(prompts, {side: responses} for the sides given as files): every file read and checked,
    nothing sampled yet, so bad input fails before slow work."""
    sides, prompts = {}, None
    for side in ("policy", "baseline"):
        file, model = getattr(args, f"{side}_responses"), getattr(args, side)
        if bool(file) == bool(model):
            raise ValueError(f"give exactly one of --{side} (a model folder) and --{side}-responses (a JSONL file)")
        if file:
            file_prompts, sides[side] = read_responses(file)
            if prompts is not None:
                same_prompts(file_prompts, prompts[0], f"--{side}-responses", prompts[1])
            prompts = (file_prompts, f"--{side}-responses")
    if args.prompts:
        from alignlab.rewards.bon import read_prompts

        given = read_prompts(args.prompts)
        if prompts is not None:
            same_prompts(given, prompts[0], "--prompts", prompts[1])
        prompts = (given, "--prompts")
    if prompts is None:
        raise ValueError("--prompts is needed when both sides are sampled from models")
    return prompts[0], sides


def sample_missing(args, prompts: list, sides: dict) -> tuple[list[str], list[str]]:
    """(policy responses, baseline responses), sampling the sides given as model folders."""
    for side in ("policy", "baseline"):
        if side not in sides:
            sides[side] = sample_responses(getattr(args, side), prompts, max_new_tokens=args.max_new_tokens,
                                           temperature=args.temperature, seed=args.seed,
                                           batch_size=args.batch_size, label=f"sampling {side}")
    return sides["policy"], sides["baseline"]


def run_winrate(args) -> dict:
    """The whole command: responses, judge, optional gold reward, report (written to -o)."""
    from alignlab.eval.winrate import winrate_report
    from alignlab.preferences import build_preference_source

    if args.output and Path(args.output).exists() and not args.overwrite:
        raise ValueError(f"{args.output} exists; pass --overwrite to replace it")
    if args.gold or args.judge.startswith(("lab:", "annotator:lab:")):
        import alignlab.lab  # noqa: F401  (registers the lab:TASK rewards)
    prompts, sides = read_sides(args)
    judge = build_preference_source(args.judge, **({"batch_size": args.batch_size}
                                                   if args.judge.startswith("judge:") else {}))
    gold = None
    if args.gold:
        from alignlab.rewards.spec import build_reward_source

        gold = build_reward_source(args.gold)
    policy, baseline = sample_missing(args, prompts, sides)
    report = winrate_report(judge, prompts, policy, baseline, gold=gold, n_boot=args.n_boot, seed=args.seed)
    report["sources"] = {"policy": args.policy or args.policy_responses,
                         "baseline": args.baseline or args.baseline_responses}
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=1))
    return report
