"""The pairwise judge (allroads.llm.judge.judge) through the real openai client against the loopback rule server."""
import json
import re
import time
from pathlib import Path

import pytest

pytest.importorskip("openai")

from support.judge_server import FaultyJudgeServer

from allroads.llm.judge.client import make_client  # noqa: F401
from allroads.llm.judge.judge import (  # noqa: F401
    STANDARD_JUDGE_TEMPLATE,
    TWO_WORD_JUDGE_TEMPLATE,
    TWO_WORD_SUMMARY_TEMPLATE,
    Judge,
    JudgeConfig,
    first_shown_as_a,
    generate_two_word_summaries,
    gpt_label_dataset,
    judge_win_rate,
    parse_preferred,
    parse_summary,
    render_judge_prompt,
    two_word_preference_dataset,
)
from allroads.llm.judge.rule_server import RuleJudgeServer, split_judge_prompt  # noqa: F401

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"  # tests/fixtures/, inside the repository
PAPER = FIXTURES / "paper" / "appendix_b_prompts.txt"  # App. B.1 and B.4 verbatim, see its README.md
SECRET = "sk-test-DO-NOT-WRITE-0123456789"


def quality(post: str, summary: str) -> float:
    """Test rule: the summary's quality is the number after 'q='."""
    return float(re.search(r"q=([0-9.]+)", summary).group(1))


def make_pairs(n=40):
    """Candidates win exactly on pairs i % 4 != 0 (30 of 40): known win rate 0.75."""
    posts = [f"Post number {i} about a cat and a dog." for i in range(n)]
    cand = [f"candidate {i} q={0.9 if i % 4 else 0.1}" for i in range(n)]
    ref = [f"reference {i} q=0.5" for i in range(n)]
    return posts, cand, ref


def client_for(server, cfg=None):
    return make_client(cfg or JudgeConfig(max_retries=0, timeout_s=10), base_url=server.base_url, api_key=SECRET)


@pytest.fixture
def server():
    with FaultyJudgeServer(score=quality) as s:
        yield s


def judge_for(server, tmp_path=None, **cfg):
    cfg.setdefault("max_workers", 4)
    cfg.setdefault("max_retries", 0)
    if tmp_path is not None:
        cfg.setdefault("cache_path", str(tmp_path / "cache.sqlite"))
        cfg.setdefault("usage_log_path", str(tmp_path / "usage.jsonl"))
    cfg = JudgeConfig(**cfg)
    return Judge(cfg, client=client_for(server, cfg))


# --- prompts ------------------------------------------------------------------------------------
@pytest.mark.parametrize("template,lead", [
    (STANDARD_JUDGE_TEMPLATE, "For standard summarization, we use the following prompt:"),
    (TWO_WORD_JUDGE_TEMPLATE, "For two-word summarization (i.e. Fig 10) we use the following prompt:"),
])
def test_judge_templates_are_verbatim_from_appendix_b4(template, lead):
    text = PAPER.read_text()
    after = text[text.index(lead) + len(lead):]
    intro, block = re.match(r"\s*(.*?)\n\n```\n(.*?)\n```", after, re.DOTALL).groups()
    assert template == intro + "\n\n" + block


def test_two_word_summary_template_is_verbatim_from_appendix_b1():
    text = PAPER.read_text()
    lead = "We use the following prompt to generate a pair of two-word summaries via `gpt-4o` query:"
    after = text[text.index(lead) + len(lead):]
    blocks = re.findall(r"```\n(.*?)\n```", after[:800], re.DOTALL)[:3]
    closing = "Do not include any other text or explanations in your response."
    assert closing in after[:800]
    assert TWO_WORD_SUMMARY_TEMPLATE == "\n\n".join(blocks + [closing])


