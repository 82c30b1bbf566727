"""Judge failures that say what happened, through the real openai client against loopback servers and real files.

A fault of the judge's own files (answer cache, usage log) stops the judging at once with JudgeCacheError naming
the file, and is never counted as a failed judge request; an endpoint that fails K requests in a row (a closed
port, HTTP 500 forever) stops it with JudgeUnavailable after about K requests, while intermittent failures do not.
"""
import os
import sqlite3
import stat

import pytest

pytest.importorskip("openai")

from support.faults import CountingClient, chmod_protects, closed_port_url, read_only_sqlite
from support.judge_server import FaultyJudgeServer

from allroads.llm.judge import store
from allroads.llm.judge.client import make_client
from allroads.llm.judge.judge import (
    Judge,
    JudgeCacheError,
    JudgeConfig,
    JudgeStopped,
    JudgeUnavailable,
    generate_two_word_summaries,
)
from allroads.llm.judge.rule_server import RuleJudgeServer

from .test_judge import make_pairs, quality

NO_CHMOD = not chmod_protects()  # root (os.geteuid() == 0) writes read-only files anyway
NEEDS_CHMOD = pytest.mark.skipif(NO_CHMOD, reason=f"euid {os.geteuid()} ignores file permissions")


def _judge(server_or_url, tmp_path, *, log=False, **cfg):
    cfg.setdefault("max_workers", 1)
    cfg.setdefault("max_retries", 0)
    cfg.setdefault("cache_path", str(tmp_path / "cache" / "judge.sqlite"))
    if log:
        cfg.setdefault("usage_log_path", str(tmp_path / "usage.jsonl"))
    cfg = JudgeConfig(**cfg)
    url = getattr(server_or_url, "base_url", server_or_url)
    return Judge(cfg, client=make_client(cfg, base_url=url, api_key="loopback"))


# --- local I/O faults -----------------------------------------------------------------------------
def _make_read_only(how: str, tmp_path, monkeypatch) -> None:
    cache = tmp_path / "cache" / "judge.sqlite"
    if how == "query_only":
        read_only_sqlite(monkeypatch)
    elif how == "chmod_file":
        cache.chmod(stat.S_IRUSR)
    else:  # chmod_dir: the file stays writable, its rollback journal cannot be created
        cache.parent.chmod(stat.S_IRUSR | stat.S_IXUSR)


@pytest.mark.parametrize("how", [
    "query_only",
    pytest.param("chmod_file", marks=NEEDS_CHMOD),
    pytest.param("chmod_dir", marks=NEEDS_CHMOD),
])
def test_a_cache_that_cannot_be_written_stops_judging_and_is_no_judge_failure(how, tmp_path, monkeypatch):
    posts, cand, ref = make_pairs(8)
    with FaultyJudgeServer(score=quality) as s:
        with _judge(s, tmp_path) as judge:
            assert judge.compare(posts[:4], cand[:4], ref[:4]).errors == 0  # 4 answers cached
        _make_read_only(how, tmp_path, monkeypatch)
        try:
            with _judge(s, tmp_path) as judge, pytest.raises(JudgeCacheError) as info:
                judge.compare(posts, cand, ref)  # pairs 0-3 from the cache, pair 4 asked, its answer not storable
        finally:
            (tmp_path / "cache").chmod(0o755)
            (tmp_path / "cache" / "judge.sqlite").chmod(0o644)
        assert s.n_requests == 4 + 1  # stopped at once: pairs 5-7 were never asked
    err = info.value
    assert isinstance(err, ValueError) and err.operation == "write"
    message = str(err)
    assert str(tmp_path / "cache" / "judge.sqlite") in message and "could not write" in message
    assert "4 answers are safely cached, 1 answers received in this run could not be stored" in message
    assert "not a failed judge request" in message and "pairs failed" not in message
    assert len(err.unstored) == 1 and "Preferred:" in err.unstored[0]["content"]  # the paid answer is kept
    assert err.partial.n_pairs == 4 and err.partial.errors == 0 and err.partial.n_cached == 4


