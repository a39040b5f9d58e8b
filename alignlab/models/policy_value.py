"""The module online trainers optimize: the policy LM plus optional value heads on its backbone.

`forward(batch)` runs the decoder ONCE on a packed batch (prompt computed once per group of
completions, alignlab.models.packing) and returns, for the response tokens only, their log-probs at
the sampling temperature, the critic's values from the same hidden states, and (on request) the
entropies. The value heads (one for the reward, a second for the cost in Safe RLHF) share the
policy's backbone, as in Ziegler et al. 2019 and the PPO-max setup, so a critic costs a (H, C)
matrix rather than a second model.
"""

from __future__ import annotations

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from alignlab.models.logprobs import TokenOutputs, token_outputs, unwrap_causal_lm
from alignlab.models.packing import PackedBatch


class PolicyValue(nn.Module):
    def __init__(self, model: nn.Module, critics: int = 0, *, temperature: float = 1.0, chunk_size: int = 1024):
        super().__init__()
        self.model = model
        self.temperature = temperature
        self.chunk_size = chunk_size
        self.value_head = None
        if critics:
            hidden = unwrap_causal_lm(model).config.hidden_size
            self.value_head = nn.Linear(hidden, critics)
            nn.init.zeros_(self.value_head.weight)  # V = 0 at the start: advantages begin as the rewards
            nn.init.zeros_(self.value_head.bias)
            self.value_head.to(next(model.parameters()).device)

    def forward(self, batch: PackedBatch, *, entropy: bool = False, temperature: float | None = None,
                values: bool = True) -> tuple[TokenOutputs, torch.Tensor | None]:
        """(TokenOutputs for the scored tokens, values (N, critics) or None). `temperature`
        overrides the sampling temperature (1.0 for a likelihood); `values=False` skips the critic."""
        critic = self.value_head if values else None
        out = token_outputs(self.model, batch, temperature=self.temperature if temperature is None else temperature,
                            keep_hidden=critic is not None, entropy=entropy, chunk_size=self.chunk_size)
        values = critic(out.hidden.float()) if critic is not None else None
        out.hidden = None  # not kept alive beyond the value head
        return out, values

    def save_value_head(self, path) -> None:
        if self.value_head is not None:
            save_file({k: v.detach().contiguous() for k, v in self.value_head.state_dict().items()}, str(path))

    def load_value_head(self, path) -> None:
        if self.value_head is not None:
            self.value_head.load_state_dict(load_file(str(path)))
