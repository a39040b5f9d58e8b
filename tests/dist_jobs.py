"""Training jobs that tests/test_distributed.py runs both in-process (1 process) and under
`torchrun --nproc_per_node 2` (this file as the script, gloo backend on CPU): tiny DPO, reward
model, GRPO and online DPO runs on models saved to a folder both can load. Not a test module itself.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/dist_jobs.py SPEC.json

SPEC.json: {"jobs": [{"kind": "dpo" | "rm" | "grpo" | "online-dpo", "cfg": {...settings...}}, ...]}, run in order.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TOPICS = ["cats", "rain", "tea", "maps", "trains", "bread", "snow", "music", "paint", "boats", "lamps", "owls",
          "clouds", "shoes"]


def pairwise(n: int):
    from alignlab.data.records import PairwiseRecord

    return [PairwiseRecord(prompt=[{"role": "user", "content": f"Tell me about {t}."}],
                           chosen=f"I love {t}, yes yes.", rejected=f"No. {t} no no no.") for t in TOPICS[:n]]


def run_job(kind: str, settings: dict):
    """Train one job; returns its TrainingSession."""
    if kind == "dpo":
        from alignlab.train.dpo import DPOConfig, train_dpo

        n = settings.pop("_n", 10)
        return train_dpo(DPOConfig(**settings), train_records=pairwise(n))
    if kind == "rm":
        from alignlab.train.reward import RMConfig, train_reward_model

        return train_reward_model(RMConfig(**settings), train_records=pairwise(10))
    if kind in ("grpo", "online-dpo"):
        from alignlab.rewards.base import FunctionReward
        from alignlab.train.online import resolve_online, train_online

        rows = [{"prompt": [{"role": "user", "content": f"Tell me about {t}."}]} for t in TOPICS[:8]]
        reward = FunctionReward(lambda texts: [len(t) / 20 for t in texts], name="chars", responses_only=True)
        cfg = resolve_online(kind, flags=settings)
        return train_online(cfg, train_rows=rows, eval_rows=[], rewards=reward)
    if kind == "fsdp_checkpoint":
        return fsdp_checkpoint(settings["output_dir"])
    raise ValueError(kind)


class _NoTokenizer:
    def save_pretrained(self, directory) -> None:
        pass


def fsdp_checkpoint(out: str) -> None:
    """FSDP2 on CPU (gloo; accelerate routes FSDP to GPUs only, so `fully_shard` is applied here
    directly): one AdamW step on a sharded tiny Llama, a checkpoint through the loop's sharded
    path, that checkpoint loaded into a fresh sharded copy, and the final save after `unshard`."""
    from pathlib import Path

    import torch
    from safetensors.torch import save_file
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from alignlab.models.load import save_final
    from alignlab.train import distributed as dist
    from alignlab.train.checkpoint import gathered_state, load_checkpoint, save_checkpoint
    from helpers import make_tiny_lm

    dist.state()
    mesh = init_device_mesh("cpu", (dist.world_size(),))
    out = Path(out)

    def sharded(seed: int):
        model = make_tiny_lm(64, seed=seed)
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        return model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)

    model, optimizer, scheduler = sharded(0)
    ids = torch.arange(8).reshape(2, 4) + 3 * dist.rank()
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    scheduler.step()
    gathered = gathered_state(model, optimizer)
    if dist.is_main():
        save_checkpoint(out / "checkpoints", 1, model, optimizer, scheduler, {"micro": 2}, 2, gathered=gathered)
    dist.barrier()
    fresh, fresh_optimizer, fresh_scheduler = sharded(1)  # other initial weights: all must come from the file
    load_checkpoint(out / "checkpoints" / "step-1", fresh, fresh_optimizer, fresh_scheduler, sharded=True)
    reloaded, _ = gathered_state(fresh, fresh_optimizer)
    dist.unshard(model)
    if dist.is_main():
        save_file({k: v.detach().clone() for k, v in reloaded.items()}, out / "reloaded.safetensors")
        save_file({k: v.detach().clone() for k, v in gathered[0].items()}, out / "trained.safetensors")
        save_final(model, _NoTokenizer(), out / "final")
    dist.barrier()


if __name__ == "__main__":
    spec = json.loads(open(sys.argv[1]).read())
    for job in spec["jobs"]:
        run_job(job["kind"], dict(job["cfg"]))
    import torch.distributed

    if torch.distributed.is_initialized():  # leave together: no process exits mid-collective
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
