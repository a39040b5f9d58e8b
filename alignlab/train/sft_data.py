"""SFT batches: demonstrations read from a file or given in Python, and the two layouts of a
micro-batch of `SFTExample`s for one forward pass.

- `pack_examples` (default, padding-free): the sequences are packed first-fit-decreasing into rows
  (`alignlab.models.packing.pack_sequences`), each attending only to itself (a block-diagonal
  causal mask, position ids restarting per sequence); only the positions that predict a target
  token are scored. The row length is chosen per batch (`row_capacity`): rows as long as the
  longest sequence leave padding when no two sequences fit in one; longer rows leave less, but
  attention computes every (query, key) pair of a row, masked or not.
- `pad_examples`: one right-padded row per sequence with a 2-D mask; the same log-probs (tested).
"""

from __future__ import annotations

from typing import Sequence

import torch

from alignlab.data.demonstrations import Demonstration, demonstration, read_demonstrations
from alignlab.data.sft import SFTExample
from alignlab.models.packing import PackedBatch, _first_fit_decreasing, pack_sequences


def read_sft_split(path: str, records, name: str) -> list[Demonstration]:
    """Demonstrations of one split: from `records` given in Python (JSONL-shaped dicts,
    `(prompt, completion)` pairs, or Demonstration objects), else read from the JSONL file `path`."""
    if records is not None:
        return [r if isinstance(r, Demonstration) else demonstration(r, {"file": f"{name} records",
                                                                          "location": f"record {i}"})
                for i, r in enumerate(records)]
    if not path:
        return []
    if not str(path).endswith((".jsonl", ".ndjson")):
        raise ValueError(f"{path}: SFT data is read from a JSON Lines file (.jsonl): one {{prompt, completion}}, "
                         "{messages} or {text} object per line")
    return read_demonstrations(path)


def _targets(examples: Sequence[SFTExample]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) bool loss masks, right-padded, and (B,) target counts."""
    T = max(len(e.input_ids) for e in examples)
    mask = torch.zeros((len(examples), T), dtype=torch.bool)
    for s, e in enumerate(examples):
        mask[s, : len(e.loss_mask)] = torch.tensor(e.loss_mask, dtype=torch.bool)
    return mask, mask.sum(-1)


def row_capacity(sizes: Sequence[int], hidden_size: int) -> int:
    """The row length (a multiple of half the longest sequence, up to all of them in one row) that
    minimizes the cost of the packed batch: positions x (1 + L / (6 hidden_size)), where L is the
    row length. Per position, a transformer layer's matrix products cost ~24 h^2 FLOPs and its
    attention scores and weighted sum ~4 h L, so attention adds L / (6 h) of the rest."""
    longest, total = max(sizes), sum(sizes)
    best = None
    for capacity in sorted({*(longest * k // 2 for k in range(2, 9)), total}):
        if capacity < longest:
            continue
        rows = _first_fit_decreasing(sizes, capacity)
        L = max(sum(sizes[i] for i in row) for row in rows)
        cost = len(rows) * L * (1 + L / (6 * hidden_size))
        if best is None or cost < best[0]:
            best = (cost, capacity)
    return best[1]


def pack_examples(examples: Sequence[SFTExample], *, pad_token_id: int, hidden_size: int = 1024) -> PackedBatch:
    """Padding-free layout: `pack_sequences` scores every token after the first of each sequence;
    the positions whose target is outside the loss mask are then left out. `hidden_size`: the
    model's, for the choice of row length (`row_capacity`)."""
    capacity = row_capacity([len(e.input_ids) for e in examples], hidden_size)
    packed = pack_sequences([([], [(e.input_ids, s)]) for s, e in enumerate(examples)], len(examples),
                            pad_token_id=pad_token_id, capacity=capacity)
    mask, counts = _targets(examples)
    # with no prefix, a sequence's token j is predicted from its position j - 1
    target_index = packed.position_ids.reshape(-1)[packed.score_positions] + 1  # (N,)
    keep = mask[packed.score_sequence, target_index]  # (N,)
    packed.score_positions = packed.score_positions[keep]
    packed.score_targets = packed.score_targets[keep]
    packed.score_sequence = packed.score_sequence[keep]
    packed.lengths = counts
    return packed


def pad_examples(examples: Sequence[SFTExample], *, pad_token_id: int, hidden_size: int = 0) -> PackedBatch:
    """Classic layout: one right-padded row per sequence, a 2-D attention mask."""
    mask, counts = _targets(examples)
    B, L = mask.shape
    input_ids = torch.full((B, L), pad_token_id, dtype=torch.long)
    attention = torch.zeros((B, L), dtype=torch.long)
    for s, e in enumerate(examples):
        input_ids[s, : len(e.input_ids)] = torch.tensor(e.input_ids, dtype=torch.long)
        attention[s, : len(e.input_ids)] = 1
    rows, cols = mask.nonzero(as_tuple=True)  # target token (s, j) is predicted from (s, j - 1)
    return PackedBatch(
        input_ids=input_ids, position_ids=(attention.cumsum(-1) - 1).clamp(min=0), attention_mask=attention,
        score_positions=rows * L + cols - 1, score_targets=input_ids[rows, cols], score_sequence=rows,
        num_sequences=B, lengths=counts,
    )
