"""Building, saving and loading reward models.

Saved layout (`save_reward_model`):
- causal kind: the folder IS a transformers `*ForSequenceClassification` checkpoint (LoRA merged;
  `num_labels = K*A`, label k*A + a = member k, attribute a; `pad_token_id` chosen so that
  transformers, which reads the last token that is not pad, reads the end-of-turn token alignlab
  reads, also on `apply_chat_template(conversation)` text: `export_pad_token_id`), plus
  `alignlab_reward.json` (kind, members, attributes, objective, reward_offset, gating and
  gate_trained) and `reward_gate.safetensors` (the gate and its log beta) when there is a gate;
  an untrained gate is never used to score (the attributes' uniform mean is). transformers' classifier reads the reward before
  `reward_offset` (each member's zero, a constant; differences between responses are the same).
- encoder kind: the encoder's own `save_pretrained` folder plus `reward_heads.safetensors` and
  `alignlab_reward.json`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from alignlab.models.embedded import encoder_dir
from alignlab.models.load import lora_placement, resolve_model_path
from alignlab.models.reward import RewardModel

ENCODER_TYPES = ("bert", "roberta", "distilbert", "deberta", "deberta-v2", "electra", "xlm-roberta", "mpnet", "albert")
ENCODER_NAMES = ("embedded-encoder", "minilm", "all-minilm-l6-v2")
META = "alignlab_reward.json"


def resolve_backbone_path(name: str) -> str:
    """'embedded-encoder' -> the MiniLM folder from its wheel; else as for policies."""
    if name in ENCODER_NAMES:
        return str(encoder_dir())
    return resolve_model_path(name)


def backbone_kind(path: str) -> str:
    from transformers import AutoConfig

    return "encoder" if AutoConfig.from_pretrained(path).model_type in ENCODER_TYPES else "causal"


def load_backbone(path: str, kind: str):
    """The base transformer (no LM head): LlamaModel-like for causal, BertModel-like for encoders."""
    from transformers import AutoConfig, AutoModel

    kwargs = {"attn_implementation": "sdpa"} if kind == "causal" else {}
    if AutoConfig.from_pretrained(path).model_type == "bert":
        kwargs["add_pooling_layer"] = False  # the reward heads pool for themselves
    model = AutoModel.from_pretrained(path, dtype=torch.float32, **kwargs)
    if kind == "causal" and hasattr(model, "get_decoder") and model.get_decoder() is not model:
        model = model.get_decoder()
    return model


def reward_pad_token_id(tokenizer) -> int:
    """A pad id that never ends a real response: the tokenizer's pad unless it doubles as the
    end-of-turn token (SmolLM2: pad = eos = <|im_end|>), then unk, then any other special token."""
    eos = tokenizer.eos_token_id
    for candidate in (tokenizer.pad_token_id, tokenizer.unk_token_id, *tokenizer.all_special_ids):
        if candidate is not None and candidate != eos:
            return int(candidate)
    raise ValueError("the tokenizer has no special token other than eos to pad with; add a pad token")


def export_pad_token_id(tokenizer) -> int:
    """The pad id written into a causal export. transformers' *ForSequenceClassification reads the
    last token that is not its pad id (whatever the attention mask); alignlab reads the end-of-turn
    token that closes a response. The chat template writes text after that token (ChatML:
    `<|im_end|>\n`), so on `apply_chat_template(conversation)` text transformers would read the
    `\n`. When that trailer is one token id (repeated or not), it becomes the pad id: transformers
    then skips it and reads `<|im_end|>`, on alignlab's ids (which end there) and on the template's
    text alike. Otherwise (no trailer, or a trailer of several different tokens), the pad of
    `reward_pad_token_id`."""
    trailer = _template_trailer(tokenizer)
    if trailer and len(set(trailer)) == 1 and trailer[0] != tokenizer.eos_token_id:
        return int(trailer[0])
    return reward_pad_token_id(tokenizer)


def _template_trailer(tokenizer) -> list[int]:
    """The token ids the chat template writes after the end-of-turn special token that closes an
    assistant message ([] without a template, or when there is none)."""
    sentinel = "\u2063alignlab-response\u2063"
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": sentinel}]
    try:
        text = tokenizer.apply_chat_template(turns, tokenize=False) if getattr(tokenizer, "chat_template", None) else ""
    except Exception:  # a template may refuse such a conversation: nothing to match then
        return []
    if not isinstance(text, str) or sentinel not in text:
        return []
    after = tokenizer(text[text.index(sentinel) + len(sentinel):], add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids)
    end = next((i for i, t in enumerate(after) if t in special), None)
    return [int(t) for t in after[end + 1:]] if end is not None else []


def _lora_config(lora: dict, model):
    """`lora`: r, alpha, dropout, target_modules and optionally layers (on the top N layers only)."""
    from peft import LoraConfig

    return LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                      **lora_placement(model, lora["target_modules"], lora.get("layers", 0)))


def build_reward_model(name: str, *, members: int = 1, attributes=("reward",),
                       freeze_backbone: bool = False, lora: dict | None = None, seed: int = 0,
                       lora_members: bool = False) -> RewardModel:
    """lora_members: the K members are K LoRA adapters (settings `lora`) on one frozen backbone."""
    path = resolve_backbone_path(name)
    kind = backbone_kind(path)
    backbone = load_backbone(path, kind)
    if lora_members:
        from peft import get_peft_model

        if not lora:
            raise ValueError("LoRA members need LoRA settings (r, alpha, dropout, target_modules)")
        names = tuple(f"member{k}" for k in range(members))
        with torch.random.fork_rng(devices=[]):  # each adapter draws its own A matrices from one seeded stream
            torch.manual_seed(seed)
            backbone = get_peft_model(backbone, _lora_config(lora, backbone), adapter_name=names[0])
            for extra in names[1:]:
                backbone.add_adapter(extra, _lora_config(lora, backbone))
        model = RewardModel(backbone, kind=kind, hidden_size=backbone.config.hidden_size, members=members,
                            attributes=tuple(attributes), seed=seed, adapter_names=names)
        model.use_adapter(names[0])
        return model
    if lora and not freeze_backbone:
        from peft import get_peft_model

        backbone = get_peft_model(backbone, _lora_config(lora, backbone))
    hidden = backbone.config.hidden_size
    return RewardModel(backbone, kind=kind, hidden_size=hidden, members=members, attributes=tuple(attributes),
                       freeze_backbone=freeze_backbone, seed=seed)


def _plain_backbone(model: RewardModel):
    backbone = model.backbone
    if model.adapter_names:  # LoRA members: the shared base, without any adapter (they are saved apart)
        return copy.deepcopy(backbone).unload()
    if hasattr(backbone, "merge_and_unload"):  # PEFT: merge a copy, keep training state intact
        backbone = copy.deepcopy(backbone).merge_and_unload()
    return backbone


def save_reward_model(model: RewardModel, tokenizer, path, *, objective: str = "pairwise") -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    backbone = _plain_backbone(model)
    K, A = model.members, len(model.attributes)
    if model.kind == "causal":
        from transformers import AutoModelForSequenceClassification

        config = copy.deepcopy(backbone.config)
        config.num_labels = K * A
        config.pad_token_id = export_pad_token_id(tokenizer)
        config.architectures = None
        classifier = AutoModelForSequenceClassification.from_config(config)
        getattr(classifier, classifier.base_model_prefix).load_state_dict(backbone.state_dict())
        with torch.no_grad():  # (K, H, A) -> (K*A, H), label k*A + a
            classifier.score.weight.copy_(model.head_weight.detach().permute(0, 2, 1).reshape(K * A, -1))
        classifier.save_pretrained(path)
        saved_tokenizer = copy.deepcopy(tokenizer)
        saved_tokenizer.pad_token = saved_tokenizer.convert_ids_to_tokens(config.pad_token_id)
        saved_tokenizer.save_pretrained(path)
    else:
        backbone.save_pretrained(path)
        tokenizer.save_pretrained(path)
        heads = {"head_weight": model.head_weight.detach().contiguous()}
        if model.head_bias is not None:
            heads["head_bias"] = model.head_bias.detach().contiguous()
        save_file(heads, str(path / "reward_heads.safetensors"))
    if model.gate is not None:
        gate = {**model.gate.state_dict(), "log_beta": model.gate_log_beta}
        save_file({k: v.detach().contiguous() for k, v in gate.items()}, str(path / "reward_gate.safetensors"))
    meta = {"kind": model.kind, "members": K, "attributes": list(model.attributes), "gating": model.gate is not None,
            "gate_trained": model.gate is not None and model.gate_trained, "objective": objective}
    if model.reward_offset.any():
        meta["reward_offset"] = model.reward_offset.tolist()
    if model.adapter_names:  # peft writes adapter `name` to members/<name>/
        model.backbone.save_pretrained(str(path / "members"), selected_adapters=list(model.adapter_names))
        meta["adapters"] = list(model.adapter_names)
    (path / META).write_text(json.dumps(meta, indent=1))
    return path


def load_reward_model(path) -> tuple[RewardModel, object, dict]:
    """(model in eval mode, tokenizer, metadata) from a folder written by save_reward_model."""
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = Path(path)
    meta_path = path / META
    if not meta_path.is_file():
        raise FileNotFoundError(f"{path} is not an alignlab reward model (no {META})")
    meta = json.loads(meta_path.read_text())
    tokenizer = AutoTokenizer.from_pretrained(path)
    K, A = meta["members"], len(meta["attributes"])
    adapters = tuple(meta.get("adapters", ()))

    def build(backbone) -> RewardModel:
        if adapters:  # LoRA members: the saved base with each member's adapter from members/<name>/
            from peft import PeftModel

            backbone = PeftModel.from_pretrained(backbone, str(path / "members" / adapters[0]), adapter_name=adapters[0])
            for name in adapters[1:]:
                backbone.load_adapter(str(path / "members" / name), adapter_name=name)
        return RewardModel(backbone, kind=meta["kind"], hidden_size=backbone.config.hidden_size, members=K,
                           attributes=tuple(meta["attributes"]), gating=meta["gating"], adapter_names=adapters)

    if meta["kind"] == "causal":
        classifier = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
        model = build(getattr(classifier, classifier.base_model_prefix))
        with torch.no_grad():
            model.head_weight.copy_(classifier.score.weight.reshape(K, A, -1).permute(0, 2, 1))
    else:
        model = build(load_backbone(str(path), "encoder"))
        model.load_state_dict(load_file(str(path / "reward_heads.safetensors")), strict=False)
    if model.gate is not None:
        gate = load_file(str(path / "reward_gate.safetensors"))
        with torch.no_grad():
            model.gate_log_beta.copy_(gate.pop("log_beta", torch.zeros(())))
        model.gate.load_state_dict(gate)
        # a gate is used only once the gate objective has trained it (older folders: never)
        model.gate_trained = bool(meta.get("gate_trained", False))
    if "reward_offset" in meta:
        model.reward_offset.copy_(torch.tensor(meta["reward_offset"], dtype=torch.float32).view(K, A))
    return model.eval(), tokenizer, meta

