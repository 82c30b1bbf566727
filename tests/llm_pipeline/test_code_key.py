"""The code key means "the code this stage executes" (a tiny Fig. 7 run on a copy of the package, whose source the
cache hashes through ``code_root``):

* a comment or a docstring edited in every module of the package re-runs nothing;
* a statement edited in the ROUGE, judge, sampling, plotting or synthetic-task code re-runs no training stage (the
  training stages key their rows by content, and this statement changes no row);
* a statement edited in the training loop re-runs SFT and everything downstream of it.
"""
from __future__ import annotations

from pathlib import Path


from allroads.llm.figures.paper import FigureConfig, run_figure
from allroads.llm.pipeline.context import Pipeline

from . import _tiny

TRAINING = {"sft", "rm", "local_rm", "dpo", "online_dpo"}


def _fig7(root: Path, code_root: Path, out: Path) -> tuple[list[str], dict]:
    pipe = Pipeline(root, _tiny.small_settings(), None, log=lambda m: None, code_root=code_root)
    res = run_figure(pipe, FigureConfig(figure="fig7", seeds=(0,)), out)
    return list(pipe.executed), _numbers(res["bars"])


def _numbers(x):
    """The figure's numbers without the stage names behind them (those change whenever a stage re-runs)."""
    if isinstance(x, dict):
        return {k: _numbers(v) for k, v in x.items() if k != "stages"}
    return x


def _touch_comments_and_docstrings(pkg: Path) -> int:
    """Add a comment line and change the module docstring of every module; return how many were edited."""
    n = 0
    for f in sorted(pkg.rglob("*.py")):
        text = f.read_text()
        for quote in ('r"""', '"""'):
            if text.startswith(quote):
                text = text.replace(quote, quote + "Edited docstring. ", 1)
                break
        f.write_text(text + "\n# an edited comment\n")
        n += 1
    return n


def _edit_statement(pkg: Path, relpath: str) -> None:
    f = pkg / relpath
    f.write_text(f.read_text() + "\n_EDITED_STATEMENT = 1\n")


def test_comments_docstrings_and_non_training_code_rerun_no_training_stage(tmp_path, package_copy):
    root, out = tmp_path / "root", tmp_path / "out"
    executed, bars = _fig7(root, package_copy, out)
    assert TRAINING - {"online_dpo"} <= set(executed)
    assert _touch_comments_and_docstrings(package_copy) > 50
    assert _fig7(root, package_copy, out) == ([], bars)  # nothing at all re-runs
    _edit_statement(package_copy, "llm/data/synthetic_rows.py")  # the generator, its rows unchanged: keyed by content
    assert _fig7(root, package_copy, out) == ([], bars)
    # the synthetic-task generator: training stages key their rows by content, which this edit leaves unchanged
    for relpath in ("llm/data/rouge.py", "llm/judge/judge.py", "llm/model/sample.py", "llm/figures/plot.py",
                    "llm/data/synthetic.py"):
        _edit_statement(package_copy, relpath)
        again, bars_again = _fig7(root, package_copy, out)
        assert not TRAINING & set(again), (relpath, again)
        assert bars_again == bars
    # control: the evaluation stages do execute the sampling code, so its edit re-ran them above
    _edit_statement(package_copy, "llm/model/sample.py")
    assert set(_fig7(root, package_copy, out)[0]) == {"eval_valid"}


def test_a_training_loop_statement_reruns_sft_and_everything_downstream(tmp_path, package_copy):
    root, out = tmp_path / "root", tmp_path / "out"
    first, bars = _fig7(root, package_copy, out)
    _edit_statement(package_copy, "llm/train/loop.py")
    again, bars_again = _fig7(root, package_copy, out)
    assert sorted(again) == sorted(first)  # SFT, the three RMs and their evaluations: every stage of the figure
    assert bars_again == bars  # the statement does nothing, so the numbers are the same


def test_rows_changed_by_the_generator_rerun_exactly_the_stages_that_read_them(tmp_path, package_copy, monkeypatch):
    """The synthetic generator's comparisons change (every preference flipped), its SFT rows do not: SFT is reused,
    every stage that reads the comparisons (the three RMs, their evaluations) re-runs."""
    import allroads.llm.data.load as load

    root, out = tmp_path / "root", tmp_path / "out"
    first, _ = _fig7(root, package_copy, out)
    real = load.make_synthetic_comparisons

    def flipped(*args, **kwargs):
        return [{**r, "choice": 1 - r["choice"]} for r in real(*args, **kwargs)]

    monkeypatch.setattr(load, "make_synthetic_comparisons", flipped)
    again, _ = _fig7(root, package_copy, out)
    assert "sft" in first and "sft" not in again
    assert sorted(again) == sorted(k for k in first if k != "sft")
