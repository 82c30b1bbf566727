r"""One PNG per TL;DR figure (:func:`allroads.llm.figures.paper.run_figure` output), readable on its own: a title saying
what is compared, the preset and the number of seeds; labelled axes with the direction that is better; bars only
for quantities measured from zero (win rates, ROUGE-L), points with error bars otherwise (log-likelihoods, Eq. 2).

What to draw comes from the figure's entry (:class:`~allroads.llm.figures.registry.FigureSpec`: quantity, better
direction, x label, from zero, log x, panel titles, the chance level, or a drawing of its own), passed in by the
caller. The title names what is compared (not the quantity: that is the y axis), the chance level is a dashed line,
and the panels (the figure's own, then a synthetic preset's ground-truth panels) fill a grid of at most three columns
whose last row is centred: no empty panel."""
from __future__ import annotations

import textwrap
from pathlib import Path

from allroads.llm.core.atomic import save_figure
from allroads.llm.figures.registry import FigureSpec

__all__ = ["plot_figure", "draw_figure"]


def _title(result: dict, compared: list[str], width: int = 100) -> str:
    """What is compared, the preset and seeds, and the outcome line wrapped at ``width`` characters."""
    seeds = len(result.get("config", {}).get("seeds", ()))
    preset = result.get("preset") or "?"
    text = result.get("outcome", "").replace(" − ", "\u00a0−\u00a0")  # keep σ(r_w − r_l) on one line
    outcome = "\n" + "\n".join(textwrap.wrap(text, width)) if text else ""
    return (f"{result['figure']}: {', '.join(compared)}\n"
            f"preset {preset}, {seeds} seed{'s' if seeds != 1 else ''} (mean ± s.e. over seeds){outcome}")


def _axis_label(quantity: str, width: int = 42) -> str:
    """``quantity`` on lines of at most about ``width`` characters, broken after its commas."""
    return quantity.replace(", ", ",\n") if len(quantity) > width else quantity


def _chance_line(ax, spec: FigureSpec) -> None:
    """The chance level of ``spec`` as a dashed horizontal line with a legend entry (nothing when it has none)."""
    if spec.chance is not None:
        ax.axhline(spec.chance, color="grey", ls="--", lw=1, label=f"{spec.chance_label} {spec.chance:.3f}")
        ax.legend(fontsize=7)


def _grid(n: int, width: float, height: float = 4.0):
    """A figure with ``n`` axes in rows of at most three, the last row centred (each axis spans two of twice as
    many grid columns), so no axis is left empty; ``width``: inches per column."""
    import matplotlib.pyplot as plt

    cols = min(n, 3)
    rows = -(-n // cols)
    fig = plt.figure(figsize=(width * cols, height * rows))
    grid = fig.add_gridspec(rows, 2 * cols)
    axes = []
    for i in range(n):
        row, col = divmod(i, cols)
        in_row = min(cols, n - row * cols)
        start = 2 * col + (cols - in_row)
        axes.append(fig.add_subplot(grid[row, start:start + 2]))
    return fig, axes


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
    of its own, else bars or curves labelled from ``spec``, then the ground-truth panels of a synthetic preset."""
    import matplotlib

    matplotlib.use("Agg")

    if spec.draw is not None:
        return spec.draw(result)
    quantity, better = spec.quantity or result.get("metric", ""), spec.better
    truth = result.get("ground_truth") or {}
    n_main = 1 if "bars" in result else len(result["curves"])
    alone = "bars" in result and not truth and n_main == 1
    fig, axes = _grid(n_main + len(truth), (1.4 * len(result["bars"]) + 2.5) if alone else 5.0)
    main = axes[:n_main]
    compared = _bars(main[0], result, spec) if "bars" in result else _curves(main, result, spec)
    for ax in main:
        ax.set_ylabel(_axis_label(quantity) + f"\n({better} is better)", fontsize=8)
        _chance_line(ax, spec)
    if truth:
        _ground_truth_row(axes[n_main:], spec, truth)
    fig.suptitle(_title(result, compared, int(fig.get_size_inches()[0] * 11)), fontsize=9)
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
        ax.set_title("ground truth (known score r*)", fontsize=8)
        ax.set_ylabel(f"{label}\n({better})", fontsize=8)
