"""Reward consistency on contrast instructions (Shen et al. 2023, "The Trickle-down Impact of
Reward (In-)consistency on RLHF", arXiv:2309.16155).

Two lexically similar prompts p_a, p_b with different good responses y_a, y_b: a consistent reward
model scores y_a above y_b under p_a AND y_b above y_a under p_b. The pairs are built from a
dataset by nearest-neighbour prompt similarity (Jaccard over lower-cased words), or given.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from alignlab.data.records import prompt_messages


@dataclass
class ContrastPair:
    prompt_a: object
    response_a: str
    prompt_b: object
    response_b: str
    similarity: float


def _words(prompt) -> frozenset:
    text = " ".join(m["content"] for m in prompt_messages(prompt) if m.get("role") != "system")
    return frozenset(re.findall(r"\w+", text.lower()))


def jaccard(a: frozenset, b: frozenset) -> float:
    return len(a & b) / len(a | b) if a or b else 0.0


def build_contrast_pairs(records, *, min_similarity: float = 0.5, max_pairs: int | None = None) -> list[ContrastPair]:
    """For each record, its most similar other prompt (similarity >= min_similarity, prompts not
    identical, chosen responses different) gives one contrast pair; each unordered pair once."""
    words = [_words(r.prompt) for r in records]
    seen, out = set(), []
    for i, rec in enumerate(records):
        best, best_j = -1.0, None
        for j, other in enumerate(records):
            if j == i or words[j] == words[i] or other.chosen == rec.chosen:
                continue
            s = jaccard(words[i], words[j])
            if s > best:
                best, best_j = s, j
        if best_j is None or best < min_similarity or (min(i, best_j), max(i, best_j)) in seen:
            continue
        seen.add((min(i, best_j), max(i, best_j)))
        other = records[best_j]
        out.append(ContrastPair(rec.prompt, rec.chosen, other.prompt, other.chosen, best))
        if max_pairs and len(out) >= max_pairs:
            break
    return out


def reward_consistency(source, pairs: list[ContrastPair]) -> dict:
    """Share of contrast pairs where the source prefers each prompt's own response (both
    directions), and the share per direction."""
    if not pairs:
        raise ValueError("no contrast pairs: lower min_similarity or provide pairs")
    prompts = [p.prompt_a for p in pairs] * 2 + [p.prompt_b for p in pairs] * 2
    responses = ([p.response_a for p in pairs] + [p.response_b for p in pairs]
                 + [p.response_b for p in pairs] + [p.response_a for p in pairs])
    r = source.score(prompts, responses).view(4, len(pairs))  # (own_a, other_a, own_b, other_b)
    a_ok, b_ok = r[0] > r[1], r[2] > r[3]
    return {"contrast_pairs": len(pairs), "consistency": float((a_ok & b_ok).float().mean()),
            "directional_accuracy": float(torch.cat([a_ok, b_ok]).float().mean()),
            "mean_prompt_similarity": sum(p.similarity for p in pairs) / len(pairs)}