def test_negative_control_a_writable_cache_judges_every_pair(tmp_path):
    posts, cand, ref = make_pairs(8)
    with FaultyJudgeServer(score=quality) as s:
        with _judge(s, tmp_path) as judge:
            judge.compare(posts[:4], cand[:4], ref[:4])
        with _judge(s, tmp_path) as judge:
            res = judge.compare(posts, cand, ref)
            assert len(judge.cache) == 8
        assert s.n_requests == 8
    assert (res.errors, res.n_cached, res.wins + res.losses) == (0, 4, 8)


@pytest.mark.parametrize("fault", ["parent is a file", "connect: disk full"])
def test_a_cache_that_cannot_be_opened_fails_before_any_request(fault, tmp_path, monkeypatch):
    (tmp_path / "cache").write_text("a file where the cache's directory should be")
    path = tmp_path / "cache" / "judge.sqlite"
    if fault == "connect: disk full":
        path = tmp_path / "judge.sqlite"

        def connect(*args, **kwargs):
            raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr(store, "sqlite3", type("sqlite3", (), {"connect": connect, "Error": sqlite3.Error}))
    with FaultyJudgeServer(score=quality) as s:
        with pytest.raises(JudgeCacheError, match="could not open") as info:
            _judge(s, tmp_path, cache_path=str(path))
        assert s.n_requests == 0
    assert str(path) in str(info.value)
    assert ("disk full?" if fault == "connect: disk full" else "is a part of the path a file?") in str(info.value)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (a device whose writes fail: disk full)")
def test_a_full_disk_under_the_usage_log_stops_judging_and_keeps_the_answer(tmp_path):
    posts, cand, ref = make_pairs(3)
    with FaultyJudgeServer(score=quality) as s:
        with _judge(s, tmp_path, usage_log_path="/dev/full") as judge, pytest.raises(JudgeCacheError) as info:
            judge.compare(posts, cand, ref)
        assert s.n_requests == 1
        message = str(info.value)
        assert message.startswith("judge usage log /dev/full: could not write (disk full?)")
        assert "1 answers are safely cached, 0 answers received in this run could not be stored" in message
        with _judge(s, tmp_path, log=True) as judge:  # a rerun with a working log: the paid answer is not asked again
            res = judge.compare(posts, cand, ref)
        assert s.n_requests == 3 and res.n_cached == 1 and res.errors == 0


# --- the circuit breaker --------------------------------------------------------------------------
def test_a_closed_port_stops_after_k_requests_naming_the_endpoint_and_the_connection_error(tmp_path):
    url = closed_port_url()
    posts, cand, ref = make_pairs(20)
    client = CountingClient(url, max_retries=0)
    cfg = JudgeConfig(max_workers=1, max_consecutive_failures=3, cache_path=str(tmp_path / "c.sqlite"))
    with Judge(cfg, client=client) as judge, pytest.raises(JudgeUnavailable) as info:
        judge.compare(posts, cand, ref)
    assert client.n_attempts == 3  # not 20
    message = str(info.value)
    assert url in message and "3 requests in a row" in message
    assert "Connection refused" in message  # the cause, not just "Connection error."
    assert f"0 answers are safely cached in {tmp_path / 'c.sqlite'}" in message
    assert info.value.partial.errors == 2 and "Connection refused" in info.value.partial.records[0].error


