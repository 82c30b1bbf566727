r"""A tiny local OpenAI-compatible chat server that judges summaries with a Python rule.

It stands in for ``gpt-4o`` (Swamy et al. 2025, Appendix B.4) in tests and offline dry runs: the real
``openai`` client talks to it over loopback HTTP exactly as it would talk to OpenAI. The server reads the
judge prompt of :mod:`allroads.llm.judge.judge` (the ``### Post:`` / ``### Summary A:`` / ``### Summary B:`` /
``### Instructions:`` sections), scores both summaries with a pluggable rule, and answers in the format
the prompt asks for::

    Comparison: <one sentence>
    Preferred: A

so that :func:`allroads.llm.judge.judge.parse_preferred` works on its answers. Like an API that resolves a model alias,
it answers as model ``<requested>-snapshot`` with ``system_fingerprint`` ``fp_loopback``. The tiny and small presets
judge with it (:class:`~allroads.llm.judge.factory.JudgeFactory`); a subclass can count requests or inject failures
by overriding :meth:`RuleJudgeServer.handle` and :meth:`RuleJudgeServer.answer`.

Only loopback addresses are accepted; the server runs in a daemon thread until :meth:`stop` (or the end of
a ``with`` block).

Example::

    with RuleJudgeServer(score=len) as server:          # prefers the longer summary
        client = openai.OpenAI(base_url=server.base_url, api_key="local")
"""
from __future__ import annotations

import itertools
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
        write: ``write(post, k) -> str``, the stand-in writer of two-word summaries: a two-word summary-writing
            prompt (App. B.1) is answered ``Summary: <write(post, k)>`` where k is the request's ``seed`` (the
            judge client sends seed + sample index, so the two samples of one post differ and each always gets
            the same text, whatever order concurrent requests arrive in); without a seed, k counts the earlier
            requests of the same prompt. None: such prompts get the "could not find" answer.
        host: a loopback address; anything else raises ValueError.
        port: 0 = a free port chosen by the OS.
    """

    def __init__(
        self,
        score: Callable[[str, str], float] = overlap_score,
        *,
        respond: Callable[[str], str] | None = None,
        write: Callable[[str, int], str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ):
        if host not in LOOPBACK_HOSTS:
            raise ValueError(
                f"RuleJudgeServer(host={host!r}): only loopback addresses {LOOPBACK_HOSTS} are allowed; "
                "this test server must not be reachable from other machines."
            )
        self.score, self.respond, self.write = score, respond, write
        self._written: dict[str, int] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer((host, port), _handler_class(self))
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
        """The assistant message for ``prompt``; ``seed``: the request's seed, if any."""
        if self.respond is not None:
            return self.respond(prompt)
        if self.write is not None and (post := split_summary_prompt(prompt)) is not None:
            with self._lock:
                k = self._written.get(prompt, 0)
                self._written[prompt] = k + 1
            return f"Summary: {self.write(post, k if seed is None else int(seed))}"
        split = split_judge_prompt(prompt)
        if split is None:
            return "Comparison: I could not find a post and two summaries.\nPreferred: none"
        post, a, b = split
        choice = "A" if self.score(post, a) >= self.score(post, b) else "B"
        return f"Comparison: Summary {choice} scores higher under the rule.\nPreferred: {choice}"

    def handle(self, path: str, body: bytes) -> tuple[int, dict, dict[str, str]]:
        """The HTTP status, JSON body and extra headers of the response to one ``POST`` of ``body`` to ``path``."""
        if path.rstrip("/") != "/v1/chat/completions":
            return 404, {"error": {"message": f"unknown path {path}", "type": "not_found"}}, {}
        try:
            req = json.loads(body)
            prompt = "\n".join(m["content"] for m in req["messages"] if m["role"] == "user")
        except (ValueError, KeyError, TypeError) as e:
            return 400, {"error": {"message": f"bad request: {e}", "type": "invalid_request"}}, {}
        return 200, self.completion(req, self.answer(prompt, req.get("seed"))), {}

    def completion(self, req: dict, content: str) -> dict:
        """The ``chat.completion`` body answering ``req`` with ``content`` (usage: whitespace-separated words)."""
        prompt = "\n".join(m["content"] for m in req["messages"] if m["role"] == "user")
        prompt_tokens, completion_tokens = len(prompt.split()), len(content.split())
        return {
            "id": f"chatcmpl-local-{next(self._ids)}",
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
        }


def _handler_class(server: RuleJudgeServer):
    """The request handler of ``server``: every POST answered by :meth:`RuleJudgeServer.handle`."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            status, body, headers = server.handle(self.path, raw)
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

    return Handler
