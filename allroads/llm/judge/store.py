r"""The judge's local files: the sqlite answer cache and the JSONL usage log.

Every failure to open, read or write them (``sqlite3.Error``, ``OSError``: a full disk, a read-only file or
directory, a path through a file) is raised as :class:`~allroads.llm.judge.errors.JudgeCacheError` naming the file
and the operation, so that it is never mistaken for a failed judge request.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path

from allroads.llm.judge.errors import JudgeCacheError

__all__ = ["ResponseCache", "UsageLog"]

CACHE = "judge answer cache"
LOG = "judge usage log"


class ResponseCache:
    """Append-only sqlite cache of judge answers; safe to share between threads of one process.

    Each ``put`` is one committed transaction, so an interrupted run keeps every answer it paid for. The
    stored row holds the model, the prompt, the answer and its usage — never credentials. Any sqlite or OS error
    raises :class:`~allroads.llm.judge.errors.JudgeCacheError` (``operation`` ``"open"``, ``"read"`` or ``"write"``).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self._lock = threading.Lock()
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, model TEXT, prompt TEXT, "
                "content TEXT, usage TEXT, created REAL)"
            )
        except (sqlite3.Error, OSError) as exc:
            raise JudgeCacheError(CACHE, self.path, "open", exc) from exc

    @staticmethod
    def key(model: str, temperature: float, max_tokens: int, sample_index: int, prompt: str, endpoint: str = "") -> str:
        """SHA-256 of the request; ``endpoint`` (:func:`~allroads.llm.judge.client.endpoint_id`) is left out for
        OpenAI's, as keys were before endpoints were part of them."""
        parts = [model, temperature, max_tokens, sample_index, prompt] + ([endpoint] if endpoint else [])
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()

    def get(self, key: str) -> tuple[str, dict] | None:
        """The cached ``(answer, usage)`` under ``key``, or None."""
        try:
            with self._lock:
                row = self._db.execute("SELECT content, usage FROM answers WHERE key = ?", (key,)).fetchone()
        except (sqlite3.Error, OSError) as exc:
            raise JudgeCacheError(CACHE, self.path, "read", exc) from exc
        return None if row is None else (row[0], json.loads(row[1]))

    def put(self, key: str, model: str, prompt: str, content: str, usage: dict, *, replace: bool = False) -> None:
        """Store an answer; an existing one under ``key`` is kept unless ``replace`` (a re-asked unusable answer)."""
        try:
            with self._lock:
                self._db.execute(
                    f"INSERT OR {'REPLACE' if replace else 'IGNORE'} INTO answers VALUES (?, ?, ?, ?, ?, ?)",
                    (key, model, prompt, content, json.dumps(usage), time.time()),
                )
        except (sqlite3.Error, OSError) as exc:
            raise JudgeCacheError(CACHE, self.path, "write", exc) from exc

    def __len__(self) -> int:
        try:
            with self._lock:
                return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
        except (sqlite3.Error, OSError) as exc:
            raise JudgeCacheError(CACHE, self.path, "read", exc) from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()


class UsageLog:
    """Append-only JSONL log, one line per paid request; unbuffered, so each line is on disk (or its failure
    raised as :class:`~allroads.llm.judge.errors.JudgeCacheError`) when :meth:`write` returns."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self._lock = threading.Lock()
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab", buffering=0)
        except OSError as exc:
            raise JudgeCacheError(LOG, self.path, "open", exc) from exc

    def write(self, line: dict) -> None:
        """Append ``line`` as one JSON line."""
        data = (json.dumps(line) + "\n").encode()
        try:
            with self._lock:
                while data:  # a raw write may write less than asked
                    data = data[self._file.write(data):]
        except OSError as exc:
            raise JudgeCacheError(LOG, self.path, "write", exc) from exc

    def close(self) -> None:
        with self._lock:
            self._file.close()
