r"""The judge's connection to an OpenAI-compatible chat API: config, client, answer cache and usage log.

* :class:`JudgeConfig` — the model (a dated snapshot by default, :data:`DEFAULT_JUDGE_MODEL`), prompt variant,
  seed, sampling parameters, retries, the circuit breaker, cache and log paths.
* :func:`make_client` — an ``openai.OpenAI`` client that retries as the openai client does (408, 409, 429, 5xx
  and connection errors; ``retry-after-ms`` / ``retry-after`` honoured; exponential backoff with jitter; at most
  ``max_retries`` times) except on a 429 whose error code is ``insufficient_quota``: no retry can succeed then,
  so it fails at once (a response hook marks it ``x-should-retry: false``, which the client obeys).
* :class:`~allroads.llm.judge.store.ResponseCache` — sqlite answers keyed by endpoint, model, sampling parameters
  and prompt (:mod:`allroads.llm.judge.store`, with the usage log).
* :class:`ChatClient` — one chat completion through the cache, with a JSONL usage log (tokens, the model that
  answered, ``system_fingerprint``), and :meth:`ChatClient.map_requests`, a batch of them on a thread pool that
  stops at once on :class:`~allroads.llm.judge.errors.JudgeCacheError` (a local file fault) or
  :class:`~allroads.llm.judge.errors.JudgeUnavailable` (``max_consecutive_failures`` failed requests in a row).
  The API key is never logged or written to disk.
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar
from urllib.parse import urlsplit

from allroads.llm.core.config import DEFAULT_JUDGE_MODEL
from allroads.llm.judge.errors import JudgeCacheError, JudgeStopped, JudgeUnavailable, describe_error
from allroads.llm.judge.store import ResponseCache, UsageLog

__all__ = ["DEFAULT_JUDGE_MODEL", "OPENAI_BASE_URL", "JUDGE_VARIANTS", "JudgeConfig", "make_client", "ResponseCache",
           "ChatReply", "ChatClient", "endpoint_id", "JudgeCacheError", "JudgeStopped", "JudgeUnavailable"]

OPENAI_BASE_URL = "https://api.openai.com/v1"
"""OpenAI's endpoint; answers cached for it before endpoints were part of the cache key stay readable."""

JUDGE_VARIANTS = ("standard", "two_word")
"""The B.4 prompts: standard summaries, two-word summaries (Fig. 10)."""


@dataclass(frozen=True)
class JudgeConfig:
    """How to query the judge. Defaults follow Appendix B.4 where it says something."""

    model: str = DEFAULT_JUDGE_MODEL
    """Judge model sent to the API: B.4's ``gpt-4o`` pinned to a dated snapshot (:data:`DEFAULT_JUDGE_MODEL`), so
    that answers do not change when OpenAI moves the alias."""
    variant: str = "standard"
    """Which B.4 prompt: ``"standard"`` or ``"two_word"`` (Fig. 10)."""
    seed: int = 0
    """Seed of the A/B order of each pair (a function of seed, post and the two texts) and of the ``seed`` sent to
    the API (best-effort determinism of its sampling: sample k of one prompt is requested with seed + k, so
    repeated samples are distinct and each reproducible); recorded in every result."""
    temperature: float = 0.0
    """Judge sampling temperature; the paper does not state it, 0 makes answers as repeatable as the API allows."""
    max_completion_tokens: int = 256
    """Completion token budget of one judge answer (one sentence + the ``Preferred:`` line)."""
    max_workers: int = 8
    """Concurrent requests (threads)."""
    max_retries: int = 6
    """Retries of one request by the openai client (:func:`make_client`); then the pair is an error."""
    max_consecutive_failures: int = 5
    """Circuit breaker: after this many requests in a row that failed after all their retries (connection refused,
    timeouts, 5xx, 429, 401/403/404; not a 400/413/422 refusal of one request, which says nothing about the
    endpoint), the batch stops with :class:`~allroads.llm.judge.errors.JudgeUnavailable` instead of spending every
    remaining pair's retries on a dead endpoint. One success resets the count."""
    timeout_s: float = 120.0
    """HTTP timeout of one request, seconds."""
    cache_path: str = ""
    """sqlite file of answers (key: endpoint, model, temperature, token budget, sample index, prompt); "" = none.
    A file that cannot be opened, read or written stops judging with
    :class:`~allroads.llm.judge.errors.JudgeCacheError`."""
    usage_log_path: str = ""
    """JSONL file, one line per paid API call with its token usage and the answering model; "" = no log."""
    base_url: str = ""
    """API base URL; "" = ``OPENAI_BASE_URL`` from the environment, else OpenAI's."""

    def __post_init__(self):
        problems = []
        if self.variant not in JUDGE_VARIANTS:
            problems.append(f"variant={self.variant!r} (use one of {sorted(JUDGE_VARIANTS)})")
        if not self.model:
            problems.append("model='' (name the judge model)")
        if self.temperature < 0:
            problems.append(f"temperature={self.temperature} (must be >= 0)")
        for name in ("max_completion_tokens", "max_workers", "max_consecutive_failures"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} (must be >= 1)")
        if self.max_retries < 0:
            problems.append(f"max_retries={self.max_retries} (must be >= 0)")
        if self.timeout_s <= 0:
            problems.append(f"timeout_s={self.timeout_s} (must be > 0)")
        if problems:
            raise ValueError("JudgeConfig: invalid " + "; ".join(problems) + ".")


