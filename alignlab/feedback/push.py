"""Queue items for judging: responses from a file or sampled from alignlab policies, optionally
scored by a reward-model ensemble for the uncertainty strategies.

A responses file is JSON Lines, one prompt per line: `{"prompt": text or messages, "responses":
[text, ...], "sources": [name, ...]?}`; `prompt` may be left out when a prompts file is given
too, whose lines then pair with these line by line. Items are made per task: pairwise, every
pair of a prompt's responses; ranking, one item of all of them; rating and thumbs, one item per
response.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from alignlab.data.errors import DataError
from alignlab.data.prompts import json_objects, prompt_row, read_prompt_rows
from alignlab.feedback import store
from alignlab.feedback.assign import NEEDS_SCORES


def read_responses(path, prompts: list | None = None) -> list[dict]:
    """Rows {prompt, responses, sources?} from a responses file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"responses file {path} does not exist")
    rows = []
    for number, (row, where) in enumerate(json_objects(path, path.read_text(encoding="utf-8").splitlines(),
                                                       "with 'prompt' and 'responses'")):
        if "prompt" not in row and prompts is not None:
            if number >= len(prompts):
                raise DataError(f"more response lines than the {len(prompts)} prompts given", **where)
            row = {**row, "prompt": prompts[number]}
        prompt = prompt_row(row, where)["prompt"]
        responses = row.get("responses")
        if not (isinstance(responses, list) and responses and all(isinstance(r, str) and r.strip() for r in responses)):
            raise DataError("expected a non-empty list of non-empty texts", field="responses", **where)
        sources = row.get("sources")
        if sources is not None and not (isinstance(sources, list) and len(sources) == len(responses)
                                        and all(isinstance(s, str) for s in sources)):
            raise DataError(f"expected one name per response ({len(responses)})", field="sources", **where)
        rows.append({"prompt": prompt, "responses": responses, "sources": sources})
    if prompts is not None and len(rows) != len(prompts):
        raise DataError(f"{len(rows)} response lines for {len(prompts)} prompts: give one line per prompt",
                        file=str(path))
    if not rows:
        raise DataError("no responses to push", file=str(path))
    return rows


def read_prompts(path) -> list:
    return [row["prompt"] for row in read_prompt_rows(path)]


def generate_responses(prompts: list, policies: list[str], *, max_new_tokens: int = 128, temperature: float = 1.0,
                       seed: int = 0) -> list[dict]:
    """One sampled response per policy per prompt (alignlab's HF rollout backend)."""
    from alignlab.models.load import load_policy, load_tokenizer
    from alignlab.rollout.base import SamplingParams
    from alignlab.rollout.hf import generate_texts

    texts = []
    for k, policy in enumerate(policies):
        tokenizer, model = load_tokenizer(policy), load_policy(policy)
        params = SamplingParams(n=1, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed + k)
        texts.append(generate_texts(model, tokenizer, prompts, params, progress=f"sampling {policy}").texts)
    return [{"prompt": p, "responses": [t[i] if t[i].strip() else "(empty response)" for t in texts],
             "sources": list(policies)} for i, p in enumerate(prompts)]


def score_rows(rows: list[dict], rm: str) -> list[list[list[float]]]:
    """(K, n) member rewards of every row's responses from a reward model (ensemble)."""
    from alignlab.rewards.model import load_reward_source

    source = load_reward_source(rm)
    prompts = [row["prompt"] for row in rows for _ in row["responses"]]
    responses = [r for row in rows for r in row["responses"]]
    members = source.outputs(prompts, responses)[0]  # (N, K)
    out, start = [], 0
    for row in rows:
        n = len(row["responses"])
        out.append(members[start:start + n].T.tolist())  # (K, n)
        start += n
    return out


def make_items(task: str, rows: list[dict], scores: list | None = None) -> list[dict]:
    items = []
    for r, row in enumerate(rows):
        n = len(row["responses"])
        if task in ("pairwise", "ranking") and n < 2:
            raise ValueError(f"prompt {r + 1} has {n} response: a {task} project needs 2 or more per prompt")
        groups = {"pairwise": list(itertools.combinations(range(n), 2)), "ranking": [tuple(range(n))]}.get(
            task, [(i,) for i in range(n)])
        for group in groups:
            items.append({"prompt": row["prompt"], "responses": [row["responses"][i] for i in group],
                          "sources": [row["sources"][i] for i in group] if row.get("sources") else None,
                          "member_scores": [[m[i] for i in group] for m in scores[r]] if scores else None})
    return items


def push(sessions, project_slug: str, rows: list[dict], *, rm: str | None = None) -> dict:
    """Queue `rows` as items of the project; returns a summary."""
    with sessions() as db:
        project = store.get_project(db, project_slug)
        task, strategy = project.task, project.strategy
    if strategy in NEEDS_SCORES and rm is None:
        raise ValueError(f"project {project_slug!r} assigns by {strategy}, which needs reward-model scores: "
                         "pass --rm DIR1+DIR2+... (an ensemble) or a model trained with --ensemble K")
    items = make_items(task, rows, score_rows(rows, rm) if rm else None)
    with sessions() as db:
        added = len(store.add_items(db, store.get_project(db, project_slug), items))
    return {"project": project_slug, "task": task, "prompts": len(rows), "items_added": added,
            "scored_by": rm}
