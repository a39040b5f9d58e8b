"""A shared frozen trunk: a transformer's bottom layers run once, its top layers once per member.

When K LoRA adapters sit only on the top layers of one frozen backbone, every adapter sees the
same input to the first adapted layer: the bottom `start` layers compute it identically for all
members. `SharedTrunk` computes that hidden state once per batch (no grad: nothing below `start`
trains), then runs the top layers once per member from it, so K members cost

    bottom forward  +  K x (top forward + top backward)

instead of K whole passes: the cheapness of K heads on one frozen backbone, kept for members that
differ in their features (their own top layers), not only in a linear read-out.

How it stays architecture-agnostic: it needs only the model's list of layers (the `ModuleList`
with `config.num_hidden_layers` entries: `layers` of Llama-like decoders, `encoder.layer` of BERT)
and that the model runs them in order, each taking the hidden state as its first argument and
returning it as a tensor (transformers >= 5 decoders and BERT do).
- the trunk pass stops at the input of layer `start` (a forward pre-hook captures it and ends the
  forward), so nothing above it, not even the final norm, is computed;
- a member pass runs the whole model with its layer list swapped for one of the same length whose
  first `start - 1` entries pass the hidden state through, whose entry `start - 1` returns the
  trunk's hidden state, and whose rest are the real top layers (indices are kept, so per-layer
  settings such as sliding-window layer types still line up). Embeddings, masks and position
  encodings are recomputed: cheap next to a layer.
`check` compares both against the plain forward at construction, so an architecture that does not
fit fails at once with a clear error rather than giving wrong rewards.
"""

from __future__ import annotations

import torch
from torch import nn


class _Stop(Exception):
    pass


class _Pass(nn.Module):
    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


class _Inject(nn.Module):
    """The last bottom layer's stand-in: returns the trunk's output whatever it is given."""

    def __init__(self, hidden: torch.Tensor):
        super().__init__()
        self.hidden = hidden

    def forward(self, hidden_states, *args, **kwargs):
        if hidden_states.shape != self.hidden.shape:
            raise RuntimeError(f"shared trunk: hidden state {tuple(self.hidden.shape)} reused for a batch of "
                               f"shape {tuple(hidden_states.shape)}")
        return self.hidden.to(hidden_states.dtype)


def layer_list(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    """(owner, attribute, list) of the model's transformer layers: the ModuleList with
    `config.num_hidden_layers` entries (the outermost one when several match)."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for name, module in model.named_modules():
        for attr, child in module.named_children():
            if isinstance(child, nn.ModuleList) and len(child) == n:
                return module, attr, child
    raise ValueError(f"{type(model).__name__}: no list of {n} transformer layers found; a shared trunk needs one")


class SharedTrunk:
    """`run(forward)` computes the bottom `start` layers; `top(forward, hidden)` the rest from
    `hidden`. `forward` is a zero-argument call of the model's forward on one batch."""

    def __init__(self, model: nn.Module, start: int):
        self.model = model
        self.owner, self.attr, self.layers = layer_list(model)
        if not 1 <= start < len(self.layers):
            raise ValueError(f"shared trunk: the top layers must start between 1 and {len(self.layers) - 1}, got {start}")
        self.start = start
        self._cached: tuple[object, torch.Tensor] | None = None

    def run(self, forward) -> torch.Tensor:
        """The input of layer `start` (no grad): what every member's top layers start from."""
        captured = []

        def grab(module, args, kwargs):
            captured.append(args[0] if args else kwargs["hidden_states"])
            raise _Stop

        handle = self.layers[self.start].register_forward_pre_hook(grab, with_kwargs=True)
        try:
            with torch.no_grad():
                forward()
        except _Stop:
            pass
        finally:
            handle.remove()
        if not captured:
            raise RuntimeError(f"shared trunk: {type(self.model).__name__}'s forward never reached layer {self.start}")
        return captured[0].detach()

    def cached(self, key, forward) -> torch.Tensor:
        """`run(forward)`, computed once for a run of calls with the same `key` object (the batch's
        input ids: the K member passes of one micro-batch share it)."""
        key = (key, self.model.training)  # (dropout: a train-mode trunk is not an eval-mode one)
        if self._cached is None or self._cached[0][0] is not key[0] or self._cached[0][1] != key[1]:
            self._cached = (key, self.run(forward))
        return self._cached[1]

    def clear(self) -> None:
        self._cached = None

    def top(self, forward, hidden: torch.Tensor):
        """`forward()` with the bottom layers replaced by `hidden`: the model's output as if it had
        run every layer, with gradients only through the top ones."""
        swapped = nn.ModuleList([_Pass() for _ in range(self.start - 1)] + [_Inject(hidden)] + list(self.layers[self.start:]))
        setattr(self.owner, self.attr, swapped)
        try:
            return forward()
        finally:
            setattr(self.owner, self.attr, self.layers)

    def check(self, forward, output, atol: float = 1e-4) -> None:
        """Raise if trunk + top does not reproduce the plain forward (`output(result)` -> tensor)."""
        with torch.no_grad():
            plain = output(forward())
            split = output(self.top(forward, self.run(forward)))
        if plain.shape != split.shape or not torch.allclose(plain, split, atol=atol, rtol=1e-4):
            diff = (plain - split).abs().max().item() if plain.shape == split.shape else float("nan")
            raise ValueError(f"{type(self.model).__name__}: running its top layers from a shared trunk does not "
                             f"reproduce its forward (max difference {diff:.3g}); this architecture cannot share a "
                             f"trunk: set lora_layers: 0 (adapters on every layer, a full pass per member)")
