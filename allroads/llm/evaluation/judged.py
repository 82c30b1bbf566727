r"""Judged evaluations with a failure budget, and the test prompts they judge (App. B.4): what the runner's evaluation
stages (:mod:`allroads.llm.pipeline.eval_stages`) and the commands ``python -m allroads.llm judge`` / ``evaluate``
both compute.

* :func:`test_prompts` — ``n`` SFT-test rows drawn at random with a seed (B.4: "randomly sampled" test prompts), in
  file order, as (prompts, posts, reference summaries).
* :func:`check_judge_failures` — raise :class:`JudgeFailuresError` when a judged result's errors plus unparseable
  answers exceed the budget.
* :func:`judged_win_rate` — a policy's win rate against the references (:func:`~allroads.llm.evaluation.evaluate.
  policy_win_rate`), checked against the budget, plus the known score of its samples on the synthetic tasks.
* :func:`judge_pair_records` — the per-pair verdicts of a :class:`~allroads.llm.judge.results.PairwiseResult` as
  JSON rows.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import torch

from allroads.llm.data.rows import SFTRow
from allroads.llm.data.tldr_format import (
    PROMPT_TEMPLATE,
    TWO_WORD_PROMPT_TEMPLATE,
    format_prompt,
)
from allroads.llm.evaluation.evaluate import policy_win_rate
from allroads.llm.judge.results import PairwiseResult

__all__ = ["JudgeFailuresError", "check_judge_failures", "judged_win_rate", "test_rows", "test_prompts",
           "judge_pair_records"]


class JudgeFailuresError(RuntimeError):
    """A judged evaluation had more failed pairs (errors + unparseable answers) than its budget."""


def check_judge_failures(kind: str, summaries: Sequence[dict], budget: int, *,
                         budget_name: str = "Settings.judge_failure_budget") -> None:
    """Raise :class:`JudgeFailuresError` when the judge's errors plus unparseable answers over ``summaries``
    (:meth:`~allroads.llm.judge.results.PairwiseResult.summary` dicts) exceed ``budget``; ``budget_name`` is how the
    user raises it where the error is shown."""
    errors, unparseable = sum(r["errors"] for r in summaries), sum(r["unparseable"] for r in summaries)
    if errors + unparseable > budget:
        n = sum(r["n_pairs"] for r in summaries)
        raise JudgeFailuresError(
            f"{kind}: {errors + unparseable} of {n} judged pairs failed ({errors} errors, {unparseable} unparseable "
            f"answers), over the budget of {budget}: the result is not finished. Rerun to re-ask only those pairs (the "
            f"answers already paid for are cached), or raise {budget_name} to accept them")


def judged_win_rate(kind: str, backend, policy, judge, prompts: Sequence[str], posts: Sequence[str],
                    references: Sequence[str], *, temperature: float, seed: int, budget: int,
                    known: Callable[[str, str], float] | None = None, max_new_tokens: int | None = None,
                    budget_name: str = "Settings.judge_failure_budget") -> dict:
    """Judge win rate of one sample per prompt of ``policy`` against ``references`` (B.4), refused over the failure
    ``budget`` (:func:`check_judge_failures`); with ``known(post, summary)`` (synthetic tasks) also ``known_score``,
    the mean known score of the judged samples over posts."""
    res = policy_win_rate(backend, policy, judge, prompts, posts, references, temperature=temperature, seed=seed,
                          max_new_tokens=max_new_tokens)
    check_judge_failures(kind, [res], budget, budget_name=budget_name)
    if known is not None:
        res["known_score"] = sum(known(p, t) for p, t in zip(posts, res["samples"])) / len(posts)
    return res


def test_rows(rows: Sequence[SFTRow], n: int, seed: int) -> list[SFTRow]:
    """``n`` of ``rows`` drawn at random with ``seed`` (B.4: "randomly sampled" test prompts), in file order; all rows
    when there are no more than ``n``."""
    if n >= len(rows):
        return list(rows)
    pick = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))[:n]
    return [rows[i] for i in sorted(pick.tolist())]


def test_prompts(rows: Sequence[SFTRow], tokenizer, *, n: int, seed: int, max_prompt_tokens: int,
                 two_word: bool = False) -> tuple[list[str], list[str], list[str]]:
    """Prompts (Table 1, cut to ``max_prompt_tokens``; ``two_word``: ending in "Two-Word TL;DR:"), posts and reference
    summaries of :func:`test_rows` ``(rows, n, seed)``."""
    template = TWO_WORD_PROMPT_TEMPLATE if two_word else PROMPT_TEMPLATE
    sel = test_rows(rows, n, seed)
    prompts = [format_prompt(r.subreddit, r.title, r.post, tokenizer, max_prompt_tokens, r.where, template=template)[0]
               for r in sel]
    return prompts, [r.post for r in sel], [r.summary for r in sel]


def judge_pair_records(result: PairwiseResult, posts: Sequence[str], first: Sequence[str],
                       second: Sequence[str]) -> list[dict]:
    """One JSON row per judged pair: its texts, the order shown (``first_shown_as_a``), the parsed label, whether
    ``first`` won (null: unparseable or failed), the judge's answer and the error of a failed request."""
    return [{"index": r.index, "post": posts[r.index], "first": first[r.index], "second": second[r.index],
             **{k: v for k, v in dataclasses.asdict(r).items() if k != "index"}} for r in result.records]
