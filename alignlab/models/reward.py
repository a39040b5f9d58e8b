"""Reward models: a backbone read at one position per sequence, then K members x A attribute heads,
mixed into one score by a user direction (DPA), else a trained prompt-conditioned gate (ArmoRM),
else the uniform mean over the attributes (a gate that was never trained is not used).

    rewards, attributes = model(batch)          # (S, K), (S, K, A)

- kind "causal": a decoder LM (e.g. the embedded SmolLM2-135M); the reward is read from the hidden
  state of the LAST response token (the end-of-turn token), never from a pad or prompt token.
  Batches are packed without padding (`pack_reward_pairs`), chosen and rejected sharing the prompt.
- kind "encoder": a BERT-style encoder (the embedded MiniLM-L6); (prompt, response) is encoded as
  a text pair and mean-pooled over its real tokens (how MiniLM was trained to embed sentences).

An ensemble is K heads on ONE backbone forward; with `freeze_backbone` the backbone runs without
grad, so K members cost little more than one (Coste et al. 2023 train full copies; this is the
cheap variant, diversity coming from head initialization and bootstrap weights). Or K LoRA
adapters on one frozen backbone (`adapter_names`), each with its own head: one copy of the
weights, and members that differ in their features, not only their heads. Adapters on every layer
cost K backbone passes; adapters on the top layers only (peft's `layers_to_transform`) share the
bottom ones: they run once per batch and each member runs only its top layers (`SharedTrunk`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from alignlab.models.packing import pack_sequences
from alignlab.models.trunk import SharedTrunk


@dataclass
class RewardBatch:
    input_ids: torch.Tensor  # (R, L)
    attention_mask: torch.Tensor  # (R, L) 0/1, or (R, 1, L, L) additive for packed rows
    read_index: torch.Tensor  # (S,) flat index into R*L of each sequence's reward position
    prompt_index: torch.Tensor  # (S,) flat index of each sequence's last prompt token (gate input)
    num_sequences: int
    position_ids: torch.Tensor | None = None
    token_type_ids: torch.Tensor | None = None
    lengths: torch.Tensor | None = None  # (S,) response tokens, for the length-bias check

    def to(self, device) -> "RewardBatch":
        """On `device` (itself when already there: the K member calls of one micro-batch keep one
        input, which is what lets them share a trunk pass)."""
        if all(v.device == torch.device(device) for v in self.__dict__.values() if torch.is_tensor(v)):
            return self
        return RewardBatch(**{k: v.to(device) if torch.is_tensor(v) else v for k, v in self.__dict__.items()})


def pack_reward_sequences(blocks, num_sequences: int, *, pad_token_id: int) -> RewardBatch:
    """Causal-LM batches without padding: `blocks` as in `pack_sequences`
    ((prompt_ids, [(response_ids, seq_id), ...])). Each sequence's reward is read at its last
    response token: one past the last position that predicts one of its tokens."""
    packed = pack_sequences(blocks, num_sequences, pad_token_id=pad_token_id)
    last = torch.full((num_sequences,), -1, dtype=torch.long)
    last = last.scatter_reduce(0, packed.score_sequence, packed.score_positions, reduce="amax")
    first = torch.full((num_sequences,), 1 << 62, dtype=torch.long)
    first = first.scatter_reduce(0, packed.score_sequence, packed.score_positions, reduce="amin")
    if (last < 0).any():
        raise ValueError("every sequence needs a prompt and at least one response token")
    return RewardBatch(
        input_ids=packed.input_ids, attention_mask=packed.attention_mask, read_index=last + 1,
        prompt_index=first, num_sequences=num_sequences, position_ids=packed.position_ids,
        lengths=packed.lengths + 1,
    )


def pack_reward_pairs(pairs, *, pad_token_id: int) -> RewardBatch:
    """EncodedPairs -> one packed batch; sequences 0..B-1 chosen, B..2B-1 rejected."""
    B = len(pairs)
    blocks = [(p.prompt_ids, [(p.chosen_ids, i), (p.rejected_ids, B + i)]) for i, p in enumerate(pairs)]
    return pack_reward_sequences(blocks, 2 * B, pad_token_id=pad_token_id)


def pad_encoder_sequences(sequences, *, pad_token_id: int) -> RewardBatch:
    """Encoder batches: `sequences` are (prompt_ids, response_ids) where prompt_ids carry the
    leading [CLS] ... [SEP] and response_ids the trailing [SEP]; right-padded rows, one per
    sequence, token types 0 for the prompt and 1 for the response (BERT's sentence pairs)."""
    S = len(sequences)
    L = max(len(p) + len(r) for p, r in sequences)
    input_ids = torch.full((S, L), pad_token_id, dtype=torch.long)
    mask = torch.zeros((S, L), dtype=torch.long)
    types = torch.zeros((S, L), dtype=torch.long)
    prompt_index, lengths = [], []
    for s, (prompt, response) in enumerate(sequences):
        n = len(prompt) + len(response)
        input_ids[s, :n] = torch.tensor(list(prompt) + list(response))
        mask[s, :n] = 1
        types[s, len(prompt) : n] = 1
        prompt_index.append(s * L + len(prompt) - 1)
        lengths.append(len(response))
    return RewardBatch(
        input_ids=input_ids, attention_mask=mask, read_index=torch.arange(S) * L, prompt_index=torch.tensor(prompt_index),
        num_sequences=S, token_type_ids=types, lengths=torch.tensor(lengths),
    )


class RewardModel(nn.Module):
    """Backbone + heads. `members` K, `attributes` A names; `gating` adds ArmoRM's prompt-conditioned
    softmax gate over attributes; `direction` (A,) replaces it by a fixed unit vector (DPA)."""

    def __init__(self, backbone: nn.Module, *, kind: str, hidden_size: int, members: int = 1,
                 attributes: tuple[str, ...] = ("reward",), gating: bool = False, freeze_backbone: bool = False,
                 seed: int = 0, adapter_names: tuple[str, ...] = ()):
        super().__init__()
        if kind not in ("causal", "encoder"):
            raise ValueError(f"reward model kind must be causal or encoder, got {kind!r}")
        if adapter_names and (len(adapter_names) != members or gating or freeze_backbone):
            raise ValueError("LoRA members: one adapter per member, no gate, and the adapters must train")
        # LoRA members: member k reads the backbone with adapter k active (peft, one frozen base)
        self.adapter_names = tuple(adapter_names)
        self.backbone, self.kind = backbone, kind
        self.members, self.attributes = members, tuple(attributes)
        self.freeze_backbone = freeze_backbone
        A = len(self.attributes)
        g = torch.Generator().manual_seed(seed)
        # (K, H, A): every member its own head; causal heads have no bias so that a K=A=1 model
        # exports exactly as transformers' *ForSequenceClassification (whose score has none).
        self.head_weight = nn.Parameter(torch.randn(members, hidden_size, A, generator=g) / hidden_size**0.5)
        self.head_bias = nn.Parameter(torch.zeros(members, A)) if kind == "encoder" else None
        self.gate = self.gate_log_beta = None
        self.gate_trained = False  # until the gate objective has trained it, scores use the uniform mean
        self.gate_only = False  # everything but the gate frozen: the backbone also stays in eval mode
        if gating and A > 1:
            self.add_gate()
        self.register_buffer("direction", torch.empty(0), persistent=False)
        # (K, A) subtracted from every attribute reward: each member's zero (set by `center_rewards`
        # after pairwise training, since Bradley-Terry fixes a member's rewards only up to a constant)
        self.register_buffer("reward_offset", torch.zeros(members, A), persistent=False)
        if freeze_backbone:
            self.backbone.requires_grad_(False)
        self.trunk = self._shared_trunk() if self.adapter_names else None

    def _shared_trunk(self):
        """LoRA members adapting only layers >= s: the bottom s layers as a SharedTrunk (checked
        against the plain forward once, here), or None when every layer is adapted."""
        layers = self.backbone.peft_config[self.adapter_names[0]].layers_to_transform
        layers = [layers] if isinstance(layers, int) else list(layers or [])
        if not layers or min(layers) == 0:
            return None

        trunk = SharedTrunk(self.backbone, min(layers))
        ids = torch.arange(3, 11)[None] % self.backbone.config.vocab_size  # (1, 8) any real tokens
        probe = RewardBatch(input_ids=ids, attention_mask=torch.ones_like(ids), read_index=torch.tensor([7]),
                            prompt_index=torch.tensor([0]), num_sequences=1,
                            token_type_ids=torch.zeros_like(ids) if self.kind == "encoder" else None)
        modes = {m: m.training for m in self.backbone.modules()}  # restored one by one: train(b) would set them all
        self.backbone.eval()
        try:
            trunk.check(lambda: self.hidden_states(probe), lambda hidden: hidden)
        finally:
            for m, mode in modes.items():
                m.training = mode
        return trunk

    def add_gate(self) -> None:
        """ArmoRM's gate: prompt feature -> (A,) logits, softmax-normalised into attribute weights,
        plus log beta, the scaling of its Bradley-Terry logits in training. Zero-initialised, so
        that an untrained gate weighs the attributes uniformly; a linear map on the backbone's
        prompt feature (the paper uses a 3-hidden-layer ReLU MLP on Llama-3-8B's)."""
        hidden_size = self.head_weight.shape[1]
        self.gate = nn.Linear(hidden_size, len(self.attributes)).to(self.head_weight.device)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)
        self.gate_log_beta = nn.Parameter(torch.zeros((), device=self.head_weight.device))

    def train(self, mode: bool = True):
        """As nn.Module.train; training the gate alone keeps the frozen backbone in eval mode (no
        dropout), so the attribute rewards it mixes are those scoring will read."""
        super().train(mode)
        if self.gate_only:
            self.backbone.eval()
        return self

    def head_parameters(self) -> list[nn.Parameter]:
        """The parameters alignlab adds on top of the backbone (heads, bias, gate): the ones a
        `head_learning_rate` applies to."""
        extra = [self.head_bias] if self.head_bias is not None else []
        gate = [*self.gate.parameters(), self.gate_log_beta] if self.gate is not None else []
        return [self.head_weight, *extra, *gate]

    def set_direction(self, direction) -> None:
        """Score by a fixed preference direction over attributes (DPA) instead of the gate; the
        vector is normalized to unit length. `None` restores the gate / plain heads."""
        if direction is None:
            self.direction = torch.empty(0)
            return
        v = torch.as_tensor(direction, dtype=torch.float32).flatten()
        if v.numel() != len(self.attributes) or not torch.isfinite(v).all() or v.norm() == 0:
            raise ValueError(f"direction must be {len(self.attributes)} finite numbers, not all 0 (attributes {self.attributes})")
        self.direction = (v / v.norm()).to(self.head_weight.device)

    def hidden_states(self, batch: RewardBatch) -> torch.Tensor:
        kwargs = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        if batch.position_ids is not None:
            kwargs["position_ids"] = batch.position_ids
        if batch.token_type_ids is not None:
            kwargs["token_type_ids"] = batch.token_type_ids
        backbone = self.backbone.get_decoder() if hasattr(self.backbone, "get_decoder") and self.kind == "causal" else self.backbone
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_backbone):
            if self.kind == "causal":
                kwargs["use_cache"] = False
            return backbone(**kwargs).last_hidden_state  # (R, L, H)

    def features(self, batch: RewardBatch, hidden: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(S, H) reward features and (S, H) prompt features."""
        hidden = self.hidden_states(batch) if hidden is None else hidden
        flat = hidden.reshape(-1, hidden.shape[-1])
        if self.kind == "encoder":  # mean over the real tokens of each row (one row per sequence)
            mask = batch.attention_mask.to(hidden.dtype)[..., None]  # (S, L, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        else:
            pooled = flat[batch.read_index]
        return pooled, flat[batch.prompt_index]

    def use_adapter(self, name: str) -> None:
        """Make LoRA member `name` the active adapter. peft's set_adapter also switches the other
        adapters' requires_grad off, and autograd then drops their gradients from a backward pass
        that spans several members, so every adapter stays trainable here."""
        self.backbone.base_model.set_adapter(name)
        for n, p in self.backbone.named_parameters():
            if "lora_" in n:
                p.requires_grad_(True)

    def forward(self, batch: RewardBatch, member: int | None = None, with_gate: bool = False):
        """(S, K) scores and (S, K, A) attribute rewards; with `member` k, member k's alone, as
        (S, 1) and (S, 1, A) (LoRA members: one backbone pass, so that a trainer can back-propagate
        member by member and hold one member's activations at a time). `with_gate`: also the
        (S, A) gate logits read at each sequence's prompt feature (the gate objective's input)."""
        ks = range(self.members) if member is None else [member]
        sel = slice(None) if member is None else slice(member, member + 1)
        if self.adapter_names:  # one backbone pass per LoRA member, each read by its own head
            plain = lambda: self.hidden_states(batch)  # noqa: E731
            # the bottom layers carry no adapter: computed once for every member of this batch
            # (and for the K member-by-member calls of one micro-batch, which share its input ids)
            shared = self.trunk.cached(batch.input_ids, plain) if self.trunk is not None else None
            per_member = []
            for k in ks:
                self.use_adapter(self.adapter_names[k])
                hidden = self.trunk.top(plain, shared) if shared is not None else None
                pooled, prompt = self.features(batch, hidden)
                per_member.append(pooled.float() @ self.head_weight[k])  # (S, A)
            attrs = torch.stack(per_member, dim=1)  # (S, K, A)
        else:
            pooled, prompt = self.features(batch)
            attrs = torch.einsum("sh,kha->ska", pooled.float(), self.head_weight[sel])  # (S, K, A)
        if self.head_bias is not None:
            attrs = attrs + self.head_bias[sel]
        attrs = attrs - self.reward_offset[sel]
        scores = self.combine(attrs, prompt.float())
        if with_gate:
            return scores, attrs, self.gate(prompt.float())  # (S, A)
        return scores, attrs

    def combine(self, attrs: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        """(S, K, A) attribute rewards -> (S, K) one score per member: along the direction if one
        is set, else mixed by the gate once it is trained, else the uniform mean over attributes."""
        if self.direction.numel():
            return attrs @ self.direction
        if self.gate is not None and self.gate_trained:
            weights = torch.softmax(self.gate(prompt), dim=-1)  # (S, A)
            return (attrs * weights[:, None, :]).sum(-1)
        if attrs.shape[-1] == 1:
            return attrs[..., 0]
        return attrs.mean(-1)


@torch.no_grad()
def score_sequences(model: RewardModel, seqs, *, pad_token_id: int, batch_size: int = 64, progress: str = "",
                    device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, K) member rewards and (S, K, A) attribute rewards of `seqs` [(prompt_ids, response_ids)],
    in their order, batched by length (little padding) and packed (causal) or padded (encoder).
    A sequence that occurs several times (a response in several pairs) is computed once.
    `progress`: a progress-bar label (empty: none)."""
    keys = [(tuple(p), tuple(r)) for p, r in seqs]
    first = dict.fromkeys(keys)
    if len(first) < len(keys):
        where = {k: i for i, k in enumerate(first)}
        rewards, attrs = score_sequences(model, list(first), pad_token_id=pad_token_id, batch_size=batch_size,
                                         progress=progress, device=device)
        back = torch.tensor([where[k] for k in keys], dtype=torch.long)
        return rewards[back], attrs[back]
    from tqdm.auto import tqdm

    device = device or model.head_weight.device
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]) + len(seqs[i][1]))
    K, A = model.members, len(model.attributes)
    rewards, attrs = torch.zeros(len(seqs), K), torch.zeros(len(seqs), K, A)
    for start in tqdm(range(0, len(order), batch_size), desc=progress, disable=not progress, dynamic_ncols=True):
        idx = order[start : start + batch_size]
        if model.kind == "causal":
            batch = pack_reward_sequences([(list(seqs[i][0]), [(list(seqs[i][1]), j)]) for j, i in enumerate(idx)],
                                          len(idx), pad_token_id=pad_token_id)
        else:
            batch = pad_encoder_sequences([(list(seqs[i][0]), list(seqs[i][1])) for i in idx], pad_token_id=pad_token_id)
        r, a = model(batch.to(device))
        rewards[idx], attrs[idx] = r.float().cpu(), a.float().cpu()
    return rewards, attrs
