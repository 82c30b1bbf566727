"""The tiny preset's stand-in for gpt-4o writing two-word summaries (Fig. 10), through the real openai client."""
from allroads.llm.data.synthetic import synthetic_score, synthetic_two_word_summary
from allroads.llm.data.synthetic_rows import make_synthetic_sft
from allroads.llm.judge.client import make_client
from allroads.llm.judge.judge import (
    Judge,
    JudgeConfig,
    generate_two_word_summaries,
    judge_win_rate,
    render_two_word_summary_prompt,
)
from allroads.llm.judge.rule_server import RuleJudgeServer, split_summary_prompt


def test_writer_answers_summary_prompts_and_still_judges(tmp_path):
    posts = [r["post"] for r in make_synthetic_sft(5, 3)]
    assert split_summary_prompt(render_two_word_summary_prompt(posts[0])) == posts[0]
    assert split_summary_prompt("Which of the following summaries ...") is None
    with RuleJudgeServer(score=synthetic_score, write=synthetic_two_word_summary) as server:
        cfg = JudgeConfig(model="rule", variant="two_word", max_workers=1, cache_path=str(tmp_path / "c.sqlite"))
        judge = Judge(cfg, client=make_client(cfg, base_url=server.base_url, api_key="loopback"))
        sums = generate_two_word_summaries(judge, posts, n=2)
        for post, pair in zip(posts, sums):
            # the two requests of one post get the two variants (in request order, max_workers=1)
            assert pair == [synthetic_two_word_summary(post, 0), synthetic_two_word_summary(post, 1)]
            assert [synthetic_score(post, s) for s in pair] == [2.0, 0.0]
        # judge prompts are still answered by the score rule: the good variant always wins
        res = judge_win_rate(judge, posts, [p[0] for p in sums], [p[1] for p in sums])
        assert res.wins == len(posts) and res.unparseable == 0
        judge.close()


def test_concurrent_samples_of_one_post_get_their_own_text(tmp_path):
    """Sample k of a post is requested with seed + k, so with 8 workers racing over posts that repeat, each
    (post, k) still gets write(post, k): the result is the same as one worker's (the loopback writer once
    counted arrivals, and repeated posts raced)."""
    posts = [r["post"] for r in make_synthetic_sft(6, 3)] * 3
    with RuleJudgeServer(score=synthetic_score, write=synthetic_two_word_summary) as server:
        cfg = JudgeConfig(model="rule", variant="two_word", max_workers=8, cache_path=None)
        judge = Judge(cfg, client=make_client(cfg, base_url=server.base_url, api_key="loopback"))
        sums = generate_two_word_summaries(judge, posts, n=2)
        judge.close()
    assert sums == [[synthetic_two_word_summary(p, 0), synthetic_two_word_summary(p, 1)] for p in posts]
