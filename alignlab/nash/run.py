"""The Nash methods' table and the preference-bandit loop: iterate a method's step (exact or
sampled) from pi_ref and report the total-variation distance to the solver's regularized Nash
equilibrium along the way."""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import torch

from alignlab.lab.preference_bandit import PreferenceBandit
from alignlab.nash import egpo, inpo, mirror_prox, mnpo, nash_md, spo
from alignlab.nash.tabular import NashBanditConfig, NashState


@dataclass(frozen=True)
class NashMethod:
    name: str
    module: ModuleType
    """Its `exact_step`, `sampled_step` and `PAPER`."""
    eta: float
    """The mirror-descent step size this lab uses for it (capped at 1 / beta)."""
    learning_rate: float
    """The gradient step of its gradient-based steps (SPO; sampled Nash-MD, Nash-MP, EGPO)."""

    @property
    def paper(self) -> str:
        return self.module.PAPER


NASH_METHODS = {m.name: m for m in (
    NashMethod("nash_md", nash_md, 0.5, 5.0), NashMethod("nash_mp", mirror_prox, 1.0, 2.0),
    NashMethod("inpo", inpo, 0.5, 0.0), NashMethod("mnpo", mnpo, 0.5, 0.0), NashMethod("egpo", egpo, 1.0, 1.0),
    NashMethod("spo", spo, 1.0, 5.0))}


def run_nash(game: PreferenceBandit, cfg: NashBanditConfig, target: torch.Tensor | None = None) -> dict:
    """Iterate `cfg.method` for `cfg.iterations` steps. Returns the final log-probs, `tv` (to the
    equilibrium `target`, solved here if not given), `tv_start`, `exploitability` and `history`
    [(iteration, tv)]."""
    if cfg.method not in NASH_METHODS:
        raise ValueError(f"unknown Nash method {cfg.method!r}; valid: {', '.join(NASH_METHODS)}")
    if cfg.feedback not in ("probability", "label"):
        raise ValueError(f"feedback must be 'probability' or 'label', got {cfg.feedback!r}")
    if not 0 < cfg.eta * game.beta <= 1:
        raise ValueError(f"need 0 < eta * beta <= 1, got eta={cfg.eta}, beta={game.beta}")
    if target is None:
        target, _ = game.nash_equilibrium()
    module = NASH_METHODS[cfg.method].module
    step = module.sampled_step if cfg.sampled else module.exact_step
    g = torch.Generator().manual_seed(cfg.seed)
    state = NashState(game.reference_logps.clone())
    history = [(0, game.tv_distance(state.logps, target))]
    for it in range(1, cfg.iterations + 1):
        new = step(game, state, cfg, g)
        state.population.append(state.logps)
        state.logps, state.iteration = new, it
        if it % cfg.history_every == 0 or it == cfg.iterations:
            history.append((it, game.tv_distance(state.logps, target)))
    return {"method": cfg.method, "sampled": cfg.sampled, "tv": history[-1][1], "tv_start": history[0][1],
            "exploitability": game.exploitability(state.logps), "history": history, "logps": state.logps}
