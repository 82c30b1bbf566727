"""Figures a person can read: what is compared, preset and seeds in the title; labelled axes with the better
direction; no bars hanging from zero for (negative) log-likelihoods."""
import matplotlib.pyplot as plt
from matplotlib.patches import Rectangle

from allroads.llm.figures.paper import FIGURES
from allroads.llm.figures.plot import draw_figure


def _point(mean, se=0.01):
    return {"mean": mean, "se": se, "n": 3, "values": [mean] * 3}


def _bars(ax):
    return [p for p in ax.patches if isinstance(p, Rectangle)]


def test_fig7_log_likelihoods_are_points_not_bars_and_the_title_says_what_and_how_many():
    result = {"figure": "fig7", "preset": "paper", "config": {"seeds": [0, 1, 2]},
              "bars": {"global": _point(-0.62), "local": _point(-0.66), "dpo": _point(-0.69)}}
    fig = draw_figure(result, FIGURES["fig7"])
    ax = fig.axes[0]
    assert not _bars(ax)
    title = fig._suptitle.get_text()
    assert "global, local, dpo" in title and "preset paper" in title and "3 seeds" in title
    assert "log-likelihood" in ax.get_ylabel() and "higher is better" in ax.get_ylabel()
    assert ax.get_ylim()[1] < 0  # the axis sits around the values, not from zero
    plt.close(fig)


def test_eq2_says_lower_is_better_and_win_rates_are_bars():
    eq2 = draw_figure({"figure": "fig4", "preset": "tiny", "config": {"seeds": [0]},
                       "bars": {"DPO": _point(0.7), "Online DPO (DPO)": _point(0.6)}}, FIGURES["fig4"])
    assert "lower is better" in eq2.axes[0].get_ylabel() and "1 seed " in eq2._suptitle.get_text()
    wins = draw_figure({"figure": "fig3", "preset": "tiny", "config": {"seeds": [0]},
                        "bars": {"SFT": _point(0.3), "DPO": _point(0.5)}}, FIGURES["fig3"])
    assert len(_bars(wins.axes[0])) == 2 and "win rate" in wins.axes[0].get_ylabel()
    curves = draw_figure({"figure": "fig8", "preset": "tiny", "config": {"seeds": [0, 1]},
                          "curves": {"SFT": {"global": {"1": _point(0.3), "4": _point(0.4)}}}}, FIGURES["fig8"])
    assert curves.axes[0].get_xlabel() == "N (best of N)" and "higher is better" in curves.axes[0].get_ylabel()
    assert curves.axes[0].get_xscale() == "log" and curves.axes[0].get_title() == "samples from SFT"
    # the same curves under fig12's entry: a linear fraction axis, the panel's own name as its title
    fractions = draw_figure({"figure": "fig12", "preset": "tiny", "config": {"seeds": [0, 1]},
                             "curves": {"SFT": {"DPO": {"0.5": _point(0.3), "1.0": _point(0.4)}}}}, FIGURES["fig12"])
    assert fractions.axes[0].get_xscale() == "linear" and fractions.axes[0].get_title() == "SFT"
    assert fractions.axes[0].get_xlabel() == "fraction of the preference data"
    for f in (eq2, wins, curves, fractions):
        plt.close(f)
