r"""One PNG per TL;DR figure (:func:`allroads.llm.figures.paper.run_figure` output), readable on its own: a title saying
what is compared, the preset and the number of seeds; labelled axes with the direction that is better; bars only
for quantities measured from zero (win rates, ROUGE-L), points with error bars otherwise (log-likelihoods, Eq. 2)."""
from __future__ import annotations

from pathlib import Path

from allroads.llm.figures.frontier_plot import draw_frontier

__all__ = ["plot_figure", "draw_figure", "AXES"]

AXES = {
    "fig3": ("win rate vs reference summaries (judge)", "higher"),
    "fig4": ("Eq. 2 objective: KL(P_D‖P_π) + β·KL(P_π‖P_ref)", "lower"),
    "fig5": ("win rate vs reference summaries (judge)", "higher"),
    "fig6": ("win rate vs reference summaries (judge)", "higher"),
    "fig7": ("validation log-likelihood, mean log σ(r_w − r_l)", "higher"),
    "fig8": ("best-of-N win rate vs reference (judge)", "higher"),
    "fig9": ("best-of-N win rate vs reference (judge)", "higher"),
    "fig10": ("two-word win rate vs judge-written reference", "higher"),
    "fig11": ("ROUGE-L F1 vs preferred completion", "higher"),
    "fig12": ("win rate vs reference summaries (judge)", "higher"),
}
"""Per figure: the y-axis quantity and which direction is better."""

_XLABELS = {"fig8": "N (best of N)", "fig9": "N (best of N)", "fig12": "fraction of the preference data"}
_FROM_ZERO = {"fig3", "fig5", "fig6", "fig10", "fig11", "fig12"}
"""Figures whose quantity is measured from zero (a bar's length means something)."""


def _title(result: dict, compared: list[str]) -> str:
    seeds = len(result.get("config", {}).get("seeds", ()))
    preset = result.get("preset") or "?"
    quantity = AXES.get(result["figure"], (result.get("metric", ""), ""))[0]
    return (f"{result['figure']}: {quantity} of {', '.join(compared)}\n"
            f"preset {preset}, {seeds} seed{'s' if seeds != 1 else ''} (mean ± s.e. over seeds)")


def _bars(ax, result: dict) -> list[str]:
    names = list(result["bars"])
    means = [result["bars"][k]["mean"] for k in names]
    ses = [result["bars"][k]["se"] or 0.0 for k in names]
    xs = range(len(names))
    if result["figure"] in _FROM_ZERO:
        ax.bar(xs, [m if m is not None else 0.0 for m in means], yerr=ses, capsize=4, color="tab:blue")
    else:  # no bar hanging from zero: a negative log-likelihood is a position on the axis, not a length
        ax.errorbar(xs, [m if m is not None else float("nan") for m in means], yerr=ses, fmt="o", capsize=4)
        ax.margins(x=0.2)
    ax.set_xticks(list(xs), names, rotation=20, ha="right")
    return names


def _curves(axes, result: dict) -> list[str]:
    names: list[str] = []
    for ax, (panel, curves) in zip(axes, result["curves"].items()):
        for name, pts in curves.items():
            xs = [float(x) for x in pts]
            ax.errorbar(xs, [p["mean"] if p["mean"] is not None else float("nan") for p in pts.values()],
                        yerr=[p["se"] or 0.0 for p in pts.values()], marker="o", label=name, capsize=3)
            names.append(name) if name not in names else None
        ax.set_title(f"samples from {panel}" if result["figure"] in ("fig8", "fig9") else panel, fontsize=9)
        ax.set_xlabel(_XLABELS.get(result["figure"], ""))
        ax.legend()
        if result["figure"] in ("fig8", "fig9"):
            ax.set_xscale("log")
    return names


def plot_figure(result: dict, png: str | Path) -> Path:
    """Bars / points (mean ± s.e. over seeds; s.e. None with one seed) or curves, one PNG per figure."""
    import matplotlib.pyplot as plt

    fig = draw_figure(result)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return Path(png)


def draw_figure(result: dict):
    """The matplotlib figure of :func:`plot_figure` (not saved)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if result["figure"] == "frontier":
        return draw_frontier(result)
    quantity, better = AXES.get(result["figure"], (result.get("metric", ""), "higher"))
    truth = result.get("ground_truth") or {}
    n_main = len(result["bars"]) if "bars" in result else len(result["curves"])
    cols = max(1 if "bars" in result else n_main, len(truth))
    width = (1.4 * n_main + 2.5) if "bars" in result and not truth else 5 * cols
    fig, grid = plt.subplots(1 + bool(truth), cols, figsize=(width, 4 * (1 + bool(truth))), squeeze=False)
    if "bars" in result:
        axes, compared = [grid[0][0]], _bars(grid[0][0], result)
    else:
        axes, compared = list(grid[0][:n_main]), _curves(grid[0][:n_main], result)
    for ax in list(grid[0][len(axes):]):
        ax.set_visible(False)
    for ax in axes:
        ax.set_ylabel(f"{quantity}\n({better} is better)", fontsize=8)
    if truth:
        _ground_truth_row(list(grid[1]), result["figure"], truth)
    fig.suptitle(_title(result, compared), fontsize=9)
    fig.tight_layout()
    return fig


_TRUTH_BETTER = {"KL(π‖π_sft) on-policy": "distance from SFT",
                 "global RM score of the T = 0.01 samples": "the RM's view, not r*"}


def _ground_truth_row(axes, figure: str, truth: dict) -> None:
    """The known-score panels of a synthetic preset (:mod:`allroads.llm.evaluation.ground_truth`), one per quantity: points
    with error bars per policy, or curves."""
    for ax, (label, block) in zip(axes, truth.items()):
        first = next(iter(block.values()), {})
        if "mean" in first:  # {policy: point}
            names = list(block)
            ax.errorbar(range(len(names)), [block[k]["mean"] for k in names], yerr=[block[k]["se"] or 0.0 for k in names],
                        fmt="o", capsize=4, color="tab:green")
            ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
            ax.margins(x=0.2)
        else:  # {curve: {x: point}}
            for name, pts in block.items():
                ax.errorbar([float(x) for x in pts], [p["mean"] for p in pts.values()],
                            yerr=[p["se"] or 0.0 for p in pts.values()], marker="o", capsize=3, label=name)
            ax.set_xlabel(_XLABELS.get(figure, ""))
            ax.legend(fontsize=7)
            if figure in ("fig8", "fig9"):
                ax.set_xscale("log")
        better = _TRUTH_BETTER.get(label, "higher is better")
        ax.set_title(f"ground truth: {label}", fontsize=8)
        ax.set_ylabel(f"{label}\n({better})", fontsize=8)
    for ax in axes[len(truth):]:
        ax.set_visible(False)
