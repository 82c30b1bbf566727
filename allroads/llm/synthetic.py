r"""Synthetic TL;DR-schema data with a known scoring function, for end-to-end CPU tests.

Each post is built from one template with four *key facts* (who, what happened, to which object,
how the author feels), one word each, drawn from small disjoint vocabularies:

    title:  "advice about my {person}"
    post:   "my {person} {action} my {object} {when} .\ni feel {feeling} about it .\nwhat should i do ?"

A summary is a sequence of fact words in the canonical order person, action, object, feeling.
The known score of a summary for a post (:func:`synthetic_score`) is

    score = #(post facts mentioned) − #(fact-vocabulary words mentioned that are not post facts)

so covering more facts is better and naming a wrong fact is penalised; it is computed from the two
texts alone. SFT summaries (:func:`make_synthetic_sft`) are mostly short (1 fact with probability
0.55), so a policy that imitates them greedily stops early and scores about 1; preference pairs
(:func:`make_synthetic_comparisons`) are labelled by the known score (the higher-scoring summary is
chosen, ties are redrawn), so preference learning should raise the greedy policy's score.

Rows come out in the raw OpenAI schemas that :mod:`allroads.llm.data` reads
(``tldr_3_filtered``: id, subreddit, title, post, summary; ``comparisons``: info{id, post, title,
subreddit}, summaries[{text}], choice). Every draw uses an explicit ``numpy`` generator from ``seed``.
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "FACT_SLOTS",
    "make_synthetic_sft",
    "make_synthetic_comparisons",
    "synthetic_score",
    "synthetic_vocabulary",
    "post_facts",
    "synthetic_two_word_summary",
]

FACT_SLOTS: dict[str, tuple[str, ...]] = {
    "person": ("sister", "brother", "boss", "roommate", "friend", "mother"),
    "action": ("broke", "borrowed", "sold", "lost", "painted", "hid"),
    "object": ("car", "laptop", "bike", "phone", "guitar", "couch"),
    "feeling": ("angry", "sad", "confused", "worried", "happy", "tired"),
}
SUBREDDITS = ("relationships", "tifu", "personalfinance", "advice")
WHEN = ("yesterday", "today", "tonight")
_ORDER = ("person", "action", "object", "feeling")
_FACT_WORDS = {w for words in FACT_SLOTS.values() for w in words}
_TEMPLATE_WORDS = (
    "SUBREDDIT:", "TITLE:", "POST:", "TL;DR:", "advice", "about", "my", "i", "feel", "it", "what",
    "should", "do", ".", "?",
)


def synthetic_vocabulary() -> list[str]:
    """Every whitespace-separated word the generator can emit (for a word-level tokenizer)."""
    words = set(_TEMPLATE_WORDS) | _FACT_WORDS | set(WHEN) | {f"r/{s}" for s in SUBREDDITS}
    return sorted(words)


def post_facts(post: str) -> set[str]:
    """The key facts of a synthetic post: its words that belong to a fact vocabulary."""
    return {w for w in post.split() if w in _FACT_WORDS}


def synthetic_score(post: str, summary: str) -> float:
    r"""Known reward of ``summary`` for ``post``: facts covered minus wrong facts named.

        score = |facts(post) ∩ words(summary)| − |(words(summary) ∩ V_fact) \ facts(post)|

    Repeated words count once. Non-fact words (none are generated) are ignored.
    """
    facts = post_facts(post)
    said = {w for w in summary.split() if w in _FACT_WORDS}
    return float(len(said & facts) - len(said - facts))


def _draw_post(rng: np.random.Generator) -> tuple[dict[str, str], str, str, str]:
    facts = {slot: str(rng.choice(words)) for slot, words in FACT_SLOTS.items()}
    subreddit = str(rng.choice(SUBREDDITS))
    title = f"advice about my {facts['person']}"
    post = (
        f"my {facts['person']} {facts['action']} my {facts['object']} {rng.choice(WHEN)} .\n"
        f"i feel {facts['feeling']} about it .\nwhat should i do ?"
    )
    return facts, subreddit, title, post


def _draw_summary(facts: dict[str, str], rng: np.random.Generator, length_probs: tuple[float, ...], p_wrong: float) -> str:
    k = int(rng.choice(len(length_probs), p=np.asarray(length_probs))) + 1
    words = []
    for slot in _ORDER[:k]:
        if rng.random() < p_wrong:
            others = [w for w in FACT_SLOTS[slot] if w != facts[slot]]
            words.append(str(rng.choice(others)))
        else:
            words.append(facts[slot])
    return " ".join(words)


def make_synthetic_sft(n: int, seed: int, *, length_probs=(0.55, 0.2, 0.15, 0.1), p_wrong: float = 0.05) -> list[dict]:
    """``n`` SFT rows in the OpenAI ``tldr_3_filtered`` schema (id, subreddit, title, post, summary).

    Summaries are prefixes (in the order person, action, object, feeling) of the post's facts, of
    length k ~ ``length_probs``; each word is replaced by a wrong fact with probability ``p_wrong``.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        facts, subreddit, title, post = _draw_post(rng)
        rows.append(
            {"id": f"syn-{seed}-{i}", "subreddit": subreddit, "title": title, "post": post,
             "summary": _draw_summary(facts, rng, length_probs, p_wrong)}
        )
    return rows


def make_synthetic_comparisons(n: int, seed: int, *, length_probs=(0.25, 0.25, 0.25, 0.25), p_wrong: float = 0.25) -> list[dict]:
    """``n`` comparison rows in the OpenAI ``comparisons`` schema, labelled by :func:`synthetic_score`.

    Two summaries are drawn independently; pairs with equal scores are redrawn, so every row carries
    a strict preference; ``choice`` is the index of the higher-scoring summary (placed at random).
    """
    rng = np.random.default_rng(seed)
    rows = []
    i = 0
    while len(rows) < n:
        facts, subreddit, title, post = _draw_post(rng)
        a = _draw_summary(facts, rng, length_probs, p_wrong)
        b = _draw_summary(facts, rng, length_probs, p_wrong)
        sa, sb = synthetic_score(post, a), synthetic_score(post, b)
        if sa == sb:
            continue
        rows.append(
            {"info": {"id": f"syn-{seed}-{i}", "post": post, "title": title, "subreddit": subreddit},
             "summaries": [{"text": a}, {"text": b}], "choice": int(sb > sa)}
        )
        i += 1
    return rows


def synthetic_two_word_summary(post: str, k: int) -> str:
    """The tiny preset's stand-in for gpt-4o writing two-word summaries (Fig. 10, App. B.1).

    Even ``k``: the post's person and action facts (known score 2). Odd ``k``: the person and the first
    action word that is *not* the post's (known score 0). So the two summaries of a post always differ
    and the rule judge always prefers the even one. Deterministic (no randomness).
    """
    words = post.split()
    slot = {s: next((w for w in words if w in FACT_SLOTS[s]), None) for s in ("person", "action")}
    if slot["person"] is None or slot["action"] is None:
        raise ValueError(f"synthetic_two_word_summary: not a synthetic post (no person/action fact): {post[:80]!r}")
    if k % 2 == 0:
        return f"{slot['person']} {slot['action']}"
    wrong = next(w for w in FACT_SLOTS["action"] if w != slot["action"])
    return f"{slot['person']} {wrong}"