def test_render_joins_continuations_and_fills_placeholders_once():
    p = render_judge_prompt("post with {{summarya}} inside", "AAA", "BBB")
    assert "explaining which you prefer and why. SECOND" in p and "\\" not in p
    assert "### Post:\npost with {{summarya}} inside\n\n### Summary A:\nAAA\n\n### Summary B:\nBBB\n\n" in p
    assert p.startswith("Which of the following summaries")
    assert render_judge_prompt("x", "a", "b", variant="two_word").startswith("Which of the following two-word")
    assert split_judge_prompt(p) == ("post with {{summarya}} inside", "AAA", "BBB")
    with pytest.raises(ValueError, match="variant"):
        render_judge_prompt("x", "a", "b", variant="three_word")


@pytest.mark.parametrize("answer,label", [
    ("Comparison: A is better.\nPreferred: A", "A"),
    ("Comparison: B covers more.\nPreferred: B\n", "B"),
    ("Comparison: x\n  Preferred:   B  ", "B"),
    ("Comparison: x\nPreferred: \"A\"", "A"),  # the prompt's own format line: Preferred: <"A" or "B">
    ("Comparison: x\nPreferred: **B**", "B"),
    ("Comparison: x\n**Preferred:** A", "A"),
    ("Comparison: x\nPreferred: **\"B\"**", "B"),
    ("Comparison: x\nPreferred: \"A", None),
    ("Comparison: x\nPreferred: **A", None),
    ("Comparison: x\nPreferred: \"A\" or \"B\"", None),
    ("Comparison: x\nPreferred: A.", None),
    ("Comparison: x\nPreferred: Summary A", None),
    ("Comparison: x\nPreferred: A\nPreferred: B", None),
    ("Comparison: x\nPreferred: A\nPreferred: A", None),
    ("Comparison: I prefer A.", None),
    ("Comparison: x\nPreferred: AB", None),
    ("", None),
])
def test_parse_preferred_is_strict(answer, label):
    assert parse_preferred(answer) == label


def test_parse_summary():
    assert parse_summary("Summary: cat dog") == "cat dog"
    assert parse_summary("Summary:   ") is None
    assert parse_summary("cat dog") is None
    assert parse_summary("Summary: a\nSummary: b") is None


# --- win rate ------------------------------------------------------------------------------------
def test_win_rate_is_derandomised_and_order_reproducible(server):
    posts, cand, ref = make_pairs()
    with judge_for(server, seed=3) as judge:
        res = judge_win_rate(judge, posts, cand, ref)
    assert (res.wins, res.losses, res.unparseable, res.errors) == (30, 10, 0, 0)
    assert res.decided_win_rate == 0.75
    orders = [r.first_is_a for r in res.records]
    assert 5 < sum(orders) < 35  # the order really varies
    assert {r.preferred for r in res.records} == {"A", "B"}  # so the raw labels do too
    for r, prompt in zip(res.records, sorted(server.prompts, key=lambda p: int(p.split("Post number ")[1].split()[0]))):
        _, a, _ = split_judge_prompt(prompt)
        assert a.startswith("candidate" if r.first_is_a else "reference")
    assert orders == [first_shown_as_a(3, p, c, r) for p, c, r in zip(posts, cand, ref)]
    assert orders != [first_shown_as_a(4, p, c, r) for p, c, r in zip(posts, cand, ref)]
    assert res.summary()["seed"] == 3 and res.summary()["win_rate"] == 0.75


def test_position_biased_judge_is_unbiased_on_average():
    """A judge that always says A: a candidate wins exactly when it was shown as A."""
    posts, cand, ref = make_pairs()
    with FaultyJudgeServer(respond=lambda p: "Comparison: first.\nPreferred: A") as s, judge_for(s, seed=0) as judge:
        res = judge.compare(posts, cand, ref)
    assert [r.first_wins for r in res.records] == [r.first_is_a for r in res.records]
    assert res.wins == sum(first_shown_as_a(0, p, c, r) for p, c, r in zip(posts, cand, ref))


