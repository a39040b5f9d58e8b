"""PNG plots of lab runs. Uses matplotlib's object API with the Agg canvas (no pyplot, no
display, and the process-wide backend is left alone)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


def _figure(ncols: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5 * ncols, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=110)
    return path


def plot_training_curves(rows: Sequence[dict], path, *, title: str | None = None) -> Path:
    """Two panels against `step`: gold reward (left) and KL to the reference (right).

    rows: dicts with keys "step", "gold_reward", "kl" (e.g. the demo's probe history). A row missing
    a key is left out of that panel. Returns the path of the written PNG.
    """
    fig, (ax_reward, ax_kl) = _figure(2)
    for ax, key, label in [(ax_reward, "gold_reward", "gold reward"), (ax_kl, "kl", "KL(policy || reference), nats")]:
        points = sorted((r["step"], r[key]) for r in rows if key in r and "step" in r)
        if points:
            ax.plot(*zip(*points), marker="o", markersize=3)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_reward_vs_kl(points: Sequence[dict], path, *, rewards: Sequence[str] = ("gold_reward",),
                      sqrt_kl: bool = False, title: str | None = None) -> Path:
    """Reward against KL to the reference, one line per (series label, reward key).

    points: dicts with "kl", the reward keys named in `rewards` (e.g. "gold_reward", "proxy_reward")
    and optionally "label" (e.g. "beta=0.1") to group points into series. `sqrt_kl`: use
    sqrt(KL) as x, the axis on which Gao et al. (arXiv:2210.10760) fit over-optimization curves.
    A point may carry "<key>_ci" = (low, high); a series whose points all do is drawn with a band.
    """
    fig, (ax,) = _figure(1)
    labels = list(dict.fromkeys(p.get("label", "") for p in points))
    for label in labels:
        for key in rewards:
            series = sorted((max(p["kl"], 0.0) ** 0.5 if sqrt_kl else p["kl"], p[key], p.get(f"{key}_ci"))
                            for p in points if p.get("label", "") == label and key in p)
            if series:
                name = " ".join(s for s in (str(label), key if len(rewards) > 1 else "") if s) or None
                (line,) = ax.plot([x for x, _, _ in series], [y for _, y, _ in series], marker="o", markersize=3,
                                  label=name)
                if all(ci is not None for _, _, ci in series):  # a (low, high) interval per point: a band
                    ax.fill_between([x for x, _, _ in series], [ci[0] for _, _, ci in series],
                                    [ci[1] for _, _, ci in series], color=line.get_color(), alpha=0.12, linewidth=0)
    ax.set_xlabel("sqrt(KL), sqrt(nats)" if sqrt_kl else "KL(policy || reference), nats")
    ax.set_ylabel(rewards[0].replace("_", " ") if len(rewards) == 1 else "reward")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    if title:
        ax.set_title(title)
    return _save(fig, path)
