"""Online RL from feedback on the one loop: PPO, GRPO, RLOO, REINFORCE++, ReMax, P3O, PPO-Lagrangian.

- `config`: `OnlineConfig`, the method table (`ONLINE_METHODS`: what each method needs) and each
  method's paper defaults;
- `rollout`: one iteration's samples, rewards, reference/critic passes and advantages;
- `batch`: rollout batches (saved per iteration for exact resume) and their micro-batches;
- `trainer`: the algorithm plugged into the loop, and `train_online`, the Python API;
- `ptx`: the pretraining/SFT mixing term (PPO-ptx); `safety`: HC-RLHF's held-out safety test.
"""

from alignlab.train.online.config import ONLINE_METHODS, OnlineConfig
from alignlab.train.online.trainer import load_prompt_split, resolve_online, split_prompts, train_online

__all__ = ["ONLINE_METHODS", "OnlineConfig", "load_prompt_split", "resolve_online", "split_prompts",
           "train_online"]
