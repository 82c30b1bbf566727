r"""One PNG per TL;DR figure (:func:`allroads.llm.figures.paper.run_figure` output), readable on its own: a title saying
what is compared, the preset and the number of seeds; labelled axes with the direction that is better; bars only
for quantities measured from zero (win rates, ROUGE-L), points with error bars otherwise (log-likelihoods, Eq. 2).

What to draw comes from the figure's entry (:class:`~allroads.llm.figures.registry.FigureSpec`: quantity, better
direction, x label, from zero, log x, panel titles, or a drawing of its own), passed in by the caller."""
from __future__ import annotations

from pathlib import Path

from allroads.llm.core.atomic import save_figure
from allroads.llm.figures.registry import FigureSpec

__all__ = ["plot_figure", "draw_figure"]


def _title(result: dict, compared: list[str], quantity: str) -> str:
    seeds = len(result.get("config", {}).get("seeds", ()))
    preset = result.get("preset") or "?"
    return (f"{result['figure']}: {quantity} of {', '.join(compared)}\n"
            f"preset {preset}, {seeds} seed{'s' if seeds != 1 else ''} (mean ± s.e. over seeds)")


def _bars(ax, result: dict, spec: FigureSpec) -> list[str]:
    names = list(result["bars"])
    means = [result["bars"][k]["mean"] for k in names]
    ses = [result["bars"][k]["se"] or 0.0 for k in names]
    xs = range(len(names))
    if spec.from_zero:
        ax.bar(xs, [m if m is not None else 0.0 for m in means], yerr=ses, capsize=4, color="tab:blue")
    else:  # no bar hanging from zero: a negative log-likelihood is a position on the axis, not a length
        ax.errorbar(xs, [m if m is not None else float("nan") for m in means], yerr=ses, fmt="o", capsize=4)
        ax.margins(x=0.2)
    ax.set_xticks(list(xs), names, rotation=20, ha="right")
    return names


def _curves(axes, result: dict, spec: FigureSpec) -> list[str]:
    names: list[str] = []
    for ax, (panel, curves) in zip(axes, result["curves"].items()):
        for name, pts in curves.items():
            xs = [float(x) for x in pts]
            ax.errorbar(xs, [p["mean"] if p["mean"] is not None else float("nan") for p in pts.values()],
                        yerr=[p["se"] or 0.0 for p in pts.values()], marker="o", label=name, capsize=3)
            names.append(name) if name not in names else None
        ax.set_title(spec.panel_title.format(panel), fontsize=9)
        ax.set_xlabel(spec.xlabel)
        ax.legend()
        if spec.log_x:
            ax.set_xscale("log")
    return names


def plot_figure(result: dict, png: str | Path, spec: FigureSpec) -> Path:
    """Bars / points (mean ± s.e. over seeds; s.e. None with one seed) or curves, one PNG per figure, written
    atomically (a reader sees the old PNG or the new one, never a half-written file)."""
    import matplotlib.pyplot as plt

    fig = draw_figure(result, spec)
    try:
        save_figure(fig, png, dpi=100)
    finally:
        plt.close(fig)
    return Path(png)


def draw_figure(result: dict, spec: FigureSpec):
    """The matplotlib figure of :func:`plot_figure` (not saved): ``spec.draw(result)`` if the figure has a drawing
    of its own, else bars or curves labelled from ``spec``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if spec.draw is not None:
        return spec.draw(result)
    quantity, better = spec.quantity or result.get("metric", ""), spec.better
    truth = result.get("ground_truth") or {}
    n_main = len(result["bars"]) if "bars" in result else len(result["curves"])
    cols = max(1 if "bars" in result else n_main, len(truth))
    width = (1.4 * n_main + 2.5) if "bars" in result and not truth else 5 * cols
    fig, grid = plt.subplots(1 + bool(truth), cols, figsize=(width, 4 * (1 + bool(truth))), squeeze=False)
    if "bars" in result:
        axes, compared = [grid[0][0]], _bars(grid[0][0], result, spec)
    else:
        axes, compared = list(grid[0][:n_main]), _curves(grid[0][:n_main], result, spec)
    for ax in list(grid[0][len(axes):]):
        ax.set_visible(False)
    for ax in axes:
        ax.set_ylabel(f"{quantity}\n({better} is better)", fontsize=8)
    if truth:
        _ground_truth_row(list(grid[1]), spec, truth)
    fig.suptitle(_title(result, compared, quantity), fontsize=9)
    fig.tight_layout()
    return fig


_TRUTH_BETTER = {"KL(π‖π_sft) on-policy": "distance from SFT",
                 "global RM score of the T = 0.01 samples": "the RM's view, not r*"}


def _ground_truth_row(axes, spec: FigureSpec, truth: dict) -> None:
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
            ax.set_xlabel(spec.xlabel)
            ax.legend(fontsize=7)
            if spec.log_x:
                ax.set_xscale("log")
        better = _TRUTH_BETTER.get(label, "higher is better")
        ax.set_title(f"ground truth: {label}", fontsize=8)
        ax.set_ylabel(f"{label}\n({better})", fontsize=8)
    for ax in axes[len(truth):]:
        ax.set_visible(False)
