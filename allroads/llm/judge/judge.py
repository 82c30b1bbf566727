r"""Pairwise LLM judge over an OpenAI-compatible chat API (Swamy et al. 2025, Appendix B.4).

The paper reports win rates of policy summaries against the TL;DR reference summaries as judged by
``gpt-4o`` with the prompts of Appendix B.4 (standard, and two-word for Fig. 10), uses the same judge to
label pairs of SFT samples for the "GPT-label" data of Fig. 6 (Appendix B.1), and has ``gpt-4o`` write and
rank two-word summaries for Fig. 10 (Appendix B.1). This module provides

* the prompts, verbatim from the paper (:data:`STANDARD_JUDGE_TEMPLATE`, :data:`TWO_WORD_JUDGE_TEMPLATE`,
  :data:`TWO_WORD_SUMMARY_TEMPLATE`) and :func:`render_judge_prompt`;
* :func:`parse_preferred`: the strict ``Preferred:`` parser (exactly one such line whose value is ``A`` or
  ``B``, bare, quoted or bold as the prompt's format line invites; anything else is unparseable and counted,
  never guessed);
* :class:`Judge`: the ``openai`` client (``OPENAI_BASE_URL`` / ``OPENAI_API_KEY`` from the environment,
  so any OpenAI-compatible server works; retries as :mod:`allroads.llm.judge.client` says), a thread pool, an
  sqlite cache keyed by (endpoint, model, sampling parameters, prompt) so that a rerun pays for nothing twice,
  and a JSONL usage log. The API key is never logged or written to disk. A failed request is recorded and
  counted; a local file fault (:class:`~allroads.llm.judge.errors.JudgeCacheError`) or a dead endpoint
  (:class:`~allroads.llm.judge.errors.JudgeUnavailable`) stops the judging at once;
* :meth:`Judge.compare` with the A/B order of each pair a function of (seed, post, the two texts), so a
  subset or a reordering of judged pairs asks the same prompts (and hits the cache), and the helpers
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
import re
from typing import Sequence

from allroads.llm.judge.client import ChatClient, ChatReply, JudgeConfig, ResponseCache
from allroads.llm.judge.errors import JudgeCacheError, JudgeStopped, JudgeUnavailable, describe_error
from allroads.llm.judge.results import PairRecord, PairwiseResult

__all__ = [
    "STANDARD_JUDGE_TEMPLATE", "TWO_WORD_JUDGE_TEMPLATE", "TWO_WORD_SUMMARY_TEMPLATE",
    "render_judge_prompt", "render_two_word_summary_prompt", "parse_preferred", "parse_summary", "first_shown_as_a",
    "JudgeConfig", "Judge", "ChatReply", "PairRecord", "PairwiseResult", "ResponseCache",
    "judge_win_rate", "preference_rows", "gpt_label_dataset", "two_word_preference_dataset",
    "generate_two_word_summaries", "JudgeCacheError", "JudgeStopped", "JudgeUnavailable",
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

    The answer must contain exactly one line that starts with ``Preferred:`` (or ``**Preferred:**``) and the
    rest of that line, stripped of whitespace, must be ``A`` or ``B``: bare, in quotes (``"A"``, as the
    prompt's format line ``Preferred: <"A" or "B">`` shows it) or bold (``**A**``, ``**"A"**``). ``Summary A``,
    ``A.``, ``A or B``, two ``Preferred:`` lines or none at all are unparseable: they are counted by the caller,
    never guessed.
    """
    lines = [_unbold(ln.strip()) for ln in answer.splitlines()]
    lines = [ln for ln in lines if ln.startswith("Preferred:") or ln.startswith("**Preferred:**")]
    if len(lines) != 1:
        return None
    value = lines[0].split(":", 1)[1].removeprefix("**").strip()
    value = _unbold(value)
    if len(value) == 3 and (value[0], value[-1]) in _QUOTES:
        value = value[1]
    return value if value in ("A", "B") else None


_QUOTES = {('"', '"'), ("'", "'"), ("\u201c", "\u201d"), ("\u2018", "\u2019")}


def _unbold(text: str) -> str:
    """``text`` without one pair of surrounding ``**``."""
    return text[2:-2].strip() if len(text) > 4 and text.startswith("**") and text.endswith("**") else text


