r"""The judge's connection to an OpenAI-compatible chat API: config, client, answer cache and usage log.

* :class:`JudgeConfig` — the model (a dated snapshot by default, :data:`DEFAULT_JUDGE_MODEL`), prompt variant,
  seed, sampling parameters, retries, cache and log paths.
* :func:`make_client` — an ``openai.OpenAI`` client that retries as the openai client does (408, 409, 429, 5xx
  and connection errors; ``retry-after-ms`` / ``retry-after`` honoured; exponential backoff with jitter; at most
  ``max_retries`` times) except on a 429 whose error code is ``insufficient_quota``: no retry can succeed then,
  so it fails at once (a response hook marks it ``x-should-retry: false``, which the client obeys).
* :class:`ResponseCache` — sqlite answers keyed by endpoint, model, sampling parameters and prompt.
* :class:`ChatClient` — one chat completion through the cache, with a JSONL usage log (tokens, the model that
  answered, ``system_fingerprint``). The API key is never logged or written to disk.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from allroads.llm.core.config import DEFAULT_JUDGE_MODEL

__all__ = ["DEFAULT_JUDGE_MODEL", "OPENAI_BASE_URL", "JUDGE_VARIANTS", "JudgeConfig", "make_client", "ResponseCache",
           "ChatReply", "ChatClient", "endpoint_id"]

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
    timeout_s: float = 120.0
    """HTTP timeout of one request, seconds."""
    cache_path: str = ""
    """sqlite file of answers (key: endpoint, model, temperature, token budget, sample index, prompt); "" = none."""
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
        for name in ("max_completion_tokens", "max_workers"):
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


class ResponseCache:
    """Append-only sqlite cache of judge answers; safe to share between threads of one process.

    Each ``put`` is one committed transaction, so an interrupted run keeps every answer it paid for. The
    stored row holds the model, the prompt, the answer and its usage — never credentials.
    """

    def __init__(self, path: str | os.PathLike):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, model TEXT, prompt TEXT, "
            "content TEXT, usage TEXT, created REAL)"
        )

    @staticmethod
    def key(model: str, temperature: float, max_tokens: int, sample_index: int, prompt: str, endpoint: str = "") -> str:
        """SHA-256 of the request; ``endpoint`` (:func:`endpoint_id`) is left out for OpenAI's, as keys were
        before endpoints were part of them."""
        parts = [model, temperature, max_tokens, sample_index, prompt] + ([endpoint] if endpoint else [])
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()

    def get(self, key: str) -> tuple[str, dict] | None:
        with self._lock:
            row = self._db.execute("SELECT content, usage FROM answers WHERE key = ?", (key,)).fetchone()
        return None if row is None else (row[0], json.loads(row[1]))

    def put(self, key: str, model: str, prompt: str, content: str, usage: dict, *, replace: bool = False) -> None:
        """Store an answer; an existing one under ``key`` is kept unless ``replace`` (a re-asked unusable answer)."""
        with self._lock:
            self._db.execute(
                f"INSERT OR {'REPLACE' if replace else 'IGNORE'} INTO answers VALUES (?, ?, ?, ?, ?, ?)",
                (key, model, prompt, content, json.dumps(usage), time.time()),
            )

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


@dataclass(frozen=True)
class ChatReply:
    """One judge answer: its text, whether it came from the cache, the API's token usage."""

    content: str
    cached: bool
    usage: dict


class ChatClient:
    """Chat completions of single user messages through the cache, with a usage log.

    Args:
        cfg: :class:`JudgeConfig`.
        client: an ``openai.OpenAI`` instance to use instead of :func:`make_client` ``(cfg)`` (build it with
            :func:`make_client` to keep the retry behaviour).
    """

    def __init__(self, cfg: JudgeConfig, *, client=None):
        self.cfg = cfg
        self.client = client if client is not None else make_client(cfg)
        self.endpoint = endpoint_id(str(getattr(self.client, "base_url", "")))
        self.cache = ResponseCache(cfg.cache_path) if cfg.cache_path else None
        self._log_lock = threading.Lock()
        self._log = None
        if cfg.usage_log_path:
            Path(cfg.usage_log_path).parent.mkdir(parents=True, exist_ok=True)
            self._log = open(cfg.usage_log_path, "a", encoding="utf-8")

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()
        if self._log is not None:
            self._log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _log_usage(self, prompt: str, usage: dict, sample_index: int, response) -> None:
        if self._log is None:
            return
        line = {"time": time.time(), "model": self.cfg.model, "response_model": getattr(response, "model", None),
                "system_fingerprint": getattr(response, "system_fingerprint", None), "endpoint": self.endpoint,
                "prompt_sha256": hashlib.sha256(prompt.encode()).hexdigest(), "sample_index": sample_index, **usage}
        with self._log_lock:
            self._log.write(json.dumps(line) + "\n")
            self._log.flush()

    def complete(self, prompt: str, *, sample_index: int = 0, temperature: float | None = None,
                 reask_if: Callable[[str], bool] | None = None) -> ChatReply:
        """One chat completion for a single user message, through the cache.

        ``sample_index`` distinguishes repeated samples of the same prompt in the cache (two-word summary
        generation asks twice); ``temperature`` overrides ``cfg.temperature`` for this call; a cached answer
        for which ``reask_if(answer)`` is True (e.g. unparseable) is asked again and replaced. Raises the
        openai exception when the request fails after the client's retries.
        """
        temperature = self.cfg.temperature if temperature is None else temperature
        key = ResponseCache.key(self.cfg.model, temperature, self.cfg.max_completion_tokens, sample_index, prompt,
                                self.endpoint)
        hit = self.cache.get(key) if self.cache is not None else None
        if hit is not None and not (reask_if is not None and reask_if(hit[0])):
            return ChatReply(content=hit[0], cached=True, usage=hit[1])
        response = self.client.chat.completions.create(
            model=self.cfg.model, messages=[{"role": "user", "content": prompt}], temperature=temperature,
            max_completion_tokens=self.cfg.max_completion_tokens, seed=self.cfg.seed + sample_index)
        content = response.choices[0].message.content or ""
        usage = {}
        if response.usage is not None:
            usage = {k: getattr(response.usage, k) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
        self._log_usage(prompt, usage, sample_index, response)
        if self.cache is not None:
            self.cache.put(key, self.cfg.model, prompt, content, usage, replace=hit is not None)
        return ChatReply(content=content, cached=False, usage=usage)
