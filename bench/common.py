"""Helpers shared by the benchmarks in bench/: deterministic synthetic text whose lengths are
measured in tokens, per-process peak memory, and running one side of a comparison in a
subprocess of its own (so that each side's peak RSS is its own, not the larger of the two).

Imports only the standard library at module level, so a benchmark's parent process can start its
sides before it loads anything heavy."""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Everything offline: no weights, tokenizers or datasets are ever downloaded by a benchmark.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false"}

# Plain English words: common function words repeated so that the text reads English-ish and
# tokenizes like prose (about 1.2 tokens a word with SmolLM2's tokenizer), not like rare strings.
_FUNCTION = ("the the the a a an and and of of to to in in is is it that that for on with as was "
             "be this are by or not but at from have they we you can will more one all their").split()
_CONTENT = """
time people year way day thing man world life hand part child eye woman place work week case point
number group problem fact water room mother area money story month lot right study book job word
business issue side kind head house service friend father power hour game line end member law car
city community name team minute idea kid body information back parent face others level office door
health person art war history party result change morning reason research girl guy moment air teacher
force education garden river model market answer question system program plan music letter field
light voice color energy paper window table choice season island valley signal engine bridge kitchen
make know think take see come want look use find give tell ask seem feel try leave call keep bring
begin hold write provide stand lose pay meet include continue learn lead understand watch follow stop
create speak read allow spend grow open walk offer remember love consider appear buy wait serve send
build stay fall reach remain suggest raise pass sell decide explain develop carry break receive agree
good new first last long great little own other old big high different small large next early young
important few public bad same able late hard major better economic strong possible whole free clear
recent simple careful quiet bright warm cold quick slow gentle honest useful plain curious patient
often still never always usually sometimes together quickly slowly carefully really almost perhaps
""".split()
_OPENERS = ("Explain why", "Describe how", "Tell me about", "Can you say why", "Write a short note on",
            "Summarize how", "What happens when", "Give advice on how")


def _sentence(rng: random.Random) -> list[str]:
    words = [rng.choice(_CONTENT if rng.random() < 0.6 else _FUNCTION) for _ in range(rng.randint(5, 14))]
    if len(words) > 7 and rng.random() < 0.4:
        words[rng.randint(2, len(words) - 3)] += ","
    words[0] = words[0].capitalize()
    words[-1] += "."
    return words


def _words(rng: random.Random, count: int, opener: str = "") -> list[str]:
    words = opener.split()
    while len(words) < count:
        sentence = _sentence(rng)
        if len(words) == len(opener.split()) and words:  # "Explain why the ...", not "Explain why The ..."
            sentence[0] = sentence[0].lower()
        words.extend(sentence)
    return words


def count_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def text_with_tokens(tokenizer, rng: random.Random, low: int, high: int, opener: str = "") -> str:
    """English-ish text of between `low` and `high` tokens (inclusive, counted by `tokenizer`,
    no special tokens); its target length is drawn from Beta(1.2, 1.8) over the range: skewed towards
    short texts with a long tail, like real prompts and responses, and reaching both ends."""
    target = low + round(rng.betavariate(1.2, 1.8) * (high - low))
    words = _words(rng, 2 * high, opener)  # more than enough: every word is at least one token

    def tokens(k: int) -> int:
        return count_tokens(tokenizer, " ".join(words[:k]))

    lo_k, hi_k = 1, len(words)  # smallest k with tokens(k) >= target (a binary search)
    while lo_k < hi_k:
        mid = (lo_k + hi_k) // 2
        lo_k, hi_k = (mid + 1, hi_k) if tokens(mid) < target else (lo_k, mid)
    k = lo_k if tokens(lo_k) <= high else lo_k - 1
    n = tokens(k)
    if not low <= n <= high:
        raise AssertionError(f"synthetic text of {n} tokens is outside [{low}, {high}]")
    return " ".join(words[:k])


@dataclass(frozen=True)
class SyntheticPair:
    prompt: str  # the user turn's content
    chosen: str  # assistant responses (plain text, no end-of-turn token)
    rejected: str


def synthetic_pairs(tokenizer, n: int, *, seed: int = 0, prompt_tokens: tuple[int, int] = (10, 60),
                    response_tokens: tuple[int, int] = (10, 110)) -> list[SyntheticPair]:
    """`n` deterministic preference pairs: same seed and tokenizer, same pairs. Token counts are
    of the plain texts, before any chat template (which adds its own tokens)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt = text_with_tokens(tokenizer, rng, *prompt_tokens, opener=rng.choice(_OPENERS))
        chosen = text_with_tokens(tokenizer, rng, *response_tokens)
        rejected = text_with_tokens(tokenizer, rng, *response_tokens)
        out.append(SyntheticPair(prompt, chosen, rejected))
    return out


def length_stats(tokenizer, texts: list[str]) -> dict[str, float]:
    counts = [count_tokens(tokenizer, t) for t in texts]
    return {"min": min(counts), "mean": round(sum(counts) / len(counts), 1), "max": max(counts)}


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def run_side(script: str, side: str, args: list[str], *, env: dict[str, str] | None = None) -> dict:
    """Run `python script --worker side --result-file F *args` in a fresh process and return the
    JSON it wrote to F. Its stdout and stderr go to our stderr, so our stdout stays one JSON line."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{side}-") as tmp:
        result_file = Path(tmp) / "result.json"
        cmd = [sys.executable, script, "--worker", side, "--result-file", str(result_file), *args]
        proc = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr, env={**os.environ, **OFFLINE_ENV, **(env or {})})
        if proc.returncode != 0 or not result_file.is_file():
            raise RuntimeError(f"the {side} side failed (exit code {proc.returncode}); its output is above")
        return json.loads(result_file.read_text())


