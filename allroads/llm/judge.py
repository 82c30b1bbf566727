r"""Pairwise LLM judge over an OpenAI-compatible chat API (Swamy et al. 2025, Appendix B.4).

The paper reports win rates of policy summaries against the TL;DR reference summaries as judged by
``gpt-4o`` with the prompts of Appendix B.4 (standard, and two-word for Fig. 10), uses the same judge to
label pairs of SFT samples for the "GPT-label" data of Fig. 6 (Appendix B.1), and has ``gpt-4o`` write and
rank two-word summaries for Fig. 10 (Appendix B.1). This module provides

* the prompts, verbatim from the paper (:data:`STANDARD_JUDGE_TEMPLATE`, :data:`TWO_WORD_JUDGE_TEMPLATE`,
  :data:`TWO_WORD_SUMMARY_TEMPLATE`) and :func:`render_judge_prompt`;
* :func:`parse_preferred`: the strict ``Preferred:`` parser (exactly one such line whose value is exactly
  ``A`` or ``B``; anything else is unparseable and counted, never guessed);
* :class:`Judge`: the ``openai`` client (``OPENAI_BASE_URL`` / ``OPENAI_API_KEY`` from the environment,
  so any OpenAI-compatible server works), a thread pool, deterministic exponential backoff on 429 / 5xx /
  connection errors, an sqlite cache keyed by (model, sampling parameters, prompt) so that a rerun pays for
  nothing twice, and a JSONL token-usage log. The API key is never logged or written to disk;
* :meth:`Judge.compare` with the A/B order randomised per pair from a recorded seed, and the helpers
  :func:`judge_win_rate`, :func:`gpt_label_dataset` (Fig. 6), :func:`two_word_preference_dataset` and
  :func:`generate_two_word_summaries` (Fig. 10), which take already-sampled texts.

Two reading decisions about the paper's prompt text, both applied by :func:`render_judge_prompt`:
the lines ending in ``" \"`` are Python line continuations in the authors' source (the prompt of Rafailov
et al. 2023, App. C.2, which this one extends, has those sentences on one line), so backslash-newline is
removed; and the Markdown code fence around the post/summaries/instructions block is typesetting, so the
sent prompt is the first paragraph, a blank line, then the block's content.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

__all__ = [
    "STANDARD_JUDGE_TEMPLATE", "TWO_WORD_JUDGE_TEMPLATE", "TWO_WORD_SUMMARY_TEMPLATE",
    "render_judge_prompt", "render_two_word_summary_prompt", "parse_preferred", "parse_summary",
    "JudgeConfig", "Judge", "ChatReply", "PairRecord", "PairwiseResult", "ResponseCache",
    "judge_win_rate", "preference_rows", "gpt_label_dataset", "two_word_preference_dataset",
    "generate_two_word_summaries",
]

# ------------------------------------------------------------------------------------------------
# Prompts: verbatim from the paper text (Appendix B.4 and B.1); do not edit.
# ------------------------------------------------------------------------------------------------
_JUDGE_BLOCK = r'''### Post:
{{post}}

### Summary A:
{{summarya}}

### Summary B:
{{summaryb}}

### Instructions:
FIRST provide a one-sentence comparison of the two summaries, explaining which \
you prefer and why. SECOND, on a new line, state only "A" or "B" to indicate your \
choice. Your response should use the format:
Comparison: <one-sentence comparison and explanation>
Preferred: <"A" or "B">'''

STANDARD_JUDGE_TEMPLATE = (
    "Which of the following summaries does a better job of summarizing the most important points in the "
    "given forum post, without including unimportant or irrelevant details? Judge based on accuracy, "
    "coverage, and coherence.\n\n" + _JUDGE_BLOCK
)
"""Appendix B.4, standard summarization win rates (Figs. 3, 5, 6, 8, 9): first paragraph + fenced block."""

TWO_WORD_JUDGE_TEMPLATE = (
    "Which of the following two-word summaries does a better job of summarizing the most important points "
    "in the given forum post, without including unimportant or irrelevant details? Judge based on accuracy, "
    "coverage, and coherence.\n\n" + _JUDGE_BLOCK
)
"""Appendix B.4, two-word summarization (Fig. 10)."""

TWO_WORD_SUMMARY_TEMPLATE = '''Given the following forum post, please write a summary of the post of length at
most two words. The summaries should not include any unimportant or
irrelevant details.

### Post:
{{post}}

### Instructions:
Your response should use the format:
Summary: <two-word summary>

Do not include any other text or explanations in your response.'''
"""Appendix B.1, the ``gpt-4o`` prompt that writes the two-word summaries of Fig. 10 (three fenced blocks
and the closing sentence, joined by blank lines)."""

JUDGE_TEMPLATES = {"standard": STANDARD_JUDGE_TEMPLATE, "two_word": TWO_WORD_JUDGE_TEMPLATE}

_PLACEHOLDER = re.compile(r"\{\{(post|summarya|summaryb)\}\}")


def _fill(template: str, values: dict[str, str]) -> str:
    # One pass, so that a post containing "{{summarya}}" is not substituted again.
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template.replace("\\\n", ""))


def render_judge_prompt(post: str, summary_a: str, summary_b: str, *, variant: str = "standard") -> str:
    """The Appendix B.4 judge prompt for one post and the summaries shown as A and B.

    ``variant`` is ``"standard"`` or ``"two_word"`` (Fig. 10). Line continuations of the paper's text are
    joined (see the module docstring); the placeholders are filled in one pass.
    """
    if variant not in JUDGE_TEMPLATES:
        raise ValueError(f"render_judge_prompt(variant={variant!r}): use one of {sorted(JUDGE_TEMPLATES)}.")
    return _fill(JUDGE_TEMPLATES[variant], {"post": post, "summarya": summary_a, "summaryb": summary_b})


def render_two_word_summary_prompt(post: str) -> str:
    """The Appendix B.1 prompt asking ``gpt-4o`` for a two-word summary of ``post`` (Fig. 10 data)."""
    return _fill(TWO_WORD_SUMMARY_TEMPLATE, {"post": post})


def parse_preferred(answer: str) -> str | None:
    """Strictly parse the judge's choice: ``"A"``, ``"B"``, or None when unparseable.

    The answer must contain exactly one line that starts with ``Preferred:`` and the rest of that line,
    stripped of whitespace, must be exactly ``A`` or ``B``. Quotes, ``Summary A``, ``A.``, two
    ``Preferred:`` lines or none at all are unparseable: they are counted by the caller, never guessed.
    """
    lines = [ln.strip() for ln in answer.splitlines() if ln.strip().startswith("Preferred:")]
    if len(lines) != 1:
        return None
    value = lines[0][len("Preferred:"):].strip()
    return value if value in ("A", "B") else None


def parse_summary(answer: str) -> str | None:
    """Parse the ``Summary: <two-word summary>`` answer of :data:`TWO_WORD_SUMMARY_TEMPLATE`.

    Exactly one ``Summary:`` line with a non-empty value, else None. The word count is not enforced
    (the paper asks for "at most two words" and does not say what it did with longer answers).
    """
    lines = [ln.strip() for ln in answer.splitlines() if ln.strip().startswith("Summary:")]
    if len(lines) != 1:
        return None
    value = lines[0][len("Summary:"):].strip()
    return value or None


# ------------------------------------------------------------------------------------------------
# Config, cache, usage log
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JudgeConfig:
    """How to query the judge. Defaults follow Appendix B.4 where it says something."""

    model: str = "gpt-4o"
    """Judge model name sent to the API (B.4: ``gpt-4o``)."""
    variant: str = "standard"
    """Which B.4 prompt: ``"standard"`` or ``"two_word"`` (Fig. 10)."""
    seed: int = 0
    """Seed of the per-pair A/B order (``random.Random(seed)``); recorded in every result."""
    temperature: float = 0.0
    """Judge sampling temperature; the paper does not state it, 0 makes answers as repeatable as the API allows."""
    max_tokens: int = 256
    """Completion token budget of one judge answer (one sentence + the ``Preferred:`` line)."""
    max_workers: int = 8
    """Concurrent requests (threads)."""
    max_retries: int = 6
    """Retries of one request after a 429, a 5xx or a connection error; then the pair is an error."""
    backoff_base_s: float = 1.0
    """Delay before retry k (k = 0, 1, …) is ``min(backoff_max_s, backoff_base_s * 2**k)``, or the
    server's ``Retry-After`` if longer (capped the same way); no jitter, so runs are reproducible."""
    backoff_max_s: float = 60.0
    """Cap of one backoff delay, seconds."""
    timeout_s: float = 120.0
    """HTTP timeout of one request, seconds."""
    cache_path: str = ""
    """sqlite file of answers keyed by (model, temperature, max_tokens, sample index, prompt); "" = no cache."""
    usage_log_path: str = ""
    """JSONL file, one line per paid API call with its token usage; "" = no log."""
    base_url: str = ""
    """API base URL; "" = ``OPENAI_BASE_URL`` from the environment, else OpenAI's."""

    def __post_init__(self):
        problems = []
        if self.variant not in JUDGE_TEMPLATES:
            problems.append(f"variant={self.variant!r} (use one of {sorted(JUDGE_TEMPLATES)})")
        if self.temperature < 0:
            problems.append(f"temperature={self.temperature} (must be >= 0)")
        if self.max_tokens < 1:
            problems.append(f"max_tokens={self.max_tokens} (must be >= 1)")
        if self.max_workers < 1:
            problems.append(f"max_workers={self.max_workers} (must be >= 1)")
        if self.max_retries < 0:
            problems.append(f"max_retries={self.max_retries} (must be >= 0)")
        if self.backoff_base_s < 0 or self.backoff_max_s < 0:
            problems.append("backoff_base_s / backoff_max_s (must be >= 0)")
        if self.timeout_s <= 0:
            problems.append(f"timeout_s={self.timeout_s} (must be > 0)")
        if problems:
            raise ValueError("JudgeConfig: invalid " + "; ".join(problems) + ".")

    def backoff_delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        delay = self.backoff_base_s * 2.0 ** attempt
        if retry_after is not None:
            delay = max(delay, retry_after)
        return min(self.backoff_max_s, delay)


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
    def key(model: str, temperature: float, max_tokens: int, sample_index: int, prompt: str) -> str:
        return hashlib.sha256(json.dumps([model, temperature, max_tokens, sample_index, prompt]).encode()).hexdigest()

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
    """One judge answer: its text, whether it came from the cache, the API's token usage, attempts made."""

    content: str
    cached: bool
    usage: dict
    attempts: int