def test_cache_second_run_sends_zero_requests(server, tmp_path):
    posts, cand, ref = make_pairs(12)
    with judge_for(server, tmp_path) as judge:
        first = judge.compare(posts, cand, ref)
    n = server.n_requests
    assert n == 12 and first.n_cached == 0
    with judge_for(server, tmp_path) as judge:  # a new process would open the same file
        second = judge.compare(posts, cand, ref)
    assert server.n_requests == n  # nothing paid twice
    assert second.n_cached == 12
    assert [r.first_wins for r in second.records] == [r.first_wins for r in first.records]
    with judge_for(server, tmp_path, model="other-judge") as judge:  # the model is part of the key
        judge.compare(posts[:2], cand[:2], ref[:2])
    assert server.n_requests == n + 2


@pytest.mark.parametrize("status", [408, 409, 429, 500, 503])
def test_retries_as_the_openai_client_on_retryable_statuses(status):
    """Retried by the client, waiting what ``retry-after-ms`` says (10 ms here; its default backoff is 0.5 s+)."""
    posts, cand, ref = make_pairs(1)
    with FaultyJudgeServer(score=quality, fail_first=3, fail_status=status, fail_headers={"retry-after-ms": "10"}) as s:
        with judge_for(s, max_workers=1, max_retries=3) as judge:
            t0 = time.perf_counter()
            res = judge.compare(posts, cand, ref)
            elapsed = time.perf_counter() - t0
        assert s.n_requests == 4 and s.n_answered == 1
    assert elapsed < 1.0
    assert res.records[0].first_wins is False and res.errors == 0  # pair 0: candidate q=0.1 < 0.5


def test_insufficient_quota_is_never_retried(tmp_path):
    posts, cand, ref = make_pairs(1)
    with FaultyJudgeServer(score=quality, fail_first=5, fail_status=429, fail_code="insufficient_quota") as s:
        with judge_for(s, tmp_path, max_workers=1, max_retries=3) as judge:
            res = judge.compare(posts, cand, ref)
        assert s.n_requests == 1
    assert res.errors == 1 and "insufficient_quota" in res.records[0].error


def test_retries_exhausted_is_an_error_not_a_result(tmp_path):
    posts, cand, ref = make_pairs(1)
    with FaultyJudgeServer(score=quality, fail_first=2, fail_status=429) as s:
        with judge_for(s, tmp_path, max_workers=1, max_retries=1) as judge:
            res = judge.compare(posts, cand, ref)
        assert s.n_requests == 2
        assert (res.errors, res.unparseable, res.wins, res.losses) == (1, 0, 0, 0)
        assert "RateLimitError" in res.records[0].error
        with judge_for(s, tmp_path, max_workers=1, max_retries=1) as judge:  # the failure was not cached
            res = judge.compare(posts, cand, ref)
        assert s.n_requests == 3 and (res.losses, res.errors) == (1, 0)


def test_client_errors_are_not_retried():
    posts, cand, ref = make_pairs(1)
    with FaultyJudgeServer(score=quality) as s:
        bad = make_client(JudgeConfig(), base_url=s.base_url.replace("/v1", "/nope"), api_key=SECRET)
        res = Judge(JudgeConfig(max_workers=1), client=bad).compare(posts, cand, ref)
        assert s.n_requests == 1 and res.errors == 1 and "NotFoundError" in res.records[0].error


def test_malformed_answer_is_counted_unparseable(tmp_path):
    posts, cand, ref = make_pairs(8)
    with FaultyJudgeServer(score=quality, malformed=lambda p: "Post number 5 " in p) as s, judge_for(s, tmp_path) as judge:
        res = judge.compare(posts, cand, ref)
    assert (res.unparseable, res.errors, res.wins + res.losses) == (1, 0, 7)
    bad = res.records[5]
    assert bad.preferred is None and bad.first_wins is None and "Preferred: both" in bad.answer
    assert res.decided_win_rate == pytest.approx(sum(i % 4 != 0 for i in range(8) if i != 5) / 7)


