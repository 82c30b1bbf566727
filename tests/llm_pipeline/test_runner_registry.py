"""One registry entry per figure: every entry has its default config file, and a figure added as one entry (a build
function and a FigureSpec) is drawn, summarised, judged and run without touching any other table. Figure files are
written atomically, and the figure JSON says what the stage cache did for it."""
import json
import re
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from allroads.llm.figures.paper import FIGURES, FigureConfig, load_figure_config, run_figure
from allroads.llm.figures.plot import draw_figure, plot_figure
from allroads.llm.figures.preflight import figure_paths, judge_variants
from allroads.llm.figures.registry import FigureSpec
from allroads.llm.figures.summary import summary_lines
from allroads.llm.pipeline.context import Pipeline, tiny_settings

CONFIGS = Path(__file__).resolve().parents[2] / "experiments" / "llm" / "configs"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _point(mean):
    return {"mean": mean, "se": 0.01, "n": 2, "values": [mean, mean]}


def _made_up_build(pipe, fig):
    """A figure of one toy stage: runs it through the pipeline's cache, returns two bars."""
    def build(d):
        (d / "x.txt").write_text("1")

    pipe.cache.run("toy", {"figure": fig.figure}, [], build)
    return {"metric": "toy", "bars": {"A": _point(3.0), "B": _point(2.0)}}


MADE_UP = FigureSpec("figX", _made_up_build, "made-up loss of the toy figure", "lower", from_zero=True,
                     judge_variants=("two_word",))


@pytest.fixture
def made_up(monkeypatch):
    monkeypatch.setitem(FIGURES, "figX", MADE_UP)
    return MADE_UP


def test_every_figure_has_an_entry_named_by_its_key_and_a_config_file_naming_it():
    assert "frontier" in FIGURES and len(FIGURES) == 11
    for name, spec in FIGURES.items():
        assert spec.name == name and spec.better in ("higher", "lower") and callable(spec.build)
        fig = load_figure_config(CONFIGS / f"{name}.json")
        assert fig.figure == name
    # the configs directory holds no figure config the registry lacks (frontier_coarse is a frontier variant)
    for path in CONFIGS.glob("*.json"):
        assert load_figure_config(path).figure in FIGURES


def test_entries_carry_what_the_old_tables_said():
    assert [n for n, s in FIGURES.items() if s.from_zero] == ["fig3", "fig5", "fig6", "fig10", "fig11", "fig12"]
    assert [n for n, s in FIGURES.items() if s.better == "lower"] == ["fig4"]
    assert judge_variants(["fig4", "fig7", "fig11"]) == []  # no judge
    assert judge_variants(["fig3", "fig10"]) == ["standard", "two_word"]
    assert FIGURES["frontier"].draw is not None and FIGURES["fig3"].draw is None


def test_a_made_up_entry_gets_axes_judge_variants_and_a_config_name_from_its_spec_alone(made_up, tmp_path):
    result = {"figure": "figX", "preset": "tiny", "config": {"seeds": [0, 1]},
              "bars": {"A": _point(3.0), "B": _point(2.0)}}
    fig = draw_figure(result, FIGURES["figX"])
    ax = fig.axes[0]
    assert "made-up loss of the toy figure" in ax.get_ylabel() and "lower is better" in ax.get_ylabel()
    assert len(ax.patches) == 2  # from_zero: bars
    title = fig._suptitle.get_text()
    assert "figX: A, B" in title and "made-up loss" not in title  # the quantity is the y axis, not the title
    plt.close(fig)
    assert judge_variants(["figX"]) == ["two_word"]
    paths, problems = figure_paths(["figX"], tmp_path)
    assert paths == [tmp_path / "figX.json"] and problems == []
    assert summary_lines(result, FIGURES["figX"])[1].startswith("  A  3.000 ± 0.010")


def test_without_the_entry_the_made_up_figure_is_unknown_everywhere(tmp_path):
    assert "figX" not in FIGURES
    assert judge_variants(["figX"]) == []
    paths, problems = figure_paths(["figX", "fig3"], tmp_path)
    assert paths == [tmp_path / "fig3.json"]
    assert problems == [f"unknown figure 'figX'; valid: {', '.join(FIGURES)} (or a path to a .json config)"]
    with pytest.raises(ValueError, match="figure='figX'"):
        FigureConfig(figure="figX").validate()


def test_run_figure_of_a_made_up_entry_writes_json_png_and_the_stage_record(made_up, tmp_path):
    pipe = Pipeline(tmp_path / "root", tiny_settings(), None, log=lambda m: None)
    out = tmp_path / "out"
    first = run_figure(pipe, FigureConfig(figure="figX", seeds=(0,)), out, preset="tiny")
    assert [(r["kind"], r["status"]) for r in first["stages"]] == [("toy", "ran")]
    again = run_figure(pipe, FigureConfig(figure="figX", seeds=(0,)), out, preset="tiny")
    assert [(r["kind"], r["status"]) for r in again["stages"]] == [("toy", "reused")]  # only this figure's calls
    written = json.loads((out / "figX.json").read_text())
    assert written["stages"] == again["stages"] and written["bars"]["B"]["mean"] == 2.0
    assert (out / "figX.png").read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in out.iterdir()) == ["figX.json", "figX.png"]  # no temporary file left


class _HalfWrite:
    """A 'figure' whose savefig writes some bytes and then fails, like a process killed while writing."""

    def savefig(self, f, **kwargs):
        f.write(b"half a png")
        raise RuntimeError("killed while writing")


def test_a_png_write_that_fails_leaves_the_previous_png_whole(tmp_path, monkeypatch):
    png = tmp_path / "figX.png"
    result = {"figure": "figX", "preset": "tiny", "config": {"seeds": [0]}, "bars": {"A": _point(1.0)}}
    plot_figure(result, png, MADE_UP)
    before = png.read_bytes()
    assert before[:8] == PNG_MAGIC
    broken = FigureSpec("figX", _made_up_build, "q", draw=lambda r: _HalfWrite())
    monkeypatch.setattr(plt, "close", lambda fig: None)  # _HalfWrite is no matplotlib figure
    with pytest.raises(RuntimeError, match="killed while writing"):
        plot_figure(result, png, broken)
    assert png.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["figX.png"]
    # control: a write that succeeds does replace the file
    plot_figure({**result, "bars": {"A": _point(1.0), "B": _point(2.0)}}, png, MADE_UP)
    assert png.read_bytes() != before and png.read_bytes()[:8] == PNG_MAGIC


def test_a_spec_with_a_direction_other_than_higher_or_lower_is_refused():
    with pytest.raises(ValueError, match=re.escape("better='up'")):
        FigureSpec("figY", _made_up_build, "q", "up")
    assert FigureSpec("figY", _made_up_build, "q", "lower").better == "lower"  # control
