r"""A tiny local OpenAI-compatible chat server that judges summaries with a Python rule.

It stands in for ``gpt-4o`` (Swamy et al. 2025, Appendix B.4) in tests and offline dry runs: the real
``openai`` client talks to it over loopback HTTP exactly as it would talk to OpenAI. The server reads the
judge prompt of :mod:`allroads.llm.judge.judge` (the ``### Post:`` / ``### Summary A:`` / ``### Summary B:`` /
``### Instructions:`` sections), scores both summaries with a pluggable rule, and answers in the format
the prompt asks for::

    Comparison: <one sentence>
    Preferred: A

so that :func:`allroads.llm.judge.judge.parse_preferred` works on its answers. Like an API that resolves a model alias,
it answers as model ``<requested>-snapshot`` with ``system_fingerprint`` ``fp_loopback``. Failure injection for tests:
the first ``fail_first`` requests get HTTP ``fail_status`` (429 or 5xx); prompts for which ``malformed``
returns True get an answer without a valid ``Preferred:`` line; ``fail_code`` and ``fail_headers`` shape those
failures (``insufficient_quota``, ``retry-after-ms``). Every request is counted and its JSON body kept.

Only loopback addresses are accepted; the server runs in a daemon thread until :meth:`stop` (or the end of
a ``with`` block).

Example::

    with RuleJudgeServer(score=len) as server:          # prefers the longer summary
        client = openai.OpenAI(base_url=server.base_url, api_key="local")
"""
from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

__all__ = ["RuleJudgeServer", "overlap_score", "split_judge_prompt", "split_summary_prompt"]

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")

_SECTION = re.compile(r"^### (Post|Summary A|Summary B|Instructions):\n", re.MULTILINE)


def overlap_score(post: str, summary: str) -> float:
    """Default rule: the number of distinct lower-cased words of ``summary`` that occur in ``post``."""
    post_words = set(re.findall(r"\w+", post.lower()))
    return float(len(set(re.findall(r"\w+", summary.lower())) & post_words))


def split_judge_prompt(prompt: str) -> tuple[str, str, str] | None:
    """Return ``(post, summary_a, summary_b)`` from a rendered judge prompt, or None if it is not one.

    The sections are those of the Appendix B.4 prompts; each section's text runs to the blank line that
    precedes the next ``### `` header.
    """
    parts = _SECTION.split(prompt)
    # parts = [preamble, name1, body1, name2, body2, ...]
    sections = {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}
    if not {"Post", "Summary A", "Summary B", "Instructions"} <= sections.keys():
        return None
    strip = lambda s: s[:-2] if s.endswith("\n\n") else s.rstrip("\n")  # noqa: E731
    return strip(sections["Post"]), strip(sections["Summary A"]), strip(sections["Summary B"])


_SUMMARY_PROMPT = re.compile(r"^Given the following forum post, please write a summary of the post of length at\n"
                             r"most two words\..*?\n### Post:\n(?P<post>.*)\n\n### Instructions:\n", re.S)


def split_summary_prompt(prompt: str) -> str | None:
    """The post of a rendered two-word summary-writing prompt (App. B.1, Fig. 10), or None if it is not one."""
    m = _SUMMARY_PROMPT.match(prompt)
    return None if m is None else m["post"]


