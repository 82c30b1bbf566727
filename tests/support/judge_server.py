"""The loopback rule judge with what only tests need: request counting and failure injection."""
from __future__ import annotations

import json
import threading
from typing import Callable

from allroads.llm.judge.rule_server import RuleJudgeServer, overlap_score, split_judge_prompt

__all__ = ["FaultyJudgeServer", "MALFORMED_ANSWER"]

MALFORMED_ANSWER = "Comparison: Both summaries are fine.\nPreferred: both"
"""What a judge prompt chosen by ``malformed`` is answered: no valid ``Preferred:`` line."""


class FaultyJudgeServer(RuleJudgeServer):
    """:class:`~allroads.llm.judge.rule_server.RuleJudgeServer` that counts requests and fails on purpose.

    Args:
        score, respond, write, host, port: as :class:`RuleJudgeServer`.
        fail_first: answer the first ``fail_first`` requests with HTTP ``fail_status`` (an OpenAI-style error body);
            ``10**9`` = fail forever.
        fail_when: ``fail_when(n) -> bool`` for the n-th request (1-based), instead of ``fail_first``.
        fail_status: the status of those failures (400 / 422 refusing the request, 408, 409, 429 rate limit, or a
            5xx server error).
        fail_code: the error body's ``code`` (e.g. ``insufficient_quota``); "" = none.
        fail_headers: headers sent with those failures (e.g. ``{"retry-after-ms": "1"}``, which the openai client
            waits instead of its 0.5 s+ backoff).
        malformed: ``malformed(prompt) -> bool`` for judge prompts; when True the answer is :data:`MALFORMED_ANSWER`.

    Attributes (read them after requests): ``n_requests`` (every POST, failed ones included), ``n_answered`` (200
    answers), ``prompts`` (the user message of every answered request, in order), ``requests`` (the JSON body of
    every answered request).
    """

    def __init__(self, score: Callable[[str, str], float] = overlap_score, *, fail_first: int = 0,
                 fail_when: Callable[[int], bool] | None = None, fail_status: int = 429, fail_code: str = "",
                 fail_headers: dict[str, str] | None = None, malformed: Callable[[str], bool] | None = None, **kw):
        if fail_first < 0:
            raise ValueError(f"FaultyJudgeServer(fail_first={fail_first}): must be >= 0.")
        if not (fail_status in (400, 408, 409, 422, 429) or 500 <= fail_status <= 599):
            raise ValueError(f"FaultyJudgeServer(fail_status={fail_status}): use 400, 408, 409, 422, 429 or a 5xx.")
        super().__init__(score, **kw)
        self.fail_when = fail_when or (lambda n: n <= fail_first)
        self.fail_status, self.fail_code, self.fail_headers = fail_status, fail_code, dict(fail_headers or {})
        self.malformed = malformed
        self.n_requests = self.n_answered = 0
        self.prompts: list[str] = []
        self.requests: list[dict] = []
        self._count_lock = threading.Lock()

    def handle(self, path: str, body: bytes) -> tuple[int, dict, dict[str, str]]:
        with self._count_lock:
            self.n_requests += 1
            fail = self.fail_when(self.n_requests)
        if fail and path.rstrip("/") == "/v1/chat/completions":
            kind = {429: "rate_limit_error", 400: "invalid_request_error", 422: "invalid_request_error"}.get(
                self.fail_status, "server_error")
            error = {"message": "injected failure", "type": kind, "code": self.fail_code or None}
            return self.fail_status, {"error": error}, self.fail_headers
        status, reply, headers = super().handle(path, body)
        if status == 200:
            with self._count_lock:
                self.n_answered += 1
                req = json.loads(body)
                self.requests.append(req)
                self.prompts.append("\n".join(m["content"] for m in req["messages"] if m["role"] == "user"))
        return status, reply, headers

    def answer(self, prompt: str, seed: int | None = None) -> str:
        if self.malformed is not None and split_judge_prompt(prompt) is not None and self.respond is None \
                and self.malformed(prompt):
            return MALFORMED_ANSWER
        return super().answer(prompt, seed)

