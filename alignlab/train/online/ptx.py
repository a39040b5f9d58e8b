"""The pretraining/SFT mixing term of the online trainers (InstructGPT's PPO-ptx; part of PPO-max).

Ouyang et al. 2022, eq. 2 maximize

    objective(phi) = E_(x,y)~pi_phi [ r(x, y) - beta log(pi_phi(y|x) / pi_ref(y|x)) ]
                     + gamma * E_x~D_pretrain [ log pi_phi(x) ]

so the loss gains `gamma * L_ptx`, with L_ptx the token-mean negative log-likelihood of a batch of
demonstrations (`ptx_nll`). Every micro-batch of policy updates draws its own `ptx_batch_size`
demonstrations, chosen by (seed, iteration, micro-batch) alone, so a resumed run draws the same.
"""

from __future__ import annotations

import torch

from alignlab.data.demonstrations import encode_demonstrations, read_demonstrations
from alignlab.models.packing import PackedBatch, pack_sequences


def ptx_nll(token_logps: torch.Tensor) -> torch.Tensor:
    """L_ptx = -(1/|T|) sum_t log pi(x_t | x_<t) over the |T| scored demonstration tokens (1-D)."""
    if token_logps.numel() == 0:
        raise ValueError("ptx_nll: no scored tokens")
    return -token_logps.mean()


class PtxMixer:
    """Draws demonstration batches for the ptx term; `report` counts what max_length cut or dropped."""

    def __init__(self, cfg, tokenizer, pad_token_id: int):
        demos = read_demonstrations(cfg.ptx_data)
        self.encoded = encode_demonstrations(tokenizer, demos, max_length=cfg.max_length, truncation=cfg.truncation)
        self.coef, self.batch_size, self.seed, self.pad = cfg.ptx_coef, cfg.ptx_batch_size, cfg.seed, pad_token_id

    @property
    def report(self) -> dict:
        return {"ptx_data": self.encoded.report()}

    def batch(self, iteration: int, index: int) -> PackedBatch:
        """Demonstrations for micro-batch `index` of rollout iteration `iteration`."""
        n = len(self.encoded.blocks)
        seed = (self.seed * 1_000_003 + iteration) * 10_007 + index
        picked = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: min(self.batch_size, n)].tolist()
        blocks = [(self.encoded.blocks[i][0], [(self.encoded.blocks[i][1], j)]) for j, i in enumerate(picked)]
        return pack_sequences(blocks, len(picked), pad_token_id=self.pad)