@pytest.mark.parametrize("workers", [1, 4])
def test_a_server_answering_500_forever_stops_after_k_requests_not_every_pairs_retries(workers, tmp_path):
    posts, cand, ref = make_pairs(20)
    k, retries = 3, 2
    with FaultyJudgeServer(score=quality, fail_first=10**9, fail_status=500, fail_headers={"retry-after-ms": "1"}) as s:
        with _judge(s, tmp_path, max_workers=workers, max_retries=retries, max_consecutive_failures=k) as judge:
            with pytest.raises(JudgeUnavailable) as info:
                judge.compare(posts, cand, ref)
        per_pair = retries + 1
        if workers == 1:
            assert s.n_requests == k * per_pair
        else:  # requests already in flight when the k-th failure arrives still finish
            assert k * per_pair <= s.n_requests <= (k + workers - 1) * per_pair
        assert s.n_requests < 20 * per_pair and s.n_answered == 0
    assert s.base_url in str(info.value) and "injected failure" in str(info.value)
    assert "InternalServerError" in info.value.last_error


@pytest.mark.parametrize("k,trips", [(3, False), (2, True)])
def test_intermittent_failures_fewer_than_k_in_a_row_do_not_trip_it(k, trips, tmp_path):
    """Requests 1, 2, 4, 5, 7, 8, ... fail: two in a row at most. K=3 judges every pair; K=2 (the control showing
    the pattern does put two failures in a row) trips."""
    posts, cand, ref = make_pairs(12)
    with FaultyJudgeServer(score=quality, fail_when=lambda n: n % 3 != 0, fail_status=503) as s:
        with _judge(s, tmp_path, max_consecutive_failures=k) as judge:
            if trips:
                with pytest.raises(JudgeUnavailable):
                    judge.compare(posts, cand, ref)
                assert s.n_requests == 2
                return
            res = judge.compare(posts, cand, ref)
    assert s.n_requests == 12 and (res.errors, res.wins + res.losses) == (8, 4)


def test_refusals_of_one_request_do_not_count_but_a_wrong_path_does(tmp_path):
    posts, cand, ref = make_pairs(5)
    with FaultyJudgeServer(score=quality, fail_first=10**9, fail_status=400) as s:
        with _judge(s, tmp_path, max_consecutive_failures=2) as judge:
            res = judge.compare(posts, cand, ref)  # HTTP 400 says the endpoint is alive
        assert s.n_requests == 5 and res.errors == 5 and "BadRequestError" in res.records[0].error
    with RuleJudgeServer(score=quality) as s:  # every request 404s: a misconfigured endpoint
        with _judge(s.base_url.replace("/v1", "/nope"), tmp_path, max_consecutive_failures=2) as judge:
            with pytest.raises(JudgeUnavailable, match="NotFoundError"):
                judge.compare(posts, cand, ref)


def test_the_breaker_starts_afresh_with_each_batch(tmp_path):
    posts, cand, ref = make_pairs(6)
    with FaultyJudgeServer(score=quality, fail_first=3, fail_status=502) as s:
        with _judge(s, tmp_path, max_consecutive_failures=3) as judge:
            with pytest.raises(JudgeUnavailable):
                judge.compare(posts, cand, ref)
            with pytest.raises(JudgeUnavailable):  # stopped: nothing more is sent until the next batch
                judge.complete("one more prompt")
            assert s.n_requests == 3
            res = judge.compare(posts, cand, ref)  # the server recovered
        assert s.n_requests == 3 + 6
    assert (res.errors, res.wins + res.losses) == (0, 6)


def test_two_word_writing_stops_on_a_dead_endpoint(tmp_path):
    client = CountingClient(closed_port_url())
    cfg = JudgeConfig(variant="two_word", max_workers=1, max_consecutive_failures=2)
    with Judge(cfg, client=client) as judge, pytest.raises(JudgeStopped, match="2 requests in a row"):
        generate_two_word_summaries(judge, [f"post {i}" for i in range(10)], n=2)
    assert client.n_attempts == 2


def test_config_and_library_server_shape():
    with pytest.raises(ValueError, match="max_consecutive_failures"):
        JudgeConfig(max_consecutive_failures=0)
    with pytest.raises(TypeError):  # failure injection lives in tests/support, not in the library's server
        RuleJudgeServer(fail_first=1)