class RuleJudgeServer:
    """OpenAI-compatible ``POST /v1/chat/completions`` on ``127.0.0.1:<free port>``.

    Args:
        score: ``score(post, summary) -> float``; the summary with the higher score is preferred
            (ties go to A). Default :func:`overlap_score`.
        respond: ``respond(prompt) -> str`` overriding the whole answer (e.g. for generation prompts);
            when given, ``score`` is not used.
        fail_first: answer the first ``fail_first`` requests with HTTP ``fail_status`` (an OpenAI-style
            error body) before answering normally.
        fail_status: the status used by ``fail_first`` (408, 409, 429 rate limit, or a 5xx server error).
        fail_code: the error body's ``code`` of those failures (e.g. ``insufficient_quota``); "" = none.
        fail_headers: headers sent with those failures (e.g. ``{"retry-after-ms": "10"}``).
        malformed: ``malformed(prompt) -> bool``; when True the answer has no valid ``Preferred:`` line.
        write: ``write(post, k) -> str``, the stand-in writer of two-word summaries: a two-word summary-writing
            prompt (App. B.1) is answered ``Summary: <write(post, k)>`` where k is the request's ``seed`` (the
            judge client sends seed + sample index, so the two samples of one post differ and each always gets
            the same text, whatever order concurrent requests arrive in); without a seed, k counts the earlier
            requests of the same prompt. None: such prompts get the "could not find" answer.
        host: a loopback address; anything else raises ValueError.
        port: 0 = a free port chosen by the OS.

    Attributes (read them after requests): ``n_requests`` (every POST, failed ones included),
    ``n_answered`` (200 answers), ``prompts`` (the user message of every answered request, in order).
    """

    def __init__(
        self,
        score: Callable[[str, str], float] = overlap_score,
        *,
        respond: Callable[[str], str] | None = None,
        fail_first: int = 0,
        fail_status: int = 429,
        fail_code: str = "",
        fail_headers: dict[str, str] | None = None,
        malformed: Callable[[str], bool] | None = None,
        write: Callable[[str, int], str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ):
        if host not in LOOPBACK_HOSTS:
            raise ValueError(
                f"RuleJudgeServer(host={host!r}): only loopback addresses {LOOPBACK_HOSTS} are allowed; "
                "this test server must not be reachable from other machines."
            )
        if fail_first < 0:
            raise ValueError(f"RuleJudgeServer(fail_first={fail_first}): must be >= 0.")
        if not (fail_status in (408, 409, 429) or 500 <= fail_status <= 599):
            raise ValueError(
                f"RuleJudgeServer(fail_status={fail_status}): use 408, 409, 429 (rate limit) or a 5xx server error."
            )
        self.score, self.respond, self.malformed, self.write = score, respond, malformed, write
        self._written: dict[str, int] = {}
        self.fail_first, self.fail_status = fail_first, fail_status
        self.fail_code, self.fail_headers = fail_code, dict(fail_headers or {})
        self.requests: list[dict] = []
        """The JSON body of every well-formed request, in order (model, sampling parameters, messages)."""
        self.n_requests = 0
        self.n_answered = 0
        self.prompts: list[str] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer((host, port), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """The ``base_url`` to give the openai client, e.g. ``http://127.0.0.1:40123/v1``."""
        host, port = self._httpd.server_address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/v1"

    def start(self) -> "RuleJudgeServer":
        if self._thread is None:
            self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> "RuleJudgeServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- answering -------------------------------------------------------------------------------
    def answer(self, prompt: str, seed: int | None = None) -> str:
        """The assistant message for ``prompt`` (no failure injection); ``seed``: the request's seed, if any."""
        if self.respond is not None:
            return self.respond(prompt)
        if self.write is not None and (post := split_summary_prompt(prompt)) is not None:
            with self._lock:
                k = self._written.get(prompt, 0)
                self._written[prompt] = k + 1
            return f"Summary: {self.write(post, k if seed is None else int(seed))}"
        if self.malformed is not None and self.malformed(prompt):
            return "Comparison: Both summaries are fine.\nPreferred: both"
        split = split_judge_prompt(prompt)
        if split is None:
            return "Comparison: I could not find a post and two summaries.\nPreferred: none"
        post, a, b = split
        choice = "A" if self.score(post, a) >= self.score(post, b) else "B"
        return f"Comparison: Summary {choice} scores higher under the rule.\nPreferred: {choice}"

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def _send(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                with server._lock:
                    server.n_requests += 1
                    fail = server.n_requests <= server.fail_first
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"unknown path {self.path}", "type": "not_found"}})
                    return
                if fail:
                    kind = "rate_limit_error" if server.fail_status == 429 else "server_error"
                    error = {"message": "injected failure", "type": kind, "code": server.fail_code or None}
                    self._send(server.fail_status, {"error": error}, server.fail_headers)
                    return
                try:
                    req = json.loads(raw)
                    prompt = "\n".join(m["content"] for m in req["messages"] if m["role"] == "user")
                except (ValueError, KeyError, TypeError) as e:
                    self._send(400, {"error": {"message": f"bad request: {e}", "type": "invalid_request"}})
                    return
                with server._lock:
                    server.requests.append(req)
                content = server.answer(prompt, req.get("seed"))
                with server._lock:
                    server.n_answered += 1
                    server.prompts.append(prompt)
                    n = server.n_answered
                prompt_tokens, completion_tokens = len(prompt.split()), len(content.split())
                self._send(200, {
                    "id": f"chatcmpl-local-{n}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": f"{req.get('model', 'rule-judge')}-snapshot",
                    "system_fingerprint": "fp_loopback",
                    "choices": [{
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                        "logprobs": None,
                    }],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion_tokens,
                        "total_tokens": prompt_tokens + completion_tokens,
                    },
                })

        return Handler