def _no_retry_without_quota(response) -> None:
    """Response hook: a 429 with error code ``insufficient_quota`` gets ``x-should-retry: false``."""
    if response.status_code != 429:
        return
    response.read()
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        return
    if isinstance(error, dict) and error.get("code") == "insufficient_quota":
        response.headers["x-should-retry"] = "false"


def make_client(cfg: JudgeConfig, *, base_url: str | None = None, api_key: str | None = None):
    """An ``openai.OpenAI`` client with ``cfg``'s retries and timeout that never retries ``insufficient_quota``.

    ``base_url`` / ``api_key`` default to ``cfg.base_url`` and the environment (``OPENAI_BASE_URL``,
    ``OPENAI_API_KEY``); a missing key raises ValueError before any request.
    """
    import openai

    api_key = api_key or os.environ.get("OPENAI_API_KEY")
    if not api_key:
        raise ValueError("Judge: OPENAI_API_KEY is not set. Export it (any non-empty string for a local "
                         "OpenAI-compatible server) and, for a non-OpenAI server, OPENAI_BASE_URL or JudgeConfig.base_url.")
    http = openai.DefaultHttpxClient(event_hooks={"response": [_no_retry_without_quota]})
    return openai.OpenAI(base_url=base_url or cfg.base_url or None, api_key=api_key, max_retries=cfg.max_retries,
                         timeout=cfg.timeout_s, http_client=http)


def endpoint_id(base_url: str) -> str:
    """The endpoint part of a cache key: ``""`` for OpenAI's (so earlier answers stay readable), the URL without
    its port for a loopback server (a local stand-in takes a free port per run), else the URL."""
    url = str(base_url).rstrip("/")
    if url in ("", OPENAI_BASE_URL):
        return ""
    parts = urlsplit(url)
    if parts.hostname in ("127.0.0.1", "localhost", "::1"):
        return f"{parts.scheme}://loopback{parts.path}"
    return url


@dataclass(frozen=True)
class ChatReply:
    """One judge answer: its text, whether it came from the cache, the API's token usage."""

    content: str
    cached: bool
    usage: dict




REQUEST_REFUSED = (400, 413, 422)
"""HTTP statuses that refuse one request (its content or size), not the endpoint: not counted by the breaker."""

Job = TypeVar("Job")
Result = TypeVar("Result")


