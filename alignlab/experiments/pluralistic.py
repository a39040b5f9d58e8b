"""`alignlab lab pluralistic`: one Bradley-Terry reward model vs MaxMin-RLHF, VPL and P-RLHF on a
population of simulated users whose groups want conflicting things (alignlab.lab.population).

Per seed:
1. train / eval topics of the sentiment task (disjoint), a fixed pool of `candidates` responses
   per prompt (population.candidate_pool), a uniform reference policy on each pool;
2. every user labels `pairs_per_user` pairs of train prompts and `heldout_pairs_per_user` pairs of
   eval prompts, by its group's gold reward (Bradley-Terry, `annotator_temperature`, `label_flip`);
3. on the training pairs: a single linear Bradley-Terry reward, the MaxMin EM mixture, VPL and
   P-RLHF (alignlab.pluralistic), all heads on fixed response features (`features`: the task's own,
   pairs.task_features, or a frozen sentence encoder's embeddings, pairs.EncoderFeatures);
4. policies on the eval pools, exact (pluralistic.policy): the single reward's KL-regularized
   policy, MaxMin's max-min policy over the mixture's groups, and P-RLHF's and VPL's per-user
   KL-regularized policies; each group's gold reward of each policy (per-user policies: averaged
   over the group's users, each scored by its own group);
5. per-user accuracy on the held-out pairs of each reward model (MaxMin: the user's inferred
   group's reward; VPL: the user's z inferred from its training pairs; P-RLHF: its embedding) and
   of the user's own gold reward (the ceiling), averaged per true group.

Means over seeds with 95% Student-t intervals. Writes pluralistic.json and pluralistic.png.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from dataclasses import asdict, dataclass

import torch
from rich.console import Console
from rich.table import Table

from alignlab.config import field
from alignlab.experiments.common import lab_output
from alignlab.lab.population import Population, candidate_pool, parse_groups, topic_prompts
from alignlab.pluralistic.maxmin import fit_mixture, maxmin_policy
from alignlab.pluralistic.pairs import EncoderFeatures, fit_linear_bt, pair_data, preference_accuracy, task_features
from alignlab.pluralistic.policy import center_rewards, expected_rewards, kl_policy, kl_to_reference
from alignlab.pluralistic.prlhf import train_prlhf
from alignlab.pluralistic.vpl import infer_latents, train_vpl

POLICIES = ("reference", "single", "maxmin", "prlhf", "vpl")
MODELS = ("single", "maxmin", "vpl", "prlhf", "gold")
_COLORS = {"reference": "0.6", "single": "tab:blue", "maxmin": "tab:green", "vpl": "tab:purple", "prlhf": "tab:red",
           "gold": "0.2"}


@dataclass
class PluralisticConfig:
    groups: str = field("effusive=16,concise=4", "the population: GROUP=USERS,... with GROUP one of effusive (prefers effusive positive sentiment), concise (prefers short neutral answers)")
    annotator_temperature: float = field(0.2, "Bradley-Terry temperature of every user (gold-reward units)")
    label_flip: float = field(0.05, "probability that a user's choice is flipped")
    train_prompts: int = field(120, "sentiment-task topics whose pairs the reward models train on")
    eval_prompts: int = field(60, "other topics: held-out pairs and the policies' evaluation pools")
    candidates: int = field(12, "responses in each prompt's fixed candidate pool (at most 33)")
    pairs_per_user: int = field(40, "training pairs labelled by each user")
    heldout_pairs_per_user: int = field(40, "held-out pairs labelled by each user (eval topics)")
    beta: float = field(1.0, "KL strength of every policy, in units of the learned (Bradley-Terry) rewards")
    mixture_groups: int = field(0, "groups of the MaxMin mixture (0: as many as the population has)")
    features: str = field("task", "response features the reward models are heads on: task (VADER sentiment, its magnitude, length, '!' count: fast) or a sentence encoder, e.g. embedded-encoder (frozen MiniLM-L6 embeddings, 384-d) or a local folder")
    vpl_steps: int = field(300, "VPL training steps (full batch)")
    prlhf_steps: int = field(300, "P-RLHF training steps (full batch)")
    seeds: int = field(5, "repetitions with seeds seed..seed+K-1 (topics, users' labels, models)")
    seed: int = field(0, "first seed")
    output: str = field("", "output folder (default runs/pluralistic-<time>)")


def _check(cfg: PluralisticConfig):
    groups = parse_groups(cfg.groups, cfg.annotator_temperature, cfg.label_flip)
    if not cfg.annotator_temperature > 0 or not 0 <= cfg.label_flip <= 1:
        raise ValueError("annotator_temperature must be > 0 and label_flip in [0, 1]")
    for name in ("train_prompts", "eval_prompts", "pairs_per_user", "heldout_pairs_per_user", "seeds"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if not 2 <= cfg.candidates <= 33 or not cfg.beta > 0 or cfg.mixture_groups < 0:
        raise ValueError("candidates must be in [2, 33], beta > 0 and mixture_groups >= 0")
    if cfg.mixture_groups > sum(g.users for g in groups):
        raise ValueError(f"mixture_groups ({cfg.mixture_groups}) cannot exceed the users ({sum(g.users for g in groups)})")
    return groups


def _per_group(values: torch.Tensor, group_of: torch.Tensor, n_groups: int) -> list[float]:
    return [float(values[group_of == g].double().mean()) for g in range(n_groups)]


def run_seed(cfg: PluralisticConfig, groups, seed: int, features=task_features) -> dict:
    """One repetition (module docstring); per-group lists indexed like `groups`. features:
    texts -> (N, D) response features."""
    pop = Population(groups, seed=seed)
    G, truth = len(groups), torch.tensor(pop.group_of)
    train_topics, eval_topics = topic_prompts(cfg.train_prompts, cfg.eval_prompts, seed=seed)
    train_pools = [candidate_pool(t, cfg.candidates, seed) for t in train_topics]
    eval_pools = [candidate_pool(t, cfg.candidates, seed) for t in eval_topics]
    train = pair_data(pop.label(train_topics, train_pools, cfg.pairs_per_user, seed=seed), pop.users, features)
    held_records = pop.label(eval_topics, eval_pools, cfg.heldout_pairs_per_user, seed=seed + 10_000)
    held = pair_data(held_records, pop.users, features)

    w = fit_linear_bt(train.chosen, train.rejected)
    mixture = fit_mixture(train, cfg.mixture_groups or G, seed=seed)
    vpl = train_vpl(train, steps=cfg.vpl_steps, seed=seed)
    z = infer_latents(vpl, train)  # (U, L)
    prlhf = train_prlhf(train, steps=cfg.prlhf_steps, seed=seed)

    # Policies on the eval pools.
    P, K = len(eval_pools), cfg.candidates
    texts = [t for pool in eval_pools for t in pool]
    phi = features(texts).view(P, K, -1)  # (P, K, D)
    gold = pop.gold(texts).view(G, P, K)  # (G, P, K)
    ref = torch.full((P, K), -math.log(K))
    with torch.no_grad():
        single_pi = kl_policy(ref, center_rewards(phi @ w, ref), cfg.beta)
        mm = maxmin_policy(ref, center_rewards(mixture.rewards(phi), ref), cfg.beta)
        users = torch.arange(len(pop.users))
        prlhf_r = torch.stack([prlhf.reward(phi, torch.full((P, K), u)) for u in users.tolist()])  # (U, P, K)
        vpl_r = torch.stack([vpl.reward(phi, z[u]) for u in users.tolist()])  # (U, P, K)
    user_gold = gold[truth]  # (U, P, K) each user's own group's gold
    per_user = {name: kl_policy(ref, center_rewards(r, ref), cfg.beta) for name, r in (("prlhf", prlhf_r), ("vpl", vpl_r))}
    policy_gold = {"reference": expected_rewards(ref, gold).tolist(), "single": expected_rewards(single_pi, gold).tolist(),
                   "maxmin": expected_rewards(mm.logps, gold).tolist()}
    policy_kl = {"reference": 0.0, "single": kl_to_reference(single_pi, ref), "maxmin": kl_to_reference(mm.logps, ref)}
    for name, logps in per_user.items():  # (U, P, K)
        values = (logps.exp() * user_gold).sum(-1).mean(-1)  # (U,)
        policy_gold[name] = _per_group(values, truth, G)
        policy_kl[name] = float((logps.exp() * (logps - ref)).sum(-1).mean())

    # Held-out per-user accuracy.
    group_of_user = mixture.user_group()
    hu = held.user
    with torch.no_grad():
        scores = {
            "single": (held.chosen @ w, held.rejected @ w),
            "maxmin": tuple(mixture.rewards(x).T.gather(1, group_of_user[hu][:, None]).squeeze(1)
                            for x in (held.chosen, held.rejected)),
            "vpl": (vpl.reward(held.chosen, z[hu]), vpl.reward(held.rejected, z[hu])),
            "prlhf": (prlhf.reward(held.chosen, hu), prlhf.reward(held.rejected, hu)),
        }
    gold_c = pop.gold([r.chosen for r in held_records]).T.gather(1, truth[hu][:, None]).squeeze(1)
    gold_r = pop.gold([r.rejected for r in held_records]).T.gather(1, truth[hu][:, None]).squeeze(1)
    scores["gold"] = (gold_c, gold_r)
    accuracy = {name: _per_group(preference_accuracy(c, r, hu, held.n_users), truth, G) for name, (c, r) in scores.items()}
    recovery = group_recovery(group_of_user, truth, cfg.mixture_groups or G, G)
    return {"seed": seed, "policy_gold": policy_gold, "policy_kl": policy_kl, "accuracy": accuracy,
            "maxmin_group_weights": mm.group_weights.tolist(), "maxmin_duality_gap": mm.gap,
            "mixture_iterations": mixture.iterations, "group_recovery": recovery}


def group_recovery(found: torch.Tensor, truth: torch.Tensor, n_found: int, n_true: int) -> float:
    """Share of users whose mixture group matches their true group, up to relabelling: the best
    permutation when the counts are equal, else each found group mapped to its majority true group."""
    if n_found == n_true:
        return max(float((torch.tensor(perm)[found] == truth).float().mean())
                   for perm in itertools.permutations(range(n_true)))
    hits = sum(int(torch.bincount(truth[found == j], minlength=n_true).max()) for j in range(n_found) if (found == j).any())
    return hits / len(truth)


def _interval(values: list[float]) -> dict:
    """Mean and 95% Student-t interval over seeds (the interval is the mean alone for one seed)."""
    from scipy.stats import t

    x = torch.tensor(values, dtype=torch.float64)
    mean = float(x.mean())
    if len(x) < 2:
        return {"mean": mean, "ci": [mean, mean], "values": values}
    half = float(t.ppf(0.975, len(x) - 1) * x.std() / math.sqrt(len(x)))
    return {"mean": mean, "ci": [mean - half, mean + half], "values": values}


def run_pluralistic(cfg: PluralisticConfig) -> dict:
    groups = _check(cfg)
    t0 = time.perf_counter()
    features = task_features if cfg.features == "task" else EncoderFeatures(cfg.features)
    out = lab_output(cfg, "pluralistic")
    runs = []
    for k in range(cfg.seeds):
        runs.append(run_seed(cfg, groups, cfg.seed + k, features))
        print(f"seed {cfg.seed + k} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    names = [g.name for g in groups]
    summary = {
        "policy_gold": {p: {n: _interval([r["policy_gold"][p][g] for r in runs]) for g, n in enumerate(names)} for p in POLICIES},
        "policy_kl": {p: _interval([r["policy_kl"][p] for r in runs]) for p in POLICIES},
        "accuracy": {m: {n: _interval([r["accuracy"][m][g] for r in runs]) for g, n in enumerate(names)} for m in MODELS},
        "group_recovery": _interval([r["group_recovery"] for r in runs]),
    }
    result = {"groups": [asdict(g) for g in groups], "summary": summary, "runs": runs,
              "seconds": time.perf_counter() - t0, "config": asdict(cfg)}
    (out / "pluralistic.json").write_text(json.dumps(result, indent=1))
    plot_pluralistic(summary, names, out / "pluralistic.png")
    _print(summary, names, out)
    return result


def plot_pluralistic(summary: dict, names: list[str], path) -> None:
    """Two panels of grouped bars with 95% intervals: each policy's gold reward per group (left),
    each reward model's held-out accuracy per group (right)."""
    from alignlab.eval.plots import _figure, _save

    fig, (left, right) = _figure(2)
    for ax, key, rows, label in [(left, "policy_gold", POLICIES, "gold reward of the policy"),
                                 (right, "accuracy", MODELS, "held-out preference accuracy")]:
        width = 0.8 / len(rows)
        for j, row in enumerate(rows):
            means = [summary[key][row][n]["mean"] for n in names]
            err = [[m - summary[key][row][n]["ci"][0] for m, n in zip(means, names)],
                   [summary[key][row][n]["ci"][1] - m for m, n in zip(means, names)]]
            ax.bar([g + (j - (len(rows) - 1) / 2) * width for g in range(len(names))], means, width, yerr=err,
                   capsize=2, label=row, color=_COLORS[row])
        ax.set_xticks(range(len(names)), [f"{n} users" for n in names])
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7, loc="lower left")
    right.set_ylim(0.3, 1.0)
    fig.suptitle("pluralistic lab: one Bradley-Terry reward vs MaxMin-RLHF, VPL, P-RLHF")
    _save(fig, path)


def _fmt(s: dict) -> str:
    return f"{s['mean']:.3f} [{s['ci'][0]:.3f}, {s['ci'][1]:.3f}]"


def _print(summary: dict, names: list[str], out) -> None:
    console = Console()
    table = Table(title="Gold reward of each policy, per group (mean [95% CI] over seeds)")
    for col in ("policy", *names, "KL to reference"):
        table.add_column(col, justify="right")
    for p in POLICIES:
        table.add_row(p, *[_fmt(summary["policy_gold"][p][n]) for n in names], _fmt(summary["policy_kl"][p]))
    console.print(table)
    table = Table(title="Held-out preference accuracy per user, averaged per group")
    for col in ("reward model", *names):
        table.add_column(col, justify="right")
    for m in MODELS:
        table.add_row(m, *[_fmt(summary["accuracy"][m][n]) for n in names])
    console.print(table)
    console.print(f"MaxMin mixture: users assigned to their true group {_fmt(summary['group_recovery'])}")
    console.print(f"written: {out}/pluralistic.json, {out}/pluralistic.png")