def test_key_from_environment_never_written(server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    posts, cand, ref = make_pairs(6)
    cfg = JudgeConfig(cache_path=str(tmp_path / "c.sqlite"), usage_log_path=str(tmp_path / "u.jsonl"))
    with Judge(cfg) as judge:  # client built from the environment
        res = judge.compare(posts, cand, ref)
    assert res.wins + res.losses == 6 and server.n_requests == 6
    for f in tmp_path.iterdir():
        assert SECRET.encode() not in f.read_bytes(), f
    lines = [json.loads(x) for x in (tmp_path / "u.jsonl").read_text().splitlines()]
    assert len(lines) == 6
    assert sum(x["total_tokens"] for x in lines) == sum(
        len(p.split()) + len(server.answer(p).split()) for p in server.prompts)
    assert all(x["prompt_tokens"] + x["completion_tokens"] == x["total_tokens"] for x in lines)


def test_missing_key_and_bad_inputs_fail_before_any_request(server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        Judge(JudgeConfig())
    with pytest.raises(ValueError, match="JudgeConfig"):
        JudgeConfig(variant="three_word")
    with judge_for(server) as judge:
        with pytest.raises(ValueError, match="lengths"):
            judge.compare(["p", "q"], ["a", "b"], ["c"])
        with pytest.raises(ValueError, match=r"first\[0\] is list"):
            judge.compare(["p"], [[1, 2]], ["c"])
        with pytest.raises(ValueError, match="no pairs"):
            judge.compare([], [], [])
    assert server.n_requests == 0


def test_loopback_only():
    with pytest.raises(ValueError, match="loopback"):
        RuleJudgeServer(host="0.0.0.0")


# --- datasets (Fig. 6, Fig. 10) ------------------------------------------------------------------
def test_gpt_label_dataset_rows(server):
    posts, s1, s2 = make_pairs(8)
    prompts = [f"SUBREDDIT: r/x\nPOST: {p}\nTL;DR:" for p in posts]
    with judge_for(server, seed=1) as judge:
        rows, res = gpt_label_dataset(judge, prompts, posts, s1, s2)
    assert len(rows) == 8 and res.n_pairs == 8
    for i, row in enumerate(rows):
        assert row["prompt"] == prompts[i]
        assert quality("", row["chosen"]) > quality("", row["rejected"])
        assert {row["chosen"], row["rejected"]} == {s1[i], s2[i]}
    with judge_for(server, variant="two_word") as judge, pytest.raises(ValueError, match="standard"):
        gpt_label_dataset(judge, prompts, posts, s1, s2)


def test_two_word_generation_and_preference_data(tmp_path):
    def respond(prompt):
        if prompt.startswith("Which of the following two-word summaries"):
            _, a, b = split_judge_prompt(prompt)
            return "Comparison: shorter.\nPreferred: " + ("A" if len(a) <= len(b) else "B")
        post = prompt.split("### Post:\n")[1].split("\n\n")[0]
        if "3" in post:
            return "Here you go: cat dog"  # no Summary: line
        return f"Summary: {post.split()[0]} w{len(post)}"

    posts = [f"p{i} " + "x" * i for i in range(5)]
    with FaultyJudgeServer(respond=respond) as s:
        with judge_for(s, tmp_path, variant="two_word") as judge:
            summaries = generate_two_word_summaries(judge, posts, n=2)
            assert s.n_requests == 10  # two samples per post: the sample index is part of the cache key
            assert summaries[3] == [None, None]
            assert summaries[0] == ["p0 w3", "p0 w3"]
            keep = [i for i in range(5) if None not in summaries[i]]
            s1 = [summaries[i][0] for i in keep]
            s2 = ["a much longer summary"] * len(keep)
            rows, res = two_word_preference_dataset(
                judge, [f"{posts[i]}\nTwo-Word TL;DR:" for i in keep], [posts[i] for i in keep], s1, s2)
        assert len(rows) == 4 and res.wins == 4
        assert all(r["rejected"] == "a much longer summary" for r in rows)
        with judge_for(s, variant="standard") as judge, pytest.raises(ValueError, match="two_word"):
            two_word_preference_dataset(judge, ["p"], ["p"], ["a"], ["b"])
