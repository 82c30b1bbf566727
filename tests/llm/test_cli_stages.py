"""Every stage on the command line: sample → score → online-pairs → online-dpo → evaluate on the tiny model, each
step reading the directory the previous one wrote; the pairs equal build_online_pairs' for the same samples; bad
input named file:line before any work; judge against the loopback rule server."""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from allroads.llm.__main__ import main
from allroads.llm.cli.evaluation import EvaluateArgs
from allroads.llm.cli.judging import JudgeArgs
from allroads.llm.cli.online import PairsArgs, SampleArgs, ScoreArgs
from allroads.llm.core.config import OnlineDataConfig
from allroads.llm.core.field_docs import field_docs
from allroads.llm.data import load as L
from allroads.llm.data.tldr_format import format_prompt
from allroads.llm.evaluation import judged as J
from allroads.llm.judge.rule_server import RuleJudgeServer
from allroads.llm.model import models as M
from allroads.llm.model import tokenizer as TK
from allroads.llm.model.backend import GlobalRM, LLMBackend
from allroads.llm.model.sample import SamplingConfig
from allroads.llm.pipeline.context import Pipeline
from allroads.llm.pipeline.settings import tiny_settings
from allroads.llm.train import stage_files as F
from allroads.llm.train.online_data import (
    build_online_pairs,
    save_scored,
    to_tokenized_pairs,
)
from allroads.online import Scored
from tests.support.judge_server import FaultyJudgeServer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny SFT policy and a tiny global RM, trained 2 steps each by the training commands."""
    d = tmp_path_factory.mktemp("models")
    common = ["--preset", "tiny", "--max_steps", "2", "--progress", "false"]
    assert main(["sft", *common, "--data", "synthetic:64", "--output_dir", str(d / "sft")]) == 0
    assert main(["rm", *common, "--data", "synthetic:32", "--model", str(d / "sft" / "model"),
                 "--output_dir", str(d / "rm")]) == 0
    return d / "sft", d / "rm"


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_chain_sample_score_pairs_online_dpo_evaluate(models, tmp_path):
    sft, rm = models
    s, sc, p, dpo, ev = (tmp_path / x for x in ("s", "sc", "p", "dpo", "ev"))
    assert main(["sample", "--preset", "tiny", "--model", str(sft), "--data", "synthetic:16", "--n", "4", "--seed",
                 "3", "--output_dir", str(s)]) == 0
    rows = _lines(s / F.SCORED)
    assert len(rows) == 16 and all(len(r["completions"]) == 4 for r in rows)
    assert all("score" not in c for r in rows for c in r["completions"])  # unscored: no score key
    assert json.loads((s / F.SAMPLING).read_text()) == {"sampling_temperature": 0.7}
    assert main(["score", "--scored", str(s), "--rm", str(rm), "--output_dir", str(sc)]) == 0
    scored = F.read_scored(sc)
    assert scored.scores.shape == (16, 4) and torch.isfinite(scored.scores).all()
    assert main(["online-pairs", "--scored", str(sc), "--tokenizer", str(sft), "--output_dir", str(p)]) == 0
    report = json.loads((p / F.REPORT).read_text())
    assert {"n_prompts", "n_pairs", "n_dropped_ties", "n_rows", "shortfall", "label", "mean_distinct",
            "prefix_pair_share", "tied_share"} <= set(report) and report["n_rows"] == 16
    assert (p / F.SAMPLING).read_text() == (s / F.SAMPLING).read_text()
    # the same pairs by the runner's own path (build_online_pairs, in process), and a seed that differs (control)
    ours = [dataclasses.asdict(x) for x in F.read_pair_file(p)]
    assert ours == _runner_pairs(sft, rm, seed=3) and ours != _runner_pairs(sft, rm, seed=4)
    assert main(["online-dpo", "--preset", "tiny", "--start", str(sft), "--pairs", str(p), "--batch_size", "4",
                 "--micro_batch_size", "4", "--max_steps", "2", "--progress", "false", "--output_dir", str(dpo)]) == 0
    assert json.loads((dpo / "report.json").read_text())["steps"] == 2
    assert json.loads((dpo / "config.json").read_text())["ref_temperature"] == 0.7  # π_ref at the pairs' T
    start, trained = M.load_policy(str(sft / "model")), M.load_policy(str(dpo / "model"))
    assert any(not torch.equal(a, b) for a, b in zip(start.parameters(), trained.parameters()))
    assert main(["evaluate", "--preset", "tiny", "--metric", "known", "--model", str(dpo), "--sft", str(sft),
                 "--n_test", "8", "--output_dir", str(ev)]) == 0
    result = json.loads((ev / "result.json").read_text())
    assert result["metric"] == "known" and len(result["samples"]) == 8 and result["n_kl_samples"] == 4
    assert all(torch.isfinite(torch.tensor(result[k])) for k in ("known_score", "kl", "objective"))


def _runner_pairs(sft: Path, rm: Path, seed: int) -> list[dict]:
    """The pairs build_online_pairs makes (no tie redraws) from the same prompts, model, RM and sampling settings."""
    s = tiny_settings()
    tok = TK.load_tokenizer(str(sft / "model"))
    be = LLMBackend(tok, SamplingConfig(max_new_tokens=s.max_response_tokens, backend="hf", compute_logp=False))
    rows = L.load_comparison_rows("synthetic:16", "train", 0)[0]
    prompts = [format_prompt(r.subreddit, r.title, r.post, tok, s.max_prompt_tokens, r.where)[0] for r in rows]
    cfg = OnlineDataConfig(n_samples=4, sampling_temperature=0.7, max_new_tokens=s.max_response_tokens, seed=seed,
                           sample_batch_size=s.online.sample_batch_size, tie_redraws=0)
    pairs, _, _ = build_online_pairs(be, M.load_policy(str(sft / "model")),
                                     GlobalRM(M.load_reward_model(str(rm / "model"))), prompts, cfg)
    return [dataclasses.asdict(x) for x in to_tokenized_pairs(be, pairs)]


def _hand_scored(path: Path, bad: bool) -> None:
    """Three lines written by hand in the documented format; ``bad``: line 2 not JSON, line 3 without token ids."""
    good = {"prompt": "SUBREDDIT: r/a\n\nTITLE: t\n\nPOST: p q\n\nTL;DR:", "sampling_temperature": 0.5,
            "completions": [{"text": "p", "token_ids": [5, 0], "finished": True, "score": 1.0},
                            {"text": "q", "token_ids": [6, 0], "finished": True, "score": -1.0}]}
    broken = json.loads(json.dumps(good))
    del broken["completions"][1]["token_ids"]
    lines = [json.dumps(good), '{"prompt": oops', json.dumps(broken)] if bad else [json.dumps(good)] * 3
    path.mkdir(parents=True, exist_ok=True)
    (path / F.SCORED).write_text("\n".join(lines) + "\n")


def test_bad_scored_line_named_before_any_work(tmp_path, capsys):
    src, out = tmp_path / "hand", tmp_path / "out"
    _hand_scored(src, bad=True)
    assert main(["score", "--scored", str(src), "--rm", str(tmp_path / "no-model"), "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{src / F.SCORED}:2: not JSON" in err and f"{src / F.SCORED}:3: completions[1].token_ids" in err
    assert f"{src / F.SCORED}:1" not in err and "no-model" not in err and not out.exists()  # nothing else was tried
    assert main(["online-pairs", "--scored", str(src), "--tokenizer", "tiny", "--output_dir", str(out)]) == 2
    assert ":2: not JSON" in capsys.readouterr().err and not out.exists()
    _hand_scored(src, bad=False)  # control: the fixed file is read, and the next problem is the missing model
    assert main(["score", "--scored", str(src), "--rm", str(tmp_path / "no-model"), "--output_dir", str(out)]) == 2
    assert "no-model" in capsys.readouterr().err
    assert main(["online-pairs", "--scored", str(src), "--tokenizer", "tiny", "--output_dir", str(out)]) == 0
    pairs = F.read_pair_file(out)  # a hand-written file gives the runner's files
    assert len(pairs) == 3 and pairs[0].chosen_ids == [5, 0] and pairs[0].rejected_ids == [6, 0]
    assert F.read_sampling(out) == 0.5


def test_bad_pairs_file_lists_every_line_and_refuses_online_dpo(tmp_path, capsys):
    d = tmp_path / "pairs"
    d.mkdir()
    (d / F.PAIRS).write_text('{"prompt_ids": [1], "chosen_ids": [2], "rejected_ids": [3]}\n'
                             '{"prompt_ids": [1], "chosen_ids": [], "rejected_ids": [3]}\n'
                             '{"prompt_ids": [1], "chosen_ids": [2], "rejected_ids": [3], "p_w": 2}\n')
    F.write_sampling(d, 0.1)
    with pytest.raises(F.StageFileError) as e:
        F.read_pair_file(d)
    assert [x.split(": ")[0] for x in e.value.problems] == [f"{d / F.PAIRS}:2", f"{d / F.PAIRS}:3"]
    assert main(["online-dpo", "--preset", "tiny", "--start", str(tmp_path / "nowhere"), "--pairs", str(d),
                 "--output_dir", str(tmp_path / "o")]) == 2
    assert "pairs.jsonl:2" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_write_scored_is_save_scored_when_scored_and_omits_missing_scores(tmp_path):
    tok = TK.load_tokenizer("tiny")
    comps = LLMBackend(tok).completions_from_texts([["a b", "c"], ["d", "e f"]])
    scored = Scored(["p1", "p2"], comps, torch.tensor([[0.25, -1.0], [3.0, 1e-17]], dtype=torch.float64), 0.1)
    assert F.write_scored(scored, tmp_path / "a.jsonl").read_bytes() == save_scored(scored, tmp_path / "b.jsonl").read_bytes()
    back = F.read_scored(tmp_path / "a.jsonl")
    assert torch.equal(back.scores, scored.scores) and back.completions == comps
    half = dataclasses.replace(scored, scores=torch.tensor([[0.25, float("nan")], [3.0, 1.0]], dtype=torch.float64))
    F.write_scored(half, tmp_path / "c.jsonl")
    assert "NaN" not in (tmp_path / "c.jsonl").read_text()
    assert torch.isnan(F.read_scored(tmp_path / "c.jsonl", require_scores=False).scores[0, 1])
    with pytest.raises(F.StageFileError, match=r"c.jsonl:1: completions\[1\].score missing"):
        F.read_scored(tmp_path / "c.jsonl")


def test_test_prompts_are_the_runners(tmp_path):
    s = tiny_settings()
    pipe = Pipeline(tmp_path / "root", s, log=lambda _: None)
    rows = L.load_sft_rows(s.sft_data, "test", 0)[0]
    ours = J.test_prompts(rows, pipe.tokenizer, n=s.n_test, seed=s.eval_prompt_seed, max_prompt_tokens=s.max_prompt_tokens)
    assert ours == tuple(pipe.test_set()) or list(ours) == list(pipe.test_set())
    other = J.test_prompts(rows, pipe.tokenizer, n=s.n_test, seed=s.eval_prompt_seed + 1, max_prompt_tokens=512)
    assert other[0] != ours[0]  # control: another seed draws other prompts


def _texts(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"post": p, "text": t}) + "\n" for p, t in rows))
    return path


def test_judge_against_the_loopback_rule_server(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "loopback-placeholder")
    posts = [f"my cat {w} ate the {w} cake" for w in ("crimson", "blue", "green", "old", "new")]
    good = _texts(tmp_path / "good.jsonl", [(p, p.split()[2] + " cake") for p in posts])
    bad = _texts(tmp_path / "bad.jsonl", [(p, "zzz") for p in posts])
    with RuleJudgeServer() as server:
        for first, second, out, rate in ((good, bad, "o1", 1.0), (bad, good, "o2", 0.0)):  # control: sides swapped
            assert main(["judge", "--first", str(first), "--second", str(second), "--base_url", server.base_url,
                         "--judge_model", "rule", "--max_workers", "1", "--output_dir", str(tmp_path / out)]) == 0
            result = json.loads((tmp_path / out / "result.json").read_text())
            assert (result["n_pairs"], result["win_rate"], result["errors"], result["unparseable"]) == (5, rate, 0, 0)
            verdicts = _lines(tmp_path / out / "verdicts.jsonl")
            assert [v["first_wins"] for v in verdicts] == [rate == 1.0] * 5 and verdicts[0]["post"] == posts[0]
    with FaultyJudgeServer(malformed=lambda prompt: "crimson" in prompt) as server:  # one answer unparseable
        assert main(["judge", "--first", str(good), "--second", str(bad), "--base_url", server.base_url,
                     "--judge_model", "rule", "--max_workers", "1", "--output_dir", str(tmp_path / "o3")]) == 0
    result = json.loads((tmp_path / "o3" / "result.json").read_text())
    assert (result["unparseable"], result["wins"], result["errors"]) == (1, 4, 0)


def test_judge_refuses_mismatched_sides_before_any_request(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", "loopback-placeholder")
    a = _texts(tmp_path / "a.jsonl", [("post one", "x"), ("post two", "y")])
    b = _texts(tmp_path / "b.jsonl", [("post one", "x"), ("post 2", "y")])
    with FaultyJudgeServer() as server:
        assert main(["judge", "--first", str(a), "--second", str(b), "--base_url", server.base_url,
                     "--output_dir", str(tmp_path / "o")]) == 2
        assert server.n_requests == 0
    assert "line 2" in capsys.readouterr().err and "line 1," not in capsys.readouterr().err


@pytest.mark.parametrize("command,cls", [("sample", SampleArgs), ("score", ScoreArgs), ("online-pairs", PairsArgs),
                                         ("judge", JudgeArgs), ("evaluate", EvaluateArgs)])
def test_help_lists_every_option_with_its_docstring(command, cls, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for name, doc in field_docs(cls).items():
        assert doc and f"--{name}" in out and " ".join(doc.split()[:5]) in out, name


def test_online_dpo_help_has_report_to_and_the_module_runs_as_a_program():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "allroads.llm", "online-dpo", "--help"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "--report_to" in run.stdout and "--pairs" in run.stdout
    bad = subprocess.run([sys.executable, "-m", "allroads.llm", "no-such-command"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "unknown command 'no-such-command'" in bad.stderr
