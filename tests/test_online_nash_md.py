"""Nash-MD on the language-model online loop: each sample is judged against an opponent drawn
token by token from the geometric mixture pi^(1-m) pi_ref^m; its reward is P(sample > opponent),
then RLOO with the KL penalty. The wiring (which models make the opponent, with which m and
seeds; the judge's probabilities are the estimator's rewards), and an improvement on the tiny task."""

from __future__ import annotations

import pytest
import torch

from alignlab.config import ConfigError
from alignlab.data.tokenize import encode_prompt
from alignlab.models.load import reference_context
from alignlab.rewards.spec import WeightedRewards
from alignlab.rollout.hf import HFGenerator
from alignlab.rollout.mixture import Mixture
from alignlab.train.online import resolve_online, train_online
from alignlab.train.online.judging import opponent_win_rates
from alignlab.train.online.rollout import Controllers, RolloutMaker, prompt_seeds
from alignlab.train.online.trainer import _build_models
from test_online_train import PROMPTS, expected_reward, low_id_share, structured_policy_dir  # noqa: F401


class RecordingJudge:
    """P(a > b) = 0.5 + 0.3 sign(len(a) − len(b)), remembering every (a, b) it judged."""

    name = "length"

    def __init__(self):
        self.calls = []

    def prefer(self, prompts, a, b):
        self.calls.append((list(a), list(b)))
        return torch.tensor([0.5 + 0.3 * ((len(x) > len(y)) - (len(x) < len(y))) for x, y in zip(a, b)])


def test_opponent_win_rates_by_hand():
    judge = RecordingJudge()
    p = opponent_win_rates(judge, ["q", "q"], ["aaa", "b"], ["bb", "cc"], torch.zeros(2), torch.zeros(2), 1.0)
    assert p.tolist() == pytest.approx([0.8, 0.2]) and judge.calls == [(["aaa", "b"], ["bb", "cc"])]
    # no judge: the two rewards through Bradley-Terry at the temperature
    p = opponent_win_rates(None, ["q"], ["a"], ["b"], torch.tensor([1.0]), torch.tensor([0.0]), 0.5)
    assert p.item() == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item())
    with pytest.raises(ValueError, match="1 opponents for 2 samples"):
        opponent_win_rates(None, ["q", "q"], ["a", "b"], ["c"], torch.zeros(2), torch.zeros(1), 1.0)