class ChatClient:
    """Chat completions of single user messages through the cache, with a usage log and a circuit breaker.

    A local file fault (cache or log; :class:`~allroads.llm.judge.errors.JudgeCacheError`) or
    ``cfg.max_consecutive_failures`` failed requests in a row (:class:`~allroads.llm.judge.errors.JudgeUnavailable`)
    stops this client: every later :meth:`complete` raises the same error at once, until the next
    :meth:`map_requests` batch starts afresh.

    Args:
        cfg: :class:`JudgeConfig`.
        client: an ``openai.OpenAI`` instance to use instead of :func:`make_client` ``(cfg)`` (build it with
            :func:`make_client` to keep the retry behaviour).
    """

    def __init__(self, cfg: JudgeConfig, *, client=None):
        self.cfg = cfg
        self.client = client if client is not None else make_client(cfg)
        self.base_url = str(getattr(self.client, "base_url", ""))
        self.endpoint = endpoint_id(self.base_url)
        self.cache = ResponseCache(cfg.cache_path) if cfg.cache_path else None
        try:
            self._log = UsageLog(cfg.usage_log_path) if cfg.usage_log_path else None
        except JudgeCacheError:
            self.close()
            raise
        self._state = threading.Lock()
        self._failures_in_row = 0
        self._stopped: JudgeStopped | None = None
        self._unstored: list[dict] = []

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()
        if getattr(self, "_log", None) is not None:
            self._log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def n_cached(self) -> int | None:
        """Answers in the cache file; None without a cache or when it cannot be read."""
        try:
            return None if self.cache is None else len(self.cache)
        except JudgeCacheError:
            return None

    # --- one request ------------------------------------------------------------------------------
    def complete(self, prompt: str, *, sample_index: int = 0, temperature: float | None = None,
                 reask_if: Callable[[str], bool] | None = None) -> ChatReply:
        """One chat completion for a single user message, through the cache.

        ``sample_index`` distinguishes repeated samples of the same prompt in the cache (two-word summary
        generation asks twice); ``temperature`` overrides ``cfg.temperature`` for this call; a cached answer
        for which ``reask_if(answer)`` is True (e.g. unparseable) is asked again and replaced. Raises the
        openai exception when the request fails after the client's retries;
        :class:`~allroads.llm.judge.errors.JudgeCacheError` when the cache or the log fails (the answer is then
        still written where it can be: the log, the cache, ``error.unstored``);
        :class:`~allroads.llm.judge.errors.JudgeUnavailable` when this was the ``max_consecutive_failures``-th
        failed request in a row, or when the client has stopped.
        """
        with self._state:
            if self._stopped is not None:
                raise self._stopped
        try:
            return self._complete(prompt, sample_index, self.cfg.temperature if temperature is None else temperature,
                                  reask_if)
        except JudgeStopped as err:
            with self._state:
                self._stopped = self._stopped or err
            raise self._finish(err, [])

    def _complete(self, prompt: str, sample_index: int, temperature: float, reask_if) -> ChatReply:
        key = ResponseCache.key(self.cfg.model, temperature, self.cfg.max_completion_tokens, sample_index, prompt,
                                self.endpoint)
        hit = self.cache.get(key) if self.cache is not None else None
        if hit is not None and not (reask_if is not None and reask_if(hit[0])):
            return ChatReply(content=hit[0], cached=True, usage=hit[1])
        response = self._request(prompt, sample_index, temperature)
        content = response.choices[0].message.content or ""
        usage = {}
        if response.usage is not None:
            usage = {k: getattr(response.usage, k) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
        self._keep(key, prompt, content, usage, sample_index, response, replace=hit is not None)
        return ChatReply(content=content, cached=False, usage=usage)

    def _request(self, prompt: str, sample_index: int, temperature: float):
        """The API call, counted by the circuit breaker."""
        try:
            response = self.client.chat.completions.create(
                model=self.cfg.model, messages=[{"role": "user", "content": prompt}], temperature=temperature,
                max_completion_tokens=self.cfg.max_completion_tokens, seed=self.cfg.seed + sample_index)
        except Exception as exc:
            if getattr(exc, "status_code", None) not in REQUEST_REFUSED:
                with self._state:
                    self._failures_in_row += 1
                    n = self._failures_in_row
                if n >= self.cfg.max_consecutive_failures:
                    raise JudgeUnavailable(self.base_url, n, describe_error(exc), cache_path=self.cfg.cache_path,
                                           retries=getattr(self.client, "max_retries", self.cfg.max_retries)) from exc
            raise
        with self._state:
            self._failures_in_row = 0
        return response

    def _keep(self, key: str, prompt: str, content: str, usage: dict, sample_index: int, response, *,
              replace: bool) -> None:
        """Write a paid answer to the cache and the usage log; each is tried even when the other fails, then the
        first failure is raised (an answer the cache could not take is kept in the error's ``unstored``)."""
        failures = []
        if self.cache is not None:
            try:
                self.cache.put(key, self.cfg.model, prompt, content, usage, replace=replace)
            except JudgeCacheError as err:
                with self._state:
                    self._unstored.append({"prompt": prompt, "content": content, "usage": usage})
                failures.append(err)
        if self._log is not None:
            line = {"time": time.time(), "model": self.cfg.model, "response_model": getattr(response, "model", None),
                    "system_fingerprint": getattr(response, "system_fingerprint", None), "endpoint": self.endpoint,
                    "prompt_sha256": hashlib.sha256(prompt.encode()).hexdigest(), "sample_index": sample_index,
                    **usage}
            try:
                self._log.write(line)
            except JudgeCacheError as err:
                failures.append(err)
        if failures:
            raise failures[0]

    # --- a batch ----------------------------------------------------------------------------------
    def map_requests(self, fn: Callable[[Job], Result], jobs: Sequence[Job]) -> list[Result]:
        """``[fn(job) for job in jobs]`` on ``cfg.max_workers`` threads, where ``fn`` calls :meth:`complete`.

        ``fn`` records ordinary request failures itself; a :class:`~allroads.llm.judge.errors.JudgeStopped` it lets
        through stops the batch at once: jobs not yet started never run, requests in flight finish, and the
        first such error is raised with ``n_cached``, ``completed`` (the results of the finished jobs) and, for a
        cache error, ``unstored`` filled in. The circuit breaker starts afresh with each batch.
        """
        with self._state:
            self._stopped, self._failures_in_row = None, 0
        pool = ThreadPoolExecutor(max_workers=self.cfg.max_workers)
        try:
            futures = [pool.submit(fn, job) for job in jobs]
            wait(futures, return_when=FIRST_EXCEPTION)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        finished = [f for f in futures if not f.cancelled()]
        if self._stopped is not None:
            raise self._finish(self._stopped, [f.result() for f in finished if f.exception() is None])
        for f in finished:
            if f.exception() is not None:
                raise f.exception()
        return [f.result() for f in futures]

    def _finish(self, err: JudgeStopped, completed: list) -> JudgeStopped:
        """``err`` with the batch's final counts."""
        err.n_cached, err.completed = self.n_cached(), tuple(completed)
        if isinstance(err, JudgeCacheError):
            with self._state:
                err.unstored = list(self._unstored)
        return err
