"""Figures a person can read: what is compared, preset and seeds in the title; labelled axes with the better
direction; no bars hanging from zero for (negative) log-likelihoods."""
import matplotlib.pyplot as plt
import pytest
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


def _hlines(ax):
    """y of every horizontal line drawn across the axis (axhline)."""
    return [line.get_ydata()[0] for line in ax.get_lines()
            if len(set(line.get_ydata())) == 1 and list(line.get_xdata()) == [0, 1]]


def test_fig7_has_the_chance_line_and_eq2_has_none():
    import math

    fig7 = draw_figure({"figure": "fig7", "preset": "tiny", "config": {"seeds": [0]},
                        "bars": {"global": _point(-0.706), "dpo": _point(-0.666)}}, FIGURES["fig7"])
    assert _hlines(fig7.axes[0]) == [pytest.approx(-math.log(2), abs=1e-12)]
    assert any("chance" in t.get_text() for t in fig7.axes[0].get_legend().get_texts())
    eq2 = draw_figure({"figure": "fig4", "preset": "tiny", "config": {"seeds": [0]},
                       "bars": {"DPO": _point(0.7)}}, FIGURES["fig4"])
    assert _hlines(eq2.axes[0]) == []  # control: Eq. 2 has no chance level
    for f in (fig7, eq2):
        plt.close(f)


def test_the_y_label_does_not_repeat_the_title():
    for name, result in (("fig7", {"bars": {"global": _point(-0.7)}}), ("fig3", {"bars": {"SFT": _point(0.3)}}),
                         ("fig8", {"curves": {"SFT": {"global": {"1": _point(0.3)}}}})):
        fig = draw_figure({"figure": name, "preset": "tiny", "config": {"seeds": [0]}, **result}, FIGURES[name])
        title = fig._suptitle.get_text()
        quantity = FIGURES[name].quantity
        assert quantity.split(",")[0] in fig.axes[0].get_ylabel().replace("\n", " ")
        assert quantity.split(",")[0] not in title
        plt.close(fig)


def test_fig3_with_ground_truth_has_no_empty_panel():
    names = ["SFT", "DPO", "Online DPO (SFT)"]
    labels = ["known score", "win rate", "KL", "objective", "RM score"]
    result = {"figure": "fig3", "preset": "tiny", "config": {"seeds": [0]},
              "bars": {n: _point(0.3) for n in names},
              "ground_truth": {label: {n: _point(0.1) for n in names} for label in labels}}
    fig = draw_figure(result, FIGURES["fig3"])
    assert len(fig.axes) == 1 + len(labels)  # every axis is a panel with something in it
    assert all(ax.get_visible() and (ax.patches or ax.lines or ax.collections) for ax in fig.axes)
    rows = sorted({round(ax.get_position().y0, 3) for ax in fig.axes})
    assert len(rows) == 2  # 6 panels: two full rows of three, not one bar panel above an empty row
    plt.close(fig)
    lone = draw_figure({**result, "ground_truth": {label: result["ground_truth"][label] for label in labels[:4]}},
                       FIGURES["fig3"])
    assert len(lone.axes) == 5 and all(ax.get_visible() for ax in lone.axes)  # the last row centred, none hidden
    plt.close(lone)


def test_outcome_orders_best_first_and_says_what_is_below_chance():
    from allroads.llm.figures.outcome import outcome_line, ranking

    bars = {"global": _point(-0.706, 0.001), "local": _point(-0.690, 0.002), "dpo": _point(-0.666, 0.02)}
    line = outcome_line({"figure": "fig7", "bars": bars}, FIGURES["fig7"])
    assert line.startswith("Fig. 7: dpo ≥ local > global by validation log-likelihood")
    assert line.endswith("; global below chance (-0.693)")
    # ">" only when the means are more than 2 s.e. of the difference apart; one seed (no s.e.): "≥"
    assert ranking({"a": _point(1.0, 0.1), "b": _point(0.5, 0.1)}) == "a > b"
    assert ranking({"a": _point(1.0, 0.3), "b": _point(0.5, 0.3)}) == "a ≥ b"
    assert ranking({"a": _point(1.0, None), "b": _point(0.5, None)}) == "a ≥ b"
    assert ranking({"a": _point(1.0), "b": _point(0.5)}, better="lower") == "b < a"
    fair = outcome_line({"figure": "fig7", "bars": {"dpo": _point(-0.5)}}, FIGURES["fig7"])
    assert "below chance" not in fair  # control
    curves = outcome_line({"figure": "fig8", "curves": {"SFT": {"global": {"1": _point(0.3), "25": _point(0.6)},
                                                                "dpo": {"1": _point(0.3), "25": _point(0.4)}}}},
                          FIGURES["fig8"])
    assert curves.startswith("Fig. 8: samples from SFT at N = 25: global > dpo; dpo below parity")