def first_shown_as_a(seed: int, post: str, first: str, second: str) -> bool:
    """Whether ``first`` is shown as Summary A: a fair coin from SHA-256 of (seed, post, the two texts as an
    unordered pair), so the prompt of a pair never depends on its position in a list or on which text is
    called first (judging a subset, a reordering or the swapped pair asks the same prompts)."""
    lo, hi = sorted((first, second))
    coin = hashlib.sha256(json.dumps([seed, post, lo, hi]).encode()).digest()[0] & 1
    return bool(coin) == (first == lo)


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
# The judge
# ------------------------------------------------------------------------------------------------
class Judge(ChatClient):
    """The pairwise judge of App. B.4 over an OpenAI-compatible chat API (cache, retries and usage log of
    :class:`~allroads.llm.judge.client.ChatClient`).

    Args:
        cfg: :class:`JudgeConfig`.
        client: an ``openai.OpenAI`` instance to use instead of :func:`~allroads.llm.judge.client.make_client`
            ``(cfg)``, which is built from ``cfg.base_url`` / ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY`` (a missing
            key raises ValueError before any request).
    """

    def __enter__(self) -> "Judge":
        return self

    def compare(self, posts: Sequence[str], first: Sequence[str], second: Sequence[str]) -> PairwiseResult:
        """Judge ``first[i]`` against ``second[i]`` on ``posts[i]`` for every i (Appendix B.4).

        The A/B order of each pair is :func:`first_shown_as_a` (seed, post, the two texts) and undone when reading
        the answer, so a judge with a position bias does not bias the result. Requests run on ``cfg.max_workers`` threads;
        a pair whose request fails after all retries is recorded with its error and counted, not raised,
        so that the answers already paid for are kept (and cached); check ``result.errors``. An unparseable answer
        is cached and counted, and asked again by the next ``compare`` of the same pair.

        Raises :class:`~allroads.llm.judge.errors.JudgeCacheError` (the cache or usage log failed) or
        :class:`~allroads.llm.judge.errors.JudgeUnavailable` (``cfg.max_consecutive_failures`` failed requests in a
        row) at once, with ``error.partial``: the :class:`PairwiseResult` of the pairs finished before the stop.
        """
        _check_texts("Judge.compare", posts=posts, first=first, second=second)
        orders = [first_shown_as_a(self.cfg.seed, p, f, o) for p, f, o in zip(posts, first, second)]

        def one(i: int) -> PairRecord:
            a, b = (first[i], second[i]) if orders[i] else (second[i], first[i])
            prompt = render_judge_prompt(posts[i], a, b, variant=self.cfg.variant)
            try:
                reply = self.complete(prompt, reask_if=lambda answer: parse_preferred(answer) is None)
            except JudgeStopped:
                raise
            except Exception as exc:  # noqa: BLE001 (recorded in the result, counted in .errors)
                return PairRecord(i, orders[i], None, None, "", False, error=describe_error(exc))
            label = parse_preferred(reply.content)
            first_wins = None if label is None else (label == "A") == orders[i]
            return PairRecord(i, orders[i], label, first_wins, reply.content, reply.cached)

        try:
            records = self.map_requests(one, range(len(posts)))
        except JudgeStopped as err:
            err.partial = self._result(err.completed)
            raise
        return self._result(records)

    def _result(self, records: Sequence[PairRecord]) -> PairwiseResult:
        cfg = self.cfg
        return PairwiseResult(seed=cfg.seed, model=cfg.model, variant=cfg.variant, records=tuple(records))


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
    the sampling temperature; the default 1.0 makes the two samples differ. Cached per (prompt, k). A local file
    fault or a dead endpoint raises as in :meth:`Judge.compare`.
    """
    _check_texts("generate_two_word_summaries", posts=posts)
    if n < 1:
        raise ValueError(f"generate_two_word_summaries(n={n}): need at least one summary per post.")

    def one(job: tuple[int, int]) -> str | None:
        i, k = job
        try:
            reply = judge.complete(render_two_word_summary_prompt(posts[i]), sample_index=k, temperature=temperature)
        except JudgeStopped:
            raise
        except Exception:  # noqa: BLE001 (reported as None, counted by the caller)
            return None
        return parse_summary(reply.content)

    jobs = [(i, k) for i in range(len(posts)) for k in range(n)]
    flat = judge.map_requests(one, jobs)
    return [flat[i * n:(i + 1) * n] for i in range(len(posts))]
