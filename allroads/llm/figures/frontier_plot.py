r"""The PNG of the frontier figure (:mod:`allroads.llm.figures.frontier`): value against KL(π‖π_sft), one colour per method.

One panel per value (the known score of T = 0.01 samples and the on-policy E_π[r*] at T = 1; the judge's win rate
where r* is unknown), then the two quantities the selection rules read (the implicit reward's validation
log-likelihood and the global RM's score) against the same KL. Every (lr, epochs) point is drawn with its s.e. in
both directions, each method's Pareto frontier as a line, SFT as a black star, the KL budgets as dotted lines; the
x axis is symmetric-log, since KL runs from 0 to tens of nats. The log-likelihood panel has its chance level, log ½
(a reward that ranks no pair), as a dashed line."""
from __future__ import annotations

import math

__all__ = ["draw_frontier"]

CHANCE = {"implicit_loglik": -math.log(2.0)}
"""Chance level of a panel's quantity (log ½ for a validation log-likelihood)."""

_LABELS = {"known_score": "known score r* of T = 0.01 samples", "on_policy_r_star": "on-policy E_π[r*] (T = 1)",
           "win_rate": "win rate vs reference (judge)",
           "implicit_loglik": "rule: validation log-lik. of β·log π/π_sft", "rm_score": "global RM score (not r*)"}


def draw_frontier(result: dict):
    """The matplotlib figure (not saved)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(result["value_keys"]) + ["implicit_loglik", "rm_score"]
    cols = 2
    rows = -(-len(panels) // cols)
    fig, grid = plt.subplots(rows, cols, figsize=(7 * cols, 5 * rows), squeeze=False)
    axes = [ax for row in grid for ax in row]
    colours = plt.get_cmap("tab10")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    for ax, key in zip(axes, panels):
        for i, (name, block) in enumerate(result["methods"].items()):
            curve = [p for p in block["curve"] if key in p]
            if not curve:
                continue
            ax.errorbar([p["kl"] for p in curve], [p[key] for p in curve], xerr=[p.get("kl_se") or 0 for p in curve],
                        yerr=[p.get(f"{key}_se") or 0 for p in curve], fmt="o", ms=3, alpha=0.5, color=colours(i),
                        capsize=2)
            front = block["pareto"].get(key) if key in result["value_keys"] else None
            if front:
                ax.plot([p["kl"] for p in front], [p[key] for p in front], "-", color=colours(i), label=name)
            else:
                ax.plot([], [], "o", color=colours(i), label=name)
        sft = result["sft"]
        if key in sft:
            ax.plot([sft["kl"]], [sft[key]], "k*", ms=12, label="SFT")
        if key in CHANCE:
            ax.axhline(CHANCE[key], color="grey", ls="--", lw=1, label=f"chance {CHANCE[key]:.3f}")
            ax.legend(fontsize=7)
        for b in result["protocol"]["kl_budgets"]:
            ax.axvline(b, color="grey", ls=":", lw=0.8)
        ax.set_xscale("symlog", linthresh=0.5)
        ax.set_xlim(left=-0.1)  # a KL estimate of a policy at SFT can come out a hair below 0
        ax.set_xlabel("KL(π‖π_sft), on-policy (nats)")
        ax.set_ylabel(f"{_LABELS.get(key, key)}\n(higher is better)" if key in result["value_keys"] else
                      _LABELS.get(key, key), fontsize=8)
        ax.set_title(_LABELS.get(key, key), fontsize=9)
    axes[0].legend(fontsize=8)
    seeds = len(result.get("config", {}).get("seeds", ()))
    fig.suptitle(f"frontier: value against KL to SFT, each method swept over lr × epochs (lines: Pareto frontier; "
                 f"dotted: KL budgets)\npreset {result.get('preset') or '?'}, {seeds} seed{'s' * (seeds != 1)} "
                 "(mean ± s.e.)", fontsize=9)
    fig.tight_layout()
    return fig
