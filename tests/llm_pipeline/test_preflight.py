"""Inputs are validated before the first stage trains: a malformed preference file, a missing model, a missing API
key are all reported at once, and no stage runs."""
import json
import sys
from pathlib import Path

import pytest

from allroads.llm.data.synthetic_rows import make_synthetic_comparisons, make_synthetic_sft
from allroads.llm.figures.paper import FigureConfig
from allroads.llm.figures.preflight import PreflightError, check_inputs
from allroads.llm.judge.factory import JudgeFactory
from allroads.llm.pipeline.context import Pipeline
from allroads.llm.pipeline.settings import paper_settings

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments" / "llm"))


def _write(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def data(tmp_path):
    sft, pft = tmp_path / "sft", tmp_path / "pft"
    _write(sft / "train.jsonl", make_synthetic_sft(64, 0))
    _write(sft / "test.jsonl", make_synthetic_sft(16, 1))
    bad = make_synthetic_comparisons(40, 0)
    bad[30]["choice"] = 2
    _write(pft / "train.jsonl", bad)
    _write(pft / "validation.jsonl", make_synthetic_comparisons(16, 1))
    return sft, pft


def test_runner_refuses_a_malformed_preference_file_before_sft_trains(tmp_path, data, capsys):
    import run

    sft, pft = data
    root = tmp_path / "root"
    rc = run.main(["--preset", "tiny", "--figure", "fig7", "--root", str(root), "--out", str(tmp_path / "o"),
                   "--sft-data", str(sft), "--pft-data", str(pft)])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"{pft / 'train.jsonl'}:31" in err and "'choice' must be 0 or 1" in err
    assert not [p for p in root.iterdir() if p.name.startswith("sft")]  # nothing trained


def test_every_problem_is_listed_at_once(tmp_path, data, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    sft, pft = data
    s = paper_settings(model=str(tmp_path / "no-such-model"), tokenizer="tiny", sft_data=str(sft), pft_data=str(pft),
                       sft_limit=8, n_test=4, valid_limit=8)
    judges = JudgeFactory("paper", tmp_path / "root")
    pipe = Pipeline(tmp_path / "root", s, judges, log=lambda m: None)
    with pytest.raises(PreflightError) as e:
        check_inputs(pipe, [FigureConfig(figure="fig3")])
    msg = str(e.value)
    assert msg.startswith("3 input problem(s)")
    assert "no-such-model" in msg and "train.jsonl:31" in msg and "OPENAI_API_KEY" in msg
    # the same inputs for a figure without a judge: the judge is not needed, so not a problem
    with pytest.raises(PreflightError, match=r"^2 input problem"):
        check_inputs(pipe, [FigureConfig(figure="fig7")])