@pytest.mark.parametrize("lora,m", [(False, 0.5), (True, 1.0)], ids=["full-m0.5", "lora-m1"])
def test_each_sample_is_judged_against_its_mixture_opponent(tmp_path, tiny_policy_dir, smol_tokenizer, lora, m):
    flags = dict(model=str(tiny_policy_dir), output_dir=str(tmp_path / "run"), prompts_per_step=4,
                 samples_per_prompt=3, max_new_tokens=8, batch_size=12, kl_coef=0.0, mixture_coef=m, lora=lora,
                 temperature=1.5, seed=3)
    cfg = resolve_online("nash-md", flags=flags)
    cfg.validate()
    model, scorer, reference = _build_models(cfg)
    with torch.no_grad():  # move the policy away from the reference, so the mixture matters
        for name, p in model.named_parameters():
            if p.requires_grad and (not lora or "lora_B" in name):
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 0.3)
    judge = RecordingJudge()
    maker = RolloutMaker(cfg, model=model, scorer=scorer, reference_scorer=reference, tokenizer=smol_tokenizer,
                         rewards=WeightedRewards([low_id_share(smol_tokenizer)]), cost=None,
                         pad_token_id=smol_tokenizer.pad_token_id, judge=judge)
    prompts = [r["prompt"] for r in PROMPTS[:4]]
    ids = [encode_prompt(smol_tokenizer, p) for p in prompts]
    batch = maker.make(0, prompts, ids, Controllers(kl_coef=0.0))

    (samples, opponents), = judge.calls
    assert samples == batch.texts
    # the opponents: the current policy mixed with the reference (the frozen copy; the adapter-
    # disabled policy under LoRA) at m, n a prompt, seeded apart from the samples
    params = maker._params(2_000_000, 3)
    reference_model = model if lora else reference.model
    expected = HFGenerator(model, smol_tokenizer, mixture=Mixture(reference_model, m, lambda: reference_context(model))
                           ).generate(ids, params, seeds=prompt_seeds(params, 4))
    assert opponents == expected.texts
    if m == 1.0:  # the whole mixture is the reference: the base model's own samples
        with reference_context(model):
            base = HFGenerator(model, smol_tokenizer).generate(ids, params, seeds=prompt_seeds(params, 4))
        assert opponents == base.texts
    policy_alone = HFGenerator(model, smol_tokenizer).generate(ids, params, seeds=prompt_seeds(params, 4))
    assert opponents != policy_alone.texts  # not vacuous: the mixture is not the policy
    wins = [0.5 + 0.3 * ((len(a) > len(b)) - (len(a) < len(b))) for a, b in zip(samples, opponents)]
    assert batch.rewards.tolist() == pytest.approx(wins) and len(set(wins)) > 1
    assert batch.metrics["reward/source_mean"] == pytest.approx(
        float(low_id_share(smol_tokenizer).score([None] * 12, batch.texts).mean()))
    # RLOO on the win rates (kl_coef 0 keeps the check exact)
    r = batch.rewards.reshape(4, 3)
    rloo = (r - (r.sum(-1, keepdim=True) - r) / 2).reshape(-1)
    torch.testing.assert_close((batch.advantages * batch.mask).sum(-1) / batch.mask.sum(-1), rloo, atol=1e-5, rtol=0)


def test_nash_md_settings_read_and_refused():
    cfg = resolve_online("nash-md", flags=dict(judge="annotator:lab:sentiment"))
    assert (cfg.samples_per_prompt, cfg.mixture_coef, cfg.kl_coef, cfg.kl_mode) == (2, 0.125, 0.1, "reward")
    assert cfg.spec.estimator == "rloo" and cfg.spec.mixture_opponent
    with pytest.raises(ConfigError, match="mixture_coef must be in"):
        resolve_online("nash-md", flags=dict(mixture_coef=1.5)).validate()
    with pytest.raises(ConfigError, match="mixture_coef is set but spo training does not read it"):
        resolve_online("spo", flags=dict(mixture_coef=0.5)).validate()
    with pytest.raises(ConfigError, match="pair_rule is set but nash-md training does not read it"):
        resolve_online("nash-md", flags=dict(pair_rule="random")).validate()
    # the self-play and Nash-MD policy gradients read the clipping and KL settings
    for method in ("spo", "nash-md"):
        resolve_online(method, flags=dict(kl_estimator="k3", clip_low=0.1)).validate()


def test_nash_md_raises_the_judged_win_rate_on_the_tiny_task(tmp_path, structured_policy_dir, smol_tokenizer):
    # no judge: the tiny task's reward through Bradley-Terry, so a policy with a higher expected
    # reward beats its mixture with the reference more often
    flags = dict(model=str(structured_policy_dir), output_dir=str(tmp_path / "nmd"), iterations=8, prompts_per_step=6,
                 samples_per_prompt=4, max_new_tokens=8, batch_size=24, learning_rate=1e-2, lr_schedule="constant",
                 warmup_ratio=0.0, progress=False, eval_prompts=2, seed=0, judge_temperature=0.1)
    summary = train_online(resolve_online("nash-md", flags=flags), train_rows=PROMPTS, eval_rows=PROMPTS[:2],
                           rewards=low_id_share(smol_tokenizer)).summary
    after, before = expected_reward(summary["final_dir"], smol_tokenizer), expected_reward(structured_policy_dir,
                                                                                         smol_tokenizer)
    assert after > before + 0.05
