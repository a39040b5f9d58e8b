"""Data helpers shared by the KTO and listwise trainers: a prompt with several responses,
tokenized, packed into one forward (the prompt computed once for all of its responses) and
scored by the frozen reference once before training.

An example is any object with `prompt_ids` and `responses` (a list of token-id lists); a batch
of B examples with at most K responses each packs into B*K sequences, sequence b*K + k being
response k of example b (missing entries of shorter lists are empty: log-prob 0, length 0), so
the scorer's output reshapes to (B, K).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from alignlab.data import DataReport
from alignlab.data.errors import DataError
from alignlab.data.tokenize import (DROPPED_LONG, TRUNCATION, _location, bound_raw_length, fit_to_length,
                                    prompt_encoder)
from alignlab.models.load import reference_context
from alignlab.models.logprobs import SequenceScorer
from alignlab.models.packing import PackedBatch, pack_sequences

ENCODED = "encoded examples"


@dataclass
class EncodedList:
    prompt_ids: list[int]
    responses: list[list[int]]  # (K,) token ids of each response, end-of-turn token included
    index: int  # position of the record in its split


def encode_lists(tokenizer, items: Sequence[tuple[object, object, list[str]]], *, max_length: int,
                 max_prompt_length: int | None = None, truncation: str = "error",
                 source: str = "data") -> tuple[list[EncodedList], DataReport]:
    """Tokenize (record, prompt, responses) items under one truncation rule: a prompt plus its
    longest response over `max_length` tokens is an error naming the record (`error`), is cut
    (`truncate`: the prompt's end and the responses' start are kept) or left out (`drop`);
    every cut and drop is counted in the report."""
    if truncation not in TRUNCATION:
        raise ValueError(f"truncation must be one of {', '.join(TRUNCATION)}, got {truncation!r}")
    encoder, report, out = prompt_encoder(tokenizer), DataReport(), []
    for index, (record, prompt, texts) in enumerate(items):
        file, where = _location(record, index, source)
        bounded = bound_raw_length(encoder, prompt, texts, max_length, truncation, file=file, location=where)
        if bounded is None:
            report.add(DROPPED_LONG, example=f"{file}, {where}")
            continue
        prompt_ids = encoder.prompt(bounded[0])
        responses = [encoder.response(t) for t in bounded[1]]
        total = len(prompt_ids) + max(len(r) for r in responses)
        if total > max_length:
            if truncation == "error":
                raise DataError(
                    f"prompt ({len(prompt_ids)} tokens) + longest response ({total - len(prompt_ids)}) = {total} "
                    f"tokens > max_length {max_length}. Raise max_length, or set truncation: truncate (keep the "
                    "prompt's end and the responses' start) or truncation: drop", file=file, location=where)
            reasons = [DROPPED_LONG]
            if truncation == "truncate":
                prompt_ids, responses, reasons = fit_to_length(encoder, prompt_ids, responses, max_length,
                                                               max_prompt_length)
            for reason in reasons:
                report.add(reason, example=f"{file}, {where}")
            if any(r.startswith("dropped") for r in reasons):
                continue
        out.append(EncodedList(prompt_ids, responses, index))
    report.add(ENCODED, len(out))
    return out, report


def require_list(record, size: int, minimum: int, field: str, source: str, index: int) -> None:
    """A DataError naming the record's file, line and field when its list is too short."""
    if size < minimum:
        file, where = _location(record, index, source)
        raise DataError(f"{size} response(s); ranking needs at least {minimum} responses a prompt (add responses "
                        "or remove this row)", file=file, location=where, field=field)


def pack_lists(examples: Sequence, width: int, *, pad_token_id: int) -> PackedBatch:
    """B examples -> one PackedBatch of B*width sequences (sequence b*width + k = response k of
    example b); each prompt is computed once for all of its responses."""
    blocks = [(e.prompt_ids, [(r, b * width + k) for k, r in enumerate(e.responses)]) for b, e in enumerate(examples)]
    return pack_sequences(blocks, len(examples) * width, pad_token_id=pad_token_id)


def list_mask(examples: Sequence, width: int) -> torch.Tensor:
    """(B, width) bool: True on real responses."""
    sizes = torch.tensor([len(e.responses) for e in examples])
    return torch.arange(width)[None, :] < sizes[:, None]


def widest(examples: Sequence) -> int:
    return max(len(e.responses) for e in examples)


@torch.no_grad()
def reference_list_logps(model, examples: Sequence, *, batch_size: int, pad_token_id: int,
                         progress: bool = True) -> torch.Tensor:
    """(N, K) reference log-probs of every response (K: the longest list; 0 on missing entries),
    in one no-grad pass with the LoRA adapter disabled (or the untouched initial weights)."""
    from tqdm.auto import tqdm

    scorer, width = SequenceScorer(model), widest(examples)
    was_training = model.training
    model.eval()
    out = torch.zeros(len(examples), width)
    device = next(model.parameters()).device
    starts = range(0, len(examples), batch_size)
    with reference_context(model):
        for start in tqdm(starts, desc="reference log-probs", disable=not progress, dynamic_ncols=True):
            chunk = examples[start: start + batch_size]
            logps = scorer(pack_lists(chunk, width, pad_token_id=pad_token_id).to(device)).float().cpu()
            out[start: start + len(chunk)] = logps.view(len(chunk), width)
    model.train(was_training)
    return out


def list_token_key(example) -> tuple:
    """What the reference cache's key hashes for one example."""
    return example.prompt_ids, example.responses