def _retryable(exc: BaseException) -> bool:
    import openai

    if isinstance(exc, (openai.RateLimitError, openai.APIConnectionError)):  # incl. APITimeoutError
        return True
    return isinstance(exc, openai.APIStatusError) and exc.status_code >= 500


def _retry_after(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    value = None if response is None else response.headers.get("retry-after")
    try:
        return None if value is None else float(value)
    except ValueError:
        return None


# ------------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PairRecord:
    """One judged pair. ``first`` is the candidate (policy sample), ``second`` the reference / other sample."""

    index: int
    """Position of the pair in the inputs."""
    first_is_a: bool
    """True when ``first`` was shown as Summary A (the order is drawn from the result's seed)."""
    preferred: str | None
    """The parsed ``Preferred:`` label, ``"A"``/``"B"``, or None (unparseable or error)."""
    first_wins: bool | None
    """De-randomised outcome; None when unparseable or failed."""
    answer: str
    """The judge's raw answer ("" on error)."""
    cached: bool
    """Whether the answer came from the cache (no request sent)."""
    error: str = ""
    """The last exception's text when all retries failed; "" otherwise."""


@dataclass(frozen=True)
class PairwiseResult:
    """Outcome of :meth:`Judge.compare`: counts from the point of view of ``first``."""

    seed: int
    model: str
    variant: str
    records: tuple[PairRecord, ...] = field(repr=False)

    @property
    def n_pairs(self) -> int:
        return len(self.records)

    @property
    def wins(self) -> int:
        return sum(r.first_wins is True for r in self.records)

    @property
    def losses(self) -> int:
        return sum(r.first_wins is False for r in self.records)

    @property
    def unparseable(self) -> int:
        """Answers received but without a valid ``Preferred:`` line."""
        return sum(r.first_wins is None and not r.error for r in self.records)

    @property
    def errors(self) -> int:
        """Pairs whose request failed after all retries (not cached; a rerun retries them)."""
        return sum(bool(r.error) for r in self.records)

    @property
    def n_cached(self) -> int:
        return sum(r.cached for r in self.records)

    @property
    def decided_win_rate(self) -> float:
        """wins / (wins + losses): unparseable and failed pairs are excluded (and reported by count).
        NaN when no pair was decided."""
        decided = self.wins + self.losses
        return self.wins / decided if decided else float("nan")

    def summary(self) -> dict:
        """JSON-ready counts for logs and result files."""
        return {
            "model": self.model, "variant": self.variant, "seed": self.seed, "n_pairs": self.n_pairs,
            "wins": self.wins, "losses": self.losses, "unparseable": self.unparseable, "errors": self.errors,
            "cached": self.n_cached, "win_rate": self.decided_win_rate,
        }


# ------------------------------------------------------------------------------------------------
# The judge
# ------------------------------------------------------------------------------------------------
class Judge:
    """Queries an OpenAI-compatible chat API with caching, retries and a usage log.

    Args:
        cfg: :class:`JudgeConfig`.
        client: an ``openai.OpenAI`` instance to use instead of building one (its own ``max_retries``
            should be 0, since this class retries). Built from ``cfg.base_url`` / ``OPENAI_BASE_URL`` and
            ``OPENAI_API_KEY`` otherwise; a missing key raises ValueError before any request.
        sleep: the function used to wait between retries (tests pass a recorder).
    """

    def __init__(self, cfg: JudgeConfig, *, client=None, sleep: Callable[[float], None] = time.sleep):
        self.cfg = cfg
        self._sleep = sleep
        if client is None:
            import openai

            if not os.environ.get("OPENAI_API_KEY"):
                raise ValueError(
                    "Judge: OPENAI_API_KEY is not set. Export it (any non-empty string for a local "
                    "OpenAI-compatible server) and, for a non-OpenAI server, OPENAI_BASE_URL or "
                    "JudgeConfig.base_url."
                )
            client = openai.OpenAI(base_url=cfg.base_url or None, max_retries=0, timeout=cfg.timeout_s)
        self.client = client
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

    def __enter__(self) -> "Judge":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _log_usage(self, prompt: str, usage: dict, attempts: int, sample_index: int) -> None:
        if self._log is None:
            return
        line = {
            "time": time.time(), "model": self.cfg.model,
            "prompt_sha256": hashlib.sha256(prompt.encode()).hexdigest(), "sample_index": sample_index,
            "attempts": attempts, **usage,
        }
        with self._log_lock:
            self._log.write(json.dumps(line) + "\n")
            self._log.flush()

    def complete(self, prompt: str, *, sample_index: int = 0, temperature: float | None = None,
                 reask_if: Callable[[str], bool] | None = None) -> ChatReply:
        """One chat completion for a single user message, through the cache.

        ``sample_index`` distinguishes repeated samples of the same prompt in the cache (two-word summary
        generation asks twice); ``temperature`` overrides ``cfg.temperature`` for this call; a cached answer
        for which ``reask_if(answer)`` is True (e.g. unparseable) is asked again and replaced. Raises the
        last openai exception when a non-retryable error occurs or all retries fail.
        """
        temperature = self.cfg.temperature if temperature is None else temperature
        key = ResponseCache.key(self.cfg.model, temperature, self.cfg.max_tokens, sample_index, prompt)
        hit = self.cache.get(key) if self.cache is not None else None
        if hit is not None and not (reask_if is not None and reask_if(hit[0])):
            return ChatReply(content=hit[0], cached=True, usage=hit[1], attempts=0)
        for attempt in range(self.cfg.max_retries + 1):
            try:
                response = self.client.chat.completions.create(
                    model=self.cfg.model,
                    messages=[{"role": "user", "content": prompt}],
                    temperature=temperature,
                    max_tokens=self.cfg.max_tokens,
                )
                break
            except Exception as exc:  # noqa: BLE001 (filtered just below)
                if not _retryable(exc) or attempt == self.cfg.max_retries:
                    raise
                self._sleep(self.cfg.backoff_delay(attempt, _retry_after(exc)))
        content = response.choices[0].message.content or ""
        usage = {}
        if response.usage is not None:
            usage = {k: getattr(response.usage, k) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
        self._log_usage(prompt, usage, attempt + 1, sample_index)
        if self.cache is not None:
            self.cache.put(key, self.cfg.model, prompt, content, usage, replace=hit is not None)
        return ChatReply(content=content, cached=False, usage=usage, attempts=attempt + 1)

    def ab_orders(self, n: int) -> list[bool]:
        """``first_is_a`` for pairs 0..n-1, drawn from ``random.Random(cfg.seed)``: reproducible."""
        rng = random.Random(self.cfg.seed)
        return [rng.random() < 0.5 for _ in range(n)]

    def compare(self, posts: Sequence[str], first: Sequence[str], second: Sequence[str]) -> PairwiseResult:
        """Judge ``first[i]`` against ``second[i]`` on ``posts[i]`` for every i (Appendix B.4).

        The A/B order of each pair is drawn from ``cfg.seed`` and undone when reading the answer, so a
        judge with a position bias does not bias the result. Requests run on ``cfg.max_workers`` threads;
        a pair whose request fails after all retries is recorded with its error and counted, not raised,
        so that the answers already paid for are kept (and cached); check ``result.errors``. An unparseable answer
        is cached and counted, and asked again by the next ``compare`` of the same pair.
        """
        _check_texts("Judge.compare", posts=posts, first=first, second=second)
        orders = self.ab_orders(len(posts))

        def one(i: int) -> PairRecord:
            a, b = (first[i], second[i]) if orders[i] else (second[i], first[i])
            prompt = render_judge_prompt(posts[i], a, b, variant=self.cfg.variant)
            try:
                reply = self.complete(prompt, reask_if=lambda answer: parse_preferred(answer) is None)
            except Exception as exc:  # noqa: BLE001 (recorded in the result, counted in .errors)
                return PairRecord(i, orders[i], None, None, "", False, error=f"{type(exc).__name__}: {exc}")
            label = parse_preferred(reply.content)
            first_wins = None if label is None else (label == "A") == orders[i]
            return PairRecord(i, orders[i], label, first_wins, reply.content, reply.cached)

        with ThreadPoolExecutor(max_workers=self.cfg.max_workers) as pool:
            records = tuple(pool.map(one, range(len(posts))))
        return PairwiseResult(seed=self.cfg.seed, model=self.cfg.model, variant=self.cfg.variant, records=records)


def _check_texts(where: str, **lists: Sequence[str]) -> None:
    lengths = {name: len(v) for name, v in lists.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"{where}: the inputs must have one entry per pair, got lengths {lengths}.")
    if next(iter(lengths.values())) == 0:
        raise ValueError(f"{where}: no pairs given ({', '.join(lengths)} are empty).")
    for name, values in lists.items():
        bad = [i for i, v in enumerate(values) if not isinstance(v, str)]
        if bad:
            raise ValueError(
                f"{where}: {name}[{bad[0]}] is {type(values[bad[0]]).__name__}, not str "
                f"({len(bad)} such entries); decode token ids to text first."
            )


# ------------------------------------------------------------------------------------------------
# Paper-level helpers
# ------------------------------------------------------------------------------------------------
def judge_win_rate(judge: Judge, posts: Sequence[str], candidates: Sequence[str], references: Sequence[str]) -> PairwiseResult:
    """Win rate of policy ``candidates`` against the dataset's ``references`` (Figs. 3, 5, 6, 8–10).

    Appendix B.4: 600 test prompts for standard summaries, 6000 for two-word ones, samples at T = 0.01.
    ``result.decided_win_rate`` excludes unparseable / failed pairs, which ``result.summary()`` reports.
    """
    return judge.compare(posts, candidates, references)


def preference_rows(
    judge: Judge, prompts: Sequence[str], posts: Sequence[str], first: Sequence[str], second: Sequence[str]
) -> tuple[list[dict], PairwiseResult]:
    """Judge-labelled preference rows ``{prompt, chosen, rejected}`` from two samples per prompt.

    ``prompts`` are the training prompts put into the rows (e.g. the formatted ``TL;DR:`` prompt); ``posts``
    are what the judge reads. Pairs without a decision (unparseable or failed) produce no row; they are
    counted in the returned result, so nothing disappears unreported.
    """
    _check_texts("preference_rows", prompts=prompts, posts=posts, first=first, second=second)
    result = judge.compare(posts, first, second)
    rows = [
        {"prompt": prompts[r.index],
         "chosen": first[r.index] if r.first_wins else second[r.index],
         "rejected": second[r.index] if r.first_wins else first[r.index]}
        for r in result.records if r.first_wins is not None
    ]
    return rows, result


def gpt_label_dataset(
    judge: Judge, prompts: Sequence[str], posts: Sequence[str], samples_1: Sequence[str], samples_2: Sequence[str]
) -> tuple[list[dict], PairwiseResult]:
    """The "GPT-label" training set of Fig. 6 (Appendix B.1): two SFT samples per PFT prompt (T = 0.1),
    the winner picked by the judge with the evaluation prompt. Requires ``variant="standard"``."""
    if judge.cfg.variant != "standard":
        raise ValueError(
            f"gpt_label_dataset: Fig. 6 uses the standard B.4 prompt, but the judge has "
            f"variant={judge.cfg.variant!r}; build it with JudgeConfig(variant='standard')."
        )
    return preference_rows(judge, prompts, posts, samples_1, samples_2)


def two_word_preference_dataset(
    judge: Judge, prompts: Sequence[str], posts: Sequence[str], summaries_1: Sequence[str], summaries_2: Sequence[str]
) -> tuple[list[dict], PairwiseResult]:
    """The two-word preference data of Fig. 10 (Appendix B.1): two two-word summaries per post (written by
    ``gpt-4o``, see :func:`generate_two_word_summaries`), ranked with the two-word B.4 prompt.
    ``prompts`` should end in ``"Two-Word TL;DR:"``. Requires ``variant="two_word"``."""
    if judge.cfg.variant != "two_word":
        raise ValueError(
            f"two_word_preference_dataset: Fig. 10 uses the two-word B.4 prompt, but the judge has "
            f"variant={judge.cfg.variant!r}; build it with JudgeConfig(variant='two_word')."
        )
    return preference_rows(judge, prompts, posts, summaries_1, summaries_2)


def generate_two_word_summaries(
    judge: Judge, posts: Sequence[str], *, n: int = 2, temperature: float = 1.0
) -> list[list[str | None]]:
    """``n`` two-word summaries per post from the judge model with the Appendix B.1 prompt (Fig. 10).

    Returns ``out[i][k]``: the parsed ``Summary:`` value, or None when the answer had no valid
    ``Summary:`` line or the request failed (the caller counts and drops those). The paper does not give
    the sampling temperature; the default 1.0 makes the two samples differ. Cached per (prompt, k).
    """
    _check_texts("generate_two_word_summaries", posts=posts)
    if n < 1:
        raise ValueError(f"generate_two_word_summaries(n={n}): need at least one summary per post.")

    def one(job: tuple[int, int]) -> str | None:
        i, k = job
        try:
            reply = judge.complete(render_two_word_summary_prompt(posts[i]), sample_index=k, temperature=temperature)
        except Exception:  # noqa: BLE001 (reported as None, counted by the caller)
            return None
        return parse_summary(reply.content)

    jobs = [(i, k) for i in range(len(posts)) for k in range(n)]
    with ThreadPoolExecutor(max_workers=judge.cfg.max_workers) as pool:
        flat = list(pool.map(one, jobs))
    return [flat[i * n:(i + 1) * n] for i in range(len(posts))]
