r"""Why the judge stopped: a local file it cannot use, or an endpoint that keeps failing.

A judged pair whose request fails is recorded and counted (``PairwiseResult.errors``) and a rerun asks it again.
Two faults are not like that, and stop a whole batch of requests at once instead:

* :class:`JudgeCacheError` — the judge's own files (the sqlite answer cache, the JSONL usage log) cannot be
  opened, read or written: a full disk, a read-only file or directory, a path through a file. Every further
  answer would be paid for and then lost, so nothing more is asked.
* :class:`JudgeUnavailable` — the endpoint failed ``JudgeConfig.max_consecutive_failures`` requests in a row
  (after the client's retries): it is down, unreachable or refuses every request, and asking the remaining pairs
  would only spend their retries.

Both derive from :class:`JudgeStopped`; both say how many answers are safely cached (a rerun asks only the others).
"""
from __future__ import annotations

import errno

__all__ = ["JudgeStopped", "JudgeCacheError", "JudgeUnavailable", "describe_error"]


def describe_error(exc: BaseException) -> str:
    """``"Type (code): message"`` of ``exc`` followed by its causes, e.g. ``"APIConnectionError: Connection error.
    (caused by ConnectError: [Errno 111] Connection refused)"``; a cause repeating the text before it is skipped."""
    code = getattr(exc, "code", None)
    text = f"{type(exc).__name__}{f' ({code})' if isinstance(code, str) and code else ''}: {exc}"
    seen, causes = {str(exc)}, []
    cause = _cause(exc)
    while cause is not None and len(causes) < 4:
        if str(cause) not in seen:
            seen.add(str(cause))
            causes.append(f"{type(cause).__name__}: {cause}")
        cause = _cause(cause)
    return text + "".join(f" (caused by {c})" for c in causes)


def _cause(exc: BaseException) -> BaseException | None:
    """What Python's traceback would show as the cause: ``raise ... from`` first, else the context unless
    suppressed (``from None``)."""
    if exc.__cause__ is not None:
        return exc.__cause__
    return None if exc.__suppress_context__ else exc.__context__


def _cached_text(n_cached: int | None) -> str:
    return "the answers in the cache could not be counted" if n_cached is None else \
        f"{n_cached} answers are safely cached"


class JudgeStopped(Exception):
    """A fault that stops a batch of judge requests at once (see the module docstring).

    Attributes set by the batch that stopped (:meth:`allroads.llm.judge.client.ChatClient.map_requests`):
    ``n_cached`` (answers in the cache file when it stopped; None when there is no cache or it cannot be read) and
    ``completed`` (the results of the jobs that finished before the stop, in job order); :meth:`Judge.compare
    <allroads.llm.judge.judge.Judge.compare>` adds ``partial``, those pairs as a ``PairwiseResult``."""

    n_cached: int | None = None
    completed: tuple = ()


class JudgeCacheError(JudgeStopped, ValueError):
    """The judge's answer cache or usage log could not be opened, read or written; never a failed judge request.

    Attributes: ``what`` (``"judge answer cache"`` / ``"judge usage log"``), ``path``, ``operation`` (``"open"``,
    ``"read"``, ``"write"``), ``cause`` (the sqlite3 or OS error), ``n_cached`` and ``unstored``: the answers
    received in this run that could not be stored (dicts with ``prompt``, ``content``, ``usage``), kept here so
    that a caller can still use them.
    """

    def __init__(self, what: str, path: str, operation: str, cause: BaseException):
        super().__init__(what, path, operation, cause)
        self.what, self.path, self.operation, self.cause = what, str(path), operation, cause
        self.unstored: list[dict] = []

    @property
    def hint(self) -> str:
        """The likely reason, from the cause."""
        code, text = getattr(self.cause, "errno", None), str(self.cause).lower()
        if code == errno.ENOSPC or "full" in text:
            return "disk full?"
        if code in (errno.EACCES, errno.EPERM, errno.EROFS) or "readonly" in text or "read-only" in text:
            return "read-only file or directory?"
        if isinstance(self.cause, (NotADirectoryError, FileExistsError)):
            return "is a part of the path a file?"
        return "disk full, or no permission?"

    def __str__(self) -> str:
        return (f"{self.what} {self.path}: could not {self.operation} ({self.hint}): {describe_error(self.cause)}; "
                f"{_cached_text(self.n_cached)}, {len(self.unstored)} answers received in this run could not be "
                "stored. Judging stopped (this is not a failed judge request): free space or fix the file's "
                "permissions, then rerun; cached answers are not asked again.")


class JudgeUnavailable(JudgeStopped, RuntimeError):
    """The judge endpoint failed ``n_failures`` requests in a row (``JudgeConfig.max_consecutive_failures``).

    Attributes: ``endpoint`` (the base URL asked), ``n_failures``, ``last_error`` (:func:`describe_error` of the
    last failure), ``retries`` (the client's retries of each request), ``cache_path`` ("" = no cache), ``n_cached``.
    """

    def __init__(self, endpoint: str, n_failures: int, last_error: str, *, retries: int, cache_path: str = ""):
        super().__init__(endpoint, n_failures, last_error)
        self.endpoint, self.n_failures, self.last_error = endpoint, n_failures, last_error
        self.retries, self.cache_path = retries, cache_path

    def __str__(self) -> str:
        where = f" in {self.cache_path}" if self.cache_path else " (no answer cache configured)"
        return (f"judge endpoint {self.endpoint or '(default)'} failed {self.n_failures} requests in a row (each after "
                f"{self.retries} retries); last error: {self.last_error}. Judging stopped: "
                f"{_cached_text(self.n_cached)}{where}, a rerun asks only the others. Check that the server is up "
                "and reachable (OPENAI_BASE_URL / JudgeConfig.base_url, OPENAI_API_KEY), or raise "
                "JudgeConfig.max_consecutive_failures.")
