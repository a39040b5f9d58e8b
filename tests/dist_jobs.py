"""Training jobs that tests/test_distributed.py runs both in-process (1 process) and under
`torchrun --nproc_per_node 2` (this file as the script, gloo backend on CPU): tiny DPO, reward
model and GRPO runs on models saved to a folder both can load. Not a test module itself.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/dist_jobs.py SPEC.json

SPEC.json: {"jobs": [{"kind": "dpo" | "rm" | "grpo", "cfg": {...settings...}}, ...]}, run in order.
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
    if kind == "grpo":
        from alignlab.rewards.base import FunctionReward
        from alignlab.train.online import resolve_online, train_online

        rows = [{"prompt": [{"role": "user", "content": f"Tell me about {t}."}]} for t in TOPICS[:8]]
        reward = FunctionReward(lambda texts: [len(t) / 20 for t in texts], name="chars", responses_only=True)
        cfg = resolve_online("grpo", flags=settings)
        return train_online(cfg, train_rows=rows, eval_rows=[], rewards=reward)
    raise ValueError(kind)


if __name__ == "__main__":
    spec = json.loads(open(sys.argv[1]).read())
    for job in spec["jobs"]:
        run_job(job["kind"], dict(job["cfg"]))
