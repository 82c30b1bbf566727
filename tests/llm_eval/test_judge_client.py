"""What the judge sends and keeps, through the real openai client against the loopback rule server: the A/B order
depends on the pair, not its position; max_completion_tokens and seed are sent; the answering model and its
fingerprint are logged; the cache key holds endpoint and model, and answers cached before stay readable."""
import hashlib
import json
import re

import pytest

pytest.importorskip("openai")

from support.judge_server import FaultyJudgeServer

from allroads.llm.judge.client import OPENAI_BASE_URL, endpoint_id, make_client  # noqa: F401
from allroads.llm.judge.factory import JudgeFactory
from allroads.llm.judge.judge import Judge, JudgeConfig, ResponseCache, render_judge_prompt  # noqa: F401
from allroads.llm.judge.rule_server import RuleJudgeServer
from allroads.llm.pipeline.settings import paper_settings  # noqa: F401

from .test_judge import make_pairs, quality  # noqa: E402


def _judge(server, tmp_path, **kw):
    cfg = JudgeConfig(max_workers=2, max_retries=0, cache_path=str(tmp_path / "c.sqlite"),
                      usage_log_path=str(tmp_path / "u.jsonl"), **kw)
    return Judge(cfg, client=make_client(cfg, base_url=server.base_url, api_key="loopback"))


def test_a_subset_a_reordering_or_swapped_pairs_ask_nothing_again(tmp_path):
    posts, cand, ref = make_pairs(30)
    with FaultyJudgeServer(score=quality) as s:
        with _judge(s, tmp_path) as judge:
            full = judge.compare(posts, cand, ref)
            assert s.n_requests == 30
            order = [7, 3, 29, 0, 12, 18, 5]
            sub = judge.compare([posts[i] for i in order], [cand[i] for i in order], [ref[i] for i in order])
            swapped = judge.compare(posts, ref, cand)
        assert s.n_requests == 30  # every prompt of the subset, the reordering and the swap was asked before
    assert [r.first_wins for r in sub.records] == [full.records[i].first_wins for i in order]
    assert [r.first_is_a for r in sub.records] == [full.records[i].first_is_a for i in order]
    assert [r.first_wins for r in swapped.records] == [not r.first_wins for r in full.records]
    assert 5 < sum(r.first_is_a for r in full.records) < 25


def test_request_and_usage_log_fields(tmp_path):
    posts, cand, ref = make_pairs(3)
    with FaultyJudgeServer(score=quality) as s:
        with _judge(s, tmp_path, seed=7, max_completion_tokens=99) as judge:
            judge.compare(posts, cand, ref)
    for req in s.requests:
        assert req["max_completion_tokens"] == 99 and req["seed"] == 7 and "max_tokens" not in req
        assert req["model"] == "gpt-4o-2024-08-06"
    lines = [json.loads(x) for x in (tmp_path / "u.jsonl").read_text().splitlines()]
    assert len(lines) == 3
    for line in lines:  # what answered, as the response says (the loopback server names its "snapshot")
        assert line["response_model"] == "gpt-4o-2024-08-06-snapshot" and line["system_fingerprint"] == "fp_loopback"


def test_answers_cached_for_openai_before_endpoints_were_keyed_stay_readable(tmp_path):
    posts, cand, ref = make_pairs(1)
    cfg = JudgeConfig(max_retries=0, timeout_s=1, cache_path=str(tmp_path / "c.sqlite"))
    judge = Judge(cfg, client=make_client(cfg, api_key="never-sent"))  # OpenAI's endpoint; nothing may be sent
    assert judge.endpoint == ""
    for first_is_a in (True, False):  # the answer a run before this change cached, under its old key
        a, b = (cand[0], ref[0]) if first_is_a else (ref[0], cand[0])
        prompt = render_judge_prompt(posts[0], a, b)
        old_key = hashlib.sha256(json.dumps([cfg.model, 0.0, 256, 0, prompt]).encode()).hexdigest()
        judge.cache.put(old_key, cfg.model, prompt, "Comparison: x\nPreferred: B", {})
    res = judge.compare(posts, cand, ref)
    assert res.errors == 0 and res.n_cached == 1 and res.records[0].first_wins == (not res.records[0].first_is_a)
    judge.close()


def test_cache_key_holds_endpoint_and_model():
    key = lambda model, url: ResponseCache.key(model, 0.0, 256, 0, "p", endpoint_id(url))  # noqa: E731
    assert key("m", OPENAI_BASE_URL) == key("m", OPENAI_BASE_URL + "/") == key("m", "")
    assert len({key("m", OPENAI_BASE_URL), key("m", "http://10.1.2.3:8000/v1"), key("m", "https://other.ai/v1"),
                key("n", OPENAI_BASE_URL), key("n", "https://other.ai/v1")}) == 5
    # a loopback stand-in takes a free port per run: its answers are found again on the next one
    assert key("m", "http://127.0.0.1:40001/v1") == key("m", "http://127.0.0.1:40002/v1") != key("m", "")


def test_default_judge_is_a_dated_snapshot():
    assert re.fullmatch(r"gpt-4o-\d{4}-\d{2}-\d{2}", JudgeConfig().model)
    assert paper_settings().judge_id == JudgeConfig().model


def test_the_tiny_presets_factory_judges_through_the_library_server(tmp_path):
    judges = JudgeFactory("tiny", tmp_path)
    try:
        judge = judges("standard")
        posts = ["the cat sat on the mat", "a dog ran in the park"]
        res = judge.compare(posts, ["cat sat on mat", "dog ran park"], ["nothing here", "xyz"])
        assert isinstance(judges.server, RuleJudgeServer) and not isinstance(judges.server, FaultyJudgeServer)
        assert res.n_pairs == 2 and res.errors == 0 and res.unparseable == 0
        assert (tmp_path / "judge-tiny-standard.sqlite").exists()
        judge.close()
    finally:
        judges.close()