def run_sides(script: str, sides, args: list[str]) -> tuple[dict, dict]:
    """Every side in its own worker process (run_side), CUDA hidden: the benchmarks are CPU-only
    even on a machine with a GPU. Returns the results and the report (keys starting with "_" left
    out)."""
    results = {side: run_side(script, side, args, env={"CUDA_VISIBLE_DEVICES": ""}) for side in sides}
    return results, {side: {k: v for k, v in r.items() if not k.startswith("_")} for side, r in results.items()}


def run_worker(args, work) -> int:
    """In a worker process: run `work(args)` and hand its result to the runner."""
    Path(args.result_file).write_text(json.dumps(work(args)))
    return 0


def publish(report: dict, out: str | Path) -> int:
    """The report as one JSON line on stdout and in `out`."""
    print(json.dumps(report), flush=True)
    write_json(out, report)
    return 0


def write_json(path: str | Path, payload: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")


def chat_text_rows(tokenizer, pairs: list[SyntheticPair]) -> list[dict[str, str]]:
    """Plain-text rows {prompt, chosen, rejected} for TRL that tokenize to alignlab's ids: the prompt
    rendered by the tokenizer's chat template with the generation prompt, each response followed
    by the tokenizer's EOS (SmolLM2: <|im_end|>, which alignlab appends to every response). TRL
    would add that EOS itself; it is written here so that the text says what is trained on."""
    rows = []
    for p in pairs:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": p.prompt}], tokenize=False,
                                               add_generation_prompt=True)
        rows.append({"prompt": prompt, "chosen": p.chosen + tokenizer.eos_token,
                     "rejected": p.rejected + tokenizer.eos_token})
    return rows


def worker_setup(tokenizer, pairs: list[SyntheticPair]) -> dict:
    """Facts a worker records about its process and data (the parent imports nothing heavy).
    Versions come from package metadata: importing trl would add to alignlab's peak memory."""
    from importlib.metadata import version

    import torch

    return {
        "torch_threads": torch.get_num_threads(),
        "prompt_tokens": length_stats(tokenizer, [p.prompt for p in pairs]),
        "response_tokens": length_stats(tokenizer, [p.chosen for p in pairs] + [p.rejected for p in pairs]),
        "versions": {name: version(name) for name in ("torch", "transformers", "trl")},
    }


def sentiment_prompts(n: int, *, seed: int = 0) -> list[list[dict[str, str]]]:
    """`n` distinct chat prompts "Write one sentence about <topic>." (the lab's sentiment task,
    alignlab.lab.sentiment), topics drawn without replacement by `seed`: short prompts (about 40
    tokens with SmolLM2's chat template, its default system prompt included) whose completions a
    cheap deterministic function (VADER sentiment) can score."""
    from alignlab.lab.sentiment import TOPICS, SentimentTask

    if n > len(TOPICS):
        raise ValueError(f"asked for {n} prompts; the sentiment task has {len(TOPICS)} topics")
    topics = random.Random(seed).sample(list(TOPICS), n)
    return [[{"role": "user", "content": SentimentTask.template.format(topic=t)}] for t in topics]


def load_pair_data(args):
    """(model path, tokenizer, synthetic pairs) for a pairwise benchmark's --model/--pairs/--seed."""
    from alignlab.models.load import load_tokenizer, resolve_model_path

    tokenizer = load_tokenizer(args.model)
    return resolve_model_path(args.model), tokenizer, synthetic_pairs(tokenizer, args.pairs, seed=args.seed)


def add_runner_args(p, sides, default_out) -> None:
    """The options every benchmark shares: --out, TRL's gradient checkpointing switch, and the
    internal --worker/--result-file of `run_side`."""
    p.add_argument("--out", default=str(default_out), help="where the JSON result is written")
    p.add_argument("--trl-no-gradient-checkpointing", action="store_true",
                   help="turn off TRL's gradient checkpointing (on by default in TRL)")
    p.add_argument("--worker", choices=sides, help=argparse.SUPPRESS)  # internal: run one side here
    p.add_argument("--result-file", help=argparse.SUPPRESS)
