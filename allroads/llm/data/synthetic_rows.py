r"""The rows of the synthetic TL;DR tasks (:mod:`allroads.llm.data.synthetic`): SFT rows and comparisons labelled by
the task's known score, in the raw OpenAI schemas the loaders read. Every draw uses an explicit ``numpy`` generator
from ``seed``. Only :mod:`allroads.llm.data.load` imports this module: the stages key the rows they read by content,
so an edit here re-runs exactly the stages whose rows it changes."""
from __future__ import annotations

import numpy as np

from allroads.llm.data.synthetic import FACT_ORDER, FACT_SLOTS, LOOKUP_ORDERS, SUBREDDITS, WHEN, task_score

__all__ = ["make_synthetic_sft", "make_synthetic_comparisons", "sft_law_samples", "SFT_LENGTHS", "SFT_P_WRONG",
           "SFT_P_SWAP"]


def _draw_post(rng: np.random.Generator) -> tuple[dict[str, str], str, str, str]:
    facts = {slot: str(rng.choice(words)) for slot, words in FACT_SLOTS.items()}
    subreddit = str(rng.choice(SUBREDDITS))
    title = f"advice about my {facts['person']}"
    when = str(rng.choice(WHEN))
    post = (
        f"my {facts['person']} {facts['action']} my {facts['object']} {when} .\n"
        f"i feel {facts['feeling']} about it .\nwhat should i do ?"
    )
    return {**facts, "when": when}, subreddit, title, post


SFT_LENGTHS: dict[str, tuple[float, ...]] = {
    "facts": (0.55, 0.2, 0.15, 0.1), "two_word": (0.55, 0.45), "lookup": (0.55, 0.2, 0.15, 0.1),
    "any_order": (0.55, 0.2, 0.15, 0.1)}
"""The SFT rows' law of the summary length k (k = 1, 2, …) per task."""
_PAIR_LENGTHS = {"facts": (0.25,) * 4, "two_word": (0.5, 0.5), "lookup": (0.25,) * 4, "any_order": (0.25,) * 4}


def _draw_summary(facts: dict[str, str], rng: np.random.Generator, length_probs: tuple[float, ...], p_wrong: float,
                  task: str = "facts", p_swap: float = 0.0) -> str:
    """A prefix of length k ~ ``length_probs`` of the task's fact order (canonical; ``lookup``: the reference
    order; ``any_order``: a uniformly random order, drawn after k), each word wrong with probability ``p_wrong``;
    ``lookup`` also swaps two adjacent words with probability ``p_swap`` (an order error)."""
    order = LOOKUP_ORDERS[facts["when"]] if task == "lookup" else FACT_ORDER
    k = int(rng.choice(len(length_probs), p=np.asarray(length_probs))) + 1
    if task == "any_order":
        order = tuple(order[i] for i in rng.permutation(len(order)))
    words = []
    for slot in order[:k]:
        if rng.random() < p_wrong:
            others = [w for w in FACT_SLOTS[slot] if w != facts[slot]]
            words.append(str(rng.choice(others)))
        else:
            words.append(facts[slot])
    if task == "lookup" and k > 1 and rng.random() < p_swap:
        i = int(rng.integers(k - 1))
        words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


SFT_P_WRONG = SFT_P_SWAP = 0.05
"""The SFT rows' rates of a wrong fact word and (``lookup``) of an adjacent swap."""


def make_synthetic_sft(n: int, seed: int, task: str = "facts", *, length_probs=None, p_wrong: float = SFT_P_WRONG,
                       p_swap: float = SFT_P_SWAP) -> list[dict]:
    """``n`` SFT rows in the OpenAI ``tldr_3_filtered`` schema (id, subreddit, title, post, summary).

    Summaries are prefixes of the post's facts in the task's order, of length k ~ ``length_probs`` (default
    (0.55, 0.2, 0.15, 0.1); ``two_word``: (0.55, 0.45)); each word is replaced by a wrong fact with probability
    ``p_wrong``; ``lookup``: two adjacent words swapped with probability ``p_swap``.
    """
    task_score(task)
    length_probs = length_probs or SFT_LENGTHS[task]
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        facts, subreddit, title, post = _draw_post(rng)
        rows.append(
            {"id": f"syn-{seed}-{i}", "subreddit": subreddit, "title": title, "post": post,
             "summary": _draw_summary(facts, rng, length_probs, p_wrong, task, p_swap)}
        )
    return rows


def make_synthetic_comparisons(n: int, seed: int, task: str = "facts", *, length_probs=None, p_wrong: float = 0.25,
                               p_swap: float = 0.25) -> list[dict]:
    """``n`` comparison rows in the OpenAI ``comparisons`` schema, labelled by the task's known score
    (:func:`~allroads.llm.data.synthetic.task_score`).

    Two summaries are drawn independently (lengths uniform over the task's, ``p_wrong`` and ``p_swap`` as in
    :func:`make_synthetic_sft`); pairs with equal scores are redrawn, so every row carries a strict preference;
    ``choice`` is the index of the higher-scoring summary (placed at random).
    """
    score = task_score(task)
    length_probs = length_probs or _PAIR_LENGTHS[task]
    rng = np.random.default_rng(seed)
    rows = []
    i = 0
    while len(rows) < n:
        facts, subreddit, title, post = _draw_post(rng)
        a = _draw_summary(facts, rng, length_probs, p_wrong, task, p_swap)
        b = _draw_summary(facts, rng, length_probs, p_wrong, task, p_swap)
        sa, sb = score(post, a), score(post, b)
        if sa == sb:
            continue
        rows.append(
            {"info": {"id": f"syn-{seed}-{i}", "post": post, "title": title, "subreddit": subreddit},
             "summaries": [{"text": a}, {"text": b}], "choice": int(sb > sa)}
        )
        i += 1
    return rows


def sft_law_samples(n_posts: int, n: int, seed: int, task: str = "facts") -> list[tuple[str, list[str]]]:
    """``n_posts`` posts, each with ``n`` summaries drawn independently from :func:`make_synthetic_sft`'s law for
    ``task`` (its default lengths and error rates): what a policy that matched its SFT data exactly would sample.
    The reference point of the online data's diversity (``experiments/llm/data_law.py``)."""
    task_score(task)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_posts):
        facts, _, _, post = _draw_post(rng)
        draws = [_draw_summary(facts, rng, SFT_LENGTHS[task], SFT_P_WRONG, task, SFT_P_SWAP) for _ in range(n)]
        out.append((post, draws))
    return out
