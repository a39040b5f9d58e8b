"""Losses as pure functions of tensors, chosen by name from one explicit table.

    from alignlab.losses import get_loss, get_spec
    loss, metrics = get_loss("ipo")(pc, pr, rc, rr, beta=0.2)

`LOSSES[name]` is a `LossSpec` saying what the loss needs; the trainer asks the spec
(`needs_reference`, `needs_lengths`, `kind`), never the name. Call shapes by kind:

- pairwise: fn(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
  reference_rejected_logps, *, beta, [chosen_lengths, rejected_lengths,] **options,
  per_example=False); the reference arguments may be None where needs_reference is False.
- binary:   fn(policy_logps, reference_logps, labels, *, beta, kl_reference, **options,
  per_example=False).
- listwise: fn(policy_logps, [reference_logps,] scores, *, beta, [lengths,] mask=None,
  **options, per_example=False); reference_logps is there exactly when needs_reference is True.

Each returns (loss, metrics); see the family modules for the equations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from alignlab.losses.binary import kto, kto_reference_point
from alignlab.losses.listwise import lipo_lambda, pro
from alignlab.losses.preference import cdpo, cpl, dpo, fdpo_alpha, fdpo_fkl, fdpo_js, hinge, ipo, simpo
from alignlab.losses.reduce import REDUCTIONS, reduce_token_loss


@dataclass(frozen=True)
class LossSpec:
    name: str
    """The registry name (`--loss NAME`)."""
    fn: Callable[..., Any]
    """The loss function; its call shape is fixed by `kind` (module docstring)."""
    kind: str
    """"pairwise", "binary" or "listwise": which batches and call shape the loss takes."""
    needs_reference: bool
    """False: the trainer may skip reference log-probs and pass None (pairwise) or omit them."""
    needs_lengths: bool
    """True: the trainer passes response token counts (chosen_lengths/rejected_lengths for
    pairwise losses, lengths for listwise ones)."""
    options: dict[str, Any]
    """The loss's own keyword options and their defaults (paper values where the paper gives
    one); beta and the data arguments are not options."""
    paper: str
    """Title and arXiv id of the paper the loss implements."""
    default_beta: float
    """The paper's beta for this loss, for a trainer whose user did not set one (beta means
    different things across losses: see each docstring)."""

    def check_options(self, options: dict[str, Any]) -> None:
        """Raise ValueError naming the valid options if `options` has a key the loss lacks."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            valid = ", ".join(sorted(self.options)) or "none"
            raise ValueError(f"loss {self.name!r} has no option(s) {', '.join(unknown)}; valid options: {valid}")

    def paper_defaults(self, given: frozenset, beta: float | None, options: dict[str, Any]) -> dict:
        """A trainer config's context defaults (`alignlab.config.resolve`): this loss's paper beta
        unless the user gave one, and its paper options under the options the user gave."""
        origin = f"{self.name} loss default"
        out = {} if "beta" in given and beta is not None else {"beta": (self.default_beta, origin)}
        if set(self.options) - set(options):
            out["loss_options"] = ({**self.options, **options}, "user + " + origin if options else origin)
        return out


_F_DPO = ("Beyond Reverse KL: Generalizing Direct Preference Optimization with Diverse Divergence Constraints"
          " (arXiv:2309.16240)")


def _spec(name, fn, kind, *, needs_reference=True, needs_lengths=False, options=None, paper, default_beta) -> LossSpec:
    return LossSpec(name, fn, kind, needs_reference, needs_lengths, dict(options or {}), paper, default_beta)


LOSSES: dict[str, LossSpec] = {
    spec.name: spec
    for spec in [
        _spec("dpo", dpo, "pairwise", default_beta=0.1,
              paper="Direct Preference Optimization: Your Language Model is Secretly a Reward Model"
                    " (arXiv:2305.18290)"),
        _spec("ipo", ipo, "pairwise", default_beta=0.1,
              paper="A General Theoretical Paradigm to Understand Learning from Human Preferences (arXiv:2310.12036)"),
        _spec("cdpo", cdpo, "pairwise", options={"label_smoothing": 0.1}, default_beta=0.1,
              paper="A note on DPO with noisy preferences & relationship to IPO (Mitchell, 2023)"),
        _spec("hinge", hinge, "pairwise", default_beta=0.1,
              paper="SLiC-HF: Sequence Likelihood Calibration with Human Feedback (arXiv:2305.10425)"),
        _spec("fdpo_js", fdpo_js, "pairwise", default_beta=0.1, paper=_F_DPO),
        _spec("fdpo_fkl", fdpo_fkl, "pairwise", default_beta=0.1, paper=_F_DPO),
        _spec("fdpo_alpha", fdpo_alpha, "pairwise", options={"alpha": 0.5}, default_beta=0.1, paper=_F_DPO),
        _spec("simpo", simpo, "pairwise", needs_reference=False, needs_lengths=True, options={"gamma": 0.5},
              default_beta=2.0,
              paper="SimPO: Simple Preference Optimization with a Reference-Free Reward (arXiv:2405.14734)"),
        _spec("cpl", cpl, "pairwise", needs_reference=False, options={"lambda_": 0.5}, default_beta=0.1,
              paper="Contrastive Preference Learning: Learning from Human Feedback without RL (arXiv:2310.13639)"),
        _spec("kto", kto, "binary", options={"desirable_weight": 1.0, "undesirable_weight": 1.0}, default_beta=0.1,
              paper="KTO: Model Alignment as Prospect Theoretic Optimization (arXiv:2402.01306)"),
        _spec("pro", pro, "listwise", needs_reference=False, needs_lengths=True,
              options={"score_temperature": True}, default_beta=0.05,
              paper="Preference Ranking Optimization for Human Alignment (arXiv:2306.17492)"),
        _spec("lipo_lambda", lipo_lambda, "listwise", default_beta=0.05,
              paper="LiPO: Listwise Preference Optimization through Learning-to-Rank (arXiv:2402.01878)"),
    ]
}


def list_losses(kind: str | None = None) -> list[str]:
    """Registered loss names in table order, optionally only those of one kind."""
    return [name for name, spec in LOSSES.items() if kind is None or spec.kind == kind]


def get_spec(name: str) -> LossSpec:
    """The LossSpec of `name`; ValueError listing the valid names if there is none."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; valid losses: {', '.join(LOSSES)}") from None


def get_loss(name: str) -> Callable[..., Any]:
    """The loss function registered as `name`; ValueError listing the valid names if none."""
    return get_spec(name).fn


__all__ = [
    "LOSSES", "LossSpec", "REDUCTIONS", "get_loss", "get_spec", "list_losses", "reduce_token_loss",
    "cdpo", "cpl", "dpo", "fdpo_alpha", "fdpo_fkl", "fdpo_js", "hinge", "ipo", "kto", "kto_reference_point",
    "lipo_lambda", "pro", "simpo",
]
