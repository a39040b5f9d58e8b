"""A saved LoRA adapter names a portable base (the embedded model's hub id, not a machine-local
cache folder) and alignlab takes the adapter folder wherever it takes a model."""

import json
import shutil

import torch

from alignlab.models.embedded import POLICY_NAME
from alignlab.models.load import load_policy, load_tokenizer
from alignlab.train.dpo import DPOConfig, train_dpo
from test_dpo_train import TOPICS, records


def test_an_adapter_of_the_embedded_model_records_its_hub_id_and_loads_as_a_policy(tmp_path, tiny_policy_dir,
                                                                                   monkeypatch):
    # the embedded model's cache folder, holding the tiny model (no conversion, no download)
    monkeypatch.setenv("ALIGNLAB_CACHE", str(tmp_path / "cache"))
    shutil.copytree(tiny_policy_dir, tmp_path / "cache" / "models" / POLICY_NAME)
    import peft.utils.save_and_load as peft_save

    def no_lookup(*args, **kwargs):  # saving must not ask the hub anything (no network at run time)
        raise AssertionError(f"hub lookup while saving: {args}")

    monkeypatch.setattr(peft_save, "check_file_exists_on_hf_hub", no_lookup)
    cfg = DPOConfig(model="embedded", output_dir=str(tmp_path / "run"), lora=True, lora_r=4, batch_size=4,
                    max_steps=2, learning_rate=3e-2, warmup_ratio=0.0, progress=False, max_length=128)
    session = train_dpo(cfg, train_records=records(TOPICS[:8]))
    adapter = session.final_dir
    saved = json.loads((adapter / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"

    policy = load_policy(str(adapter))  # base + adapter, merged
    assert not hasattr(policy, "peft_config")
    ids = torch.tensor([[5, 6, 7, 8]])
    session.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(policy(ids).logits, session.model(ids).logits, atol=1e-5, rtol=1e-4)
        base = load_policy("embedded")(ids).logits
    assert (policy(ids).logits - base).abs().max() > 1e-4  # the adapter is in it
    assert load_tokenizer(str(adapter)).encode("hello") == load_tokenizer("embedded").encode("hello")

    # and training starts from it: a DPO run on the adapter folder
    again = train_dpo(DPOConfig(model=str(adapter), output_dir=str(tmp_path / "run2"), lora=True, lora_r=4,
                                batch_size=4, max_steps=1, progress=False, max_length=128),
                      train_records=records(TOPICS[:8]))
    assert json.loads((again.final_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == str(adapter)
