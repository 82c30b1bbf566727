"""An evaluation cannot finish wrong: a judged stage with a failed request or an unparseable answer (real loopback
judge server) is not DONE unless within the budget, a rerun re-asks only those pairs, and the figure points and
the console summary carry n, wins, errors and unparseable. A judge cache that cannot be written stops the stage
with JudgeCacheError, never counted as failed pairs."""
import dataclasses

import openai
import pytest
from support.faults import read_only_sqlite
from support.judge_server import FaultyJudgeServer

from allroads.llm.data.synthetic import synthetic_score
from allroads.llm.figures.summary import judged_point, summary_lines
from allroads.llm.judge.judge import Judge, JudgeCacheError, JudgeConfig
from allroads.llm.pipeline import eval_stages as E
from allroads.llm.pipeline import train_stages as T
from allroads.llm.pipeline.context import Pipeline

from . import _tiny


class _Judges:
    """A judge factory over one loopback server: the first request fails (HTTP 500, no retries) and the first
    answered judge prompt is malformed, so one pair errs and one is unparseable."""

    def __init__(self, root, server):
        self.root, self.server = root, server

    def __call__(self, variant):
        client = openai.OpenAI(base_url=self.server.base_url, api_key="loopback", max_retries=0)
        return Judge(JudgeConfig(model="rule-judge", variant=variant, max_retries=0, max_workers=1,
                                 cache_path=str(self.root / f"judge-{variant}.sqlite")), client=client)


def _malformed_once():
    calls = []

    def malformed(prompt):  # the first answered judge prompt gets no valid "Preferred:" line
        calls.append(prompt)
        return len(calls) == 1

    return malformed


def _server():
    return FaultyJudgeServer(score=synthetic_score, fail_first=1, fail_status=500, malformed=_malformed_once())


def _pipe(root, server, budget=0):
    s = dataclasses.replace(_tiny.small_settings(), judge_failure_budget=budget)
    return Pipeline(root, s, _Judges(root, server), log=lambda m: None)


def test_failed_pairs_keep_the_stage_unfinished_and_a_rerun_asks_only_them(tmp_path):
    with _server() as server:
        _unfinished_then_rerun(tmp_path, server)


def _unfinished_then_rerun(tmp_path, server):
    pipe = _pipe(tmp_path, server)
    sft = T.sft(pipe)
    n_test = pipe.settings.n_test
    with pytest.raises(E.JudgeFailuresError, match=r"2 of 6 judged pairs failed \(1 errors, 1 unparseable"):
        E.reference_win_rate(pipe, sft)
    assert server.n_requests == n_test
    assert not list(tmp_path.glob("eval_winrate-*/DONE"))

    res = E.reference_win_rate(_pipe(tmp_path, server), sft)  # a rerun: only the two failed pairs are asked
    assert server.n_requests == n_test + 2
    assert (res["n_pairs"], res["errors"], res["unparseable"], res["wins"] + res["losses"]) == (6, 0, 0, 6)
    assert len(list(tmp_path.glob("eval_winrate-*/DONE"))) == 1


def test_a_read_only_judge_cache_stops_the_stage_and_is_not_counted_as_failed_pairs(tmp_path, monkeypatch):
    with FaultyJudgeServer(score=synthetic_score) as server:
        sft = T.sft(_pipe(tmp_path, server))
        _Judges(tmp_path, server)("standard").close()  # the cache file exists, with no answer yet
        read_only_sqlite(monkeypatch)
        with pytest.raises(JudgeCacheError) as info:
            E.reference_win_rate(_pipe(tmp_path, server, budget=100), sft)
        assert not isinstance(info.value, E.JudgeFailuresError) and "pairs failed" not in str(info.value)
        assert str(tmp_path / "judge-standard.sqlite") in str(info.value) and "could not write" in str(info.value)
        assert server.n_requests == 1  # stopped at the first answer it could not store
        assert not list(tmp_path.glob("eval_winrate-*/DONE"))
        monkeypatch.undo()  # negative control: the same stage with a writable cache finishes
        res = E.reference_win_rate(_pipe(tmp_path, server), sft)
    assert (res["n_pairs"], res["errors"], res["unparseable"]) == (6, 0, 0)
    assert len(list(tmp_path.glob("eval_winrate-*/DONE"))) == 1


def test_within_budget_the_counts_reach_the_point_and_the_summary(tmp_path):
    with _server() as server:
        pipe = _pipe(tmp_path, server, budget=2)
        res = E.reference_win_rate(pipe, T.sft(pipe))
    assert (res["errors"], res["unparseable"], res["n_pairs"]) == (1, 1, 6)
    point = judged_point([res])
    assert point["judged"] == {"n": 6, "wins": res["wins"], "losses": res["losses"], "errors": 1, "unparseable": 1}
    assert point["mean"] == pytest.approx(res["wins"] / 4)
    lines = summary_lines({"figure": "fig3", "metric": "win rate", "bars": {"SFT": point}})
    assert f"6 pairs: {res['wins']} wins, {res['losses']} losses, 1 errors, 1 unparseable" in lines[1]


def test_curve_summary_is_one_line_per_curve_with_summed_counts():
    def pt(wins, errors):
        return {"mean": wins / 4, "se": None, "n": 1, "values": [wins / 4],
                "judged": {"n": 4, "wins": wins, "losses": 4 - wins - errors, "errors": errors, "unparseable": 0}}

    lines = summary_lines({"figure": "fig8", "metric": "BoN", "curves": {"SFT": {"global": {"1": pt(1, 0), "4": pt(2, 1)}}}})
    assert lines[1:] == ["  SFT / global:  1: 0.250, 4: 0.500  (1 seed; 8 pairs: 3 wins, 4 losses, 1 errors, 0 unparseable)"]
