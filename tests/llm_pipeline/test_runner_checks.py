"""The runner refuses a bad run before its first stage: a config field of the wrong type, duplicate or empty seeds
(in a file or after --seeds), an unwritable --out or --root, an unknown figure. Exit code 2, one message listing every
problem (no traceback), and no stage directory under --root. Each case has a control: the same call fixed passes."""
import json
import sys
from pathlib import Path

import pytest

from allroads.llm.figures.paper import FigureConfig
from allroads.llm.figures.preflight import run_problems
from allroads.llm.figures.registry import read_config

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments" / "llm"))
import run  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[2] / "experiments" / "llm" / "configs"


def _config(tmp_path, name, **fields):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"figure": "fig7", "seeds": [0, 1], **fields}))
    return path


def _refused(tmp_path, capsys, *args, root=None, out=None):
    """Run the runner; assert exit 2 before any stage; return its stderr."""
    root = root or tmp_path / "root"
    out = out or tmp_path / "out"
    rc = run.main(["--preset", "small", "--root", str(root), "--out", str(out), *args])
    captured = capsys.readouterr()
    assert rc == 2
    assert "Traceback" not in captured.err and "[pipeline] running" not in captured.out
    assert not (root.is_dir() and any(root.iterdir()))  # no stage directory (not even the judge cache)
    return captured.err


def _passes(tmp_path, *names, seeds=None):
    """Control: the same checks find nothing (no stage runs: these are the checks only)."""
    figs, problems = run_problems(list(names), CONFIGS, seeds=seeds, out=tmp_path / "out", root=tmp_path / "root")
    assert problems == [] and len(figs) == len(names)


@pytest.mark.parametrize("field, value, expected", [
    ("seeds", "0", "field 'seeds' = '0': expected a list of int, got str"),
    ("bon_ns", [1, "2"], "field 'bon_ns' = [1, '2']: expected a list of int, element 1 is '2' (str)"),
    ("prune_kl", "30", "field 'prune_kl' = '30': expected a number, got str"),
    ("frontier_max_epochs", 2.5, "field 'frontier_max_epochs' = 2.5: expected an int, got float"),
    ("seeds", [0, True], "field 'seeds' = [0, True]: expected a list of int, element 1 is True (bool)"),
])
def test_a_field_of_the_wrong_type_names_file_field_and_type(tmp_path, capsys, field, value, expected):
    path = _config(tmp_path, "bad", **{field: value})
    err = _refused(tmp_path, capsys, "--figure", str(path))
    assert f"{path}: {expected}" in err and err.startswith("run.py: 1 problem(s), found before any stage ran")
    _passes(tmp_path, str(_config(tmp_path, "good")))


def test_duplicate_and_empty_seeds_in_files_and_in_the_override(tmp_path, capsys):
    dup, empty = _config(tmp_path, "dup", seeds=[1, 1]), _config(tmp_path, "empty", seeds=[])
    err = _refused(tmp_path, capsys, "--figure", str(dup), str(empty))
    assert f"{dup}: seeds [1, 1]: a seed twice" in err and f"{empty}: seeds: need at least one seed" in err
    err = _refused(tmp_path, capsys, "--figure", "fig3", "--seeds", "2", "2")
    assert "the seeds override [2, 2]: a seed twice" in err
    _passes(tmp_path, "fig3", seeds=(2, 3))
    _passes(tmp_path, str(_config(tmp_path, "ok", seeds=[1, 2])))


def test_an_unwritable_out_or_root_is_refused(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    err = _refused(tmp_path, capsys, "--figure", "fig3", out=blocker / "out")
    assert f"--out {blocker / 'out'}: not writable" in err
    err = _refused(tmp_path, capsys, "--figure", "fig3", root=blocker / "root")
    assert f"--root {blocker / 'root'}: not writable" in err
    _passes(tmp_path, "fig3")


def test_an_unknown_figure_lists_the_valid_ones_with_every_other_problem(tmp_path, capsys):
    bad = _config(tmp_path, "bad", seeds="0")
    err = _refused(tmp_path, capsys, "--figure", "fig99", "fig3", str(bad), "--seeds", "4", "4")
    lines = err.splitlines()
    assert lines[0] == "run.py: 3 problem(s), found before any stage ran:"
    assert lines[1] == ("* unknown figure 'fig99'; valid: fig3, fig4, fig5, fig6, fig7, fig8, fig9, fig10, fig11, "
                        "fig12, frontier (or a path to a .json config)")
    assert "field 'seeds' = '0'" in lines[2] and "the seeds override [4, 4]" in lines[3]
    _passes(tmp_path, "fig3", "frontier")


def test_under_the_tiny_preset_the_runner_says_it_replaces_the_configs_seeds(monkeypatch, tmp_path):
    parsed = run.build_parser().parse_args(["--preset", "tiny"])
    assert run.seeds_of(parsed) == ((0,), "tiny preset default [0] (configs' seeds replaced; --seeds to choose)")
    assert run.seeds_of(run.build_parser().parse_args(["--preset", "tiny", "--seeds", "3", "4"])) == ((3, 4), "--seeds")
    assert run.seeds_of(run.build_parser().parse_args(["--preset", "small"])) == (None, "figure config")
    assert "the tiny preset uses [0]" in " ".join(run.build_parser().format_help().split())


def test_read_config_names_missing_fields_bad_json_and_overrides_of_the_wrong_type(tmp_path):
    no_figure = tmp_path / "nofig.json"
    no_figure.write_text(json.dumps({"seeds": [0]}))
    assert read_config(FigureConfig, no_figure) == (
        None, [f"{no_figure}: field 'figure' is missing (expected a string)"])
    broken = tmp_path / "broken.json"
    broken.write_text('{"figure": ')
    assert "not valid JSON" in read_config(FigureConfig, broken)[1][0]
    good = _config(tmp_path, "good")
    fig, problems = read_config(FigureConfig, good, {"seeds": (0, "1")})
    assert fig is None and problems == [f"{good} (override): field 'seeds' = (0, '1'): expected a list of int, "
                                        "element 1 is '1' (str)"]
    fig, problems = read_config(FigureConfig, good, {"seeds": (5,), "notes": None})  # control
    assert problems == [] and fig.seeds == (5,) and fig.figure == "fig7" and isinstance(fig.bon_ns, tuple)
