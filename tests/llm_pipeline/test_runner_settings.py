"""The open runner: ``--set FIELD=VALUE`` for any Settings field (typed, validated, unknown names refused with the
closest names), ``--config`` files holding settings and figure configs, the order preset < --config < flags, and
--help listing every field with its docstring. Refusals exit 2 before any stage, listing every problem."""
import sys
from pathlib import Path

import pytest

from allroads.llm.core.field_docs import field_docs
from allroads.llm.pipeline.overrides import SettingsError, apply_assignments, assignments, read_run_file
from allroads.llm.pipeline.settings import Settings, tiny_settings

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments" / "llm"))
import run  # noqa: E402


def _set(*texts):
    return apply_assignments(tiny_settings(), assignments(list(texts)))


def test_set_types_each_value_against_its_field():
    s = _set("dpo.lr=1e-6", "online.n_samples=8", "report_to=tensorboard,wandb", "n_test=12", "known_score=false",
             "size_models=[[\"1.4b\", \"tiny\"]]", "rm.adam_betas=0.9,0.95")
    assert (s.dpo.lr, s.online.n_samples, s.n_test, s.known_score) == (1e-6, 8, 12, False)
    assert s.report_to == ("tensorboard", "wandb") and s.size_models == (("1.4b", "tiny"),)
    assert s.rm.adam_betas == (0.9, 0.95) and isinstance(s.n_test, int) and isinstance(s.dpo.lr, float)
    assert s.sft == tiny_settings().sft  # control: what was not named is unchanged
    assert _set("report_to=tensorboard", "report_to=none").report_to == ()  # none: no tracker (not a null)
    assert _set("judge_id=none").judge_id == "none"  # a text field keeps the text


def test_online_dpo_none_means_dpo_and_a_set_field_starts_from_it():
    s = _set("online_dpo.lr=2e-3")
    assert s.online_dpo.lr == 2e-3 and s.online_dpo.batch_size == s.dpo.batch_size
    assert _set("online_dpo=null").online_dpo is None


@pytest.mark.parametrize("text, message", [
    ("n_test=3.5", "n_test: expected a whole number, got '3.5'"),
    ("known_score=maybe", "known_score: expected true or false, got 'maybe'"),
    ("dpo.lr=fast", "dpo.lr: expected a number, got 'fast'"),
    ("dpo.lr=nan", "dpo.lr: expected a finite number"),
    ("online.n_samples=1", "online: n_samples=1: need >= 2 samples"),
    ("dpo.batch_size=24", "dpo: per-rank batch 24"),  # micro-batches of 16 do not divide it
    ("report_to=tensorbored", "report_to: unknown tracker 'tensorbored'"),
    ("dpo.model=x", "dpo.model: every training stage takes model from Settings (model); set model instead"),
    ("rm.seed=3", "rm.seed: the figures' training seeds set it"),
    ("selection.patience=3", "selection is off under these settings"),
])
def test_set_refuses_a_mistyped_invalid_or_ineffective_value(text, message):
    with pytest.raises(SettingsError) as e:
        _set(text)
    assert message in str(e.value)


def test_unknown_names_are_refused_with_the_closest_names():
    with pytest.raises(SettingsError) as e:
        _set("n_tset=3", "dpo.betta=0.1", "zzz=1")
    lines = str(e.value).splitlines()
    assert "unknown setting 'n_tset'; did you mean n_test?" in lines
    assert any(line.startswith("unknown setting 'dpo.betta'; did you mean dpo.beta") for line in lines)
    assert "unknown setting 'zzz'; run.py --help lists every field" in lines  # nothing close: no suggestion


def test_runner_lists_every_settings_problem_and_runs_nothing(tmp_path, capsys):
    root = tmp_path / "root"
    rc = run.main(["--preset", "tiny", "--figure", "fig7", "--root", str(root), "--out", str(tmp_path / "out"),
                   "--set", "n_tset=3", "--set", "dpo.lr=fast", "--model", "tiny", "--set", "model=tiny:64x2"])
    err = capsys.readouterr().err
    assert rc == 2 and "problem(s), found before any stage ran" in err
    assert "did you mean n_test?" in err and "dpo.lr: expected a number" in err
    assert "model given twice with different values ('tiny', 'tiny:64x2')" in err
    assert not (root.is_dir() and any(root.iterdir()))


def test_config_file_then_flags_in_that_order(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("settings:\n  n_test: 10\n  dpo: {lr: 1.0e-3, beta: 0.2}\n  online: {n_samples: 4}\n"
                   "figures:\n  fig7: {seeds: [3, 4]}\n")
    args = run.build_parser().parse_args(["--preset", "small", "--config", str(cfg), "--set", "dpo.lr=5e-4",
                                          "--model", "tiny:64x2"])  # small: the figure configs' own seeds
    s, figs, problems = run._prepare(args, tmp_path / "out", tmp_path / "root")
    assert problems == []
    assert (s.n_test, s.dpo.beta, s.online.n_samples) == (10, 0.2, 4)  # from the file, over the preset's
    assert s.dpo.lr == 5e-4 and s.model == "tiny:64x2"  # the flags, over the file
    assert [f.figure for f in figs] == ["fig7"] and figs[0].seeds == (3, 4)  # the file's figures and their fields
    default = run._prepare(run.build_parser().parse_args([]), tmp_path / "out", tmp_path / "root")
    assert default[0] == tiny_settings() and default[1][0].seeds == run.TINY_SEEDS and [f.figure for f in default[1]] == ["fig3"]  # control: no file


def test_a_json_config_file_and_its_mistakes(tmp_path):
    good = tmp_path / "run.json"
    good.write_text('{"settings": {"pft_limit": 7}}')
    assert read_run_file(good) == {"settings": {"pft_limit": 7}, "figures": {}}
    bad = tmp_path / "bad.yaml"
    bad.write_text("setings: {n_test: 3}\nfigures: {fig77: {}}\n")
    with pytest.raises(SettingsError, match="unknown key 'setings'; did you mean settings"):
        read_run_file(bad)
    bad.write_text("figures: {fig77: {}, fig7: {seeds: 3}}\n")
    args = run.build_parser().parse_args(["--config", str(bad)])
    _, _, problems = run._prepare(args, tmp_path / "out", tmp_path / "root")
    assert any("unknown figure 'fig77'" in p for p in problems)
    assert any("field 'seeds' = 3: expected a list of int" in p for p in problems)


def test_help_lists_every_settings_field_with_its_docstring(capsys):
    with pytest.raises(SystemExit):
        run.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    docs = field_docs(Settings)
    for name in docs:
        assert f"{name} (" in text, name
    assert "dpo.lr (float): Peak learning rate (Table 3)." in text
    assert "online.n_samples (int): Samples per prompt from the starting policy (25)." in text
    assert "dpo.model (" not in text  # set by Settings.model: not offered
    for flag in ("--model", "--set FIELD=VALUE", "--config", "--report_to"):
        assert flag in text
