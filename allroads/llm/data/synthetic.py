r"""Synthetic TL;DR-schema data with a known scoring function, for end-to-end CPU tests.

Each post is built from one template with four *key facts* (who, what happened, to which object,
how the author feels), one word each, drawn from small disjoint vocabularies:

    title:  "advice about my {person}"
    post:   "my {person} {action} my {object} {when} .\ni feel {feeling} about it .\nwhat should i do ?"

A summary is a sequence of fact words in the canonical order person, action, object, feeling.
The known score of a summary for a post (:func:`synthetic_score`) is

    score = #(post facts mentioned) − #(fact-vocabulary words mentioned that are not post facts)

so covering more facts is better and naming a wrong fact is penalised; it is computed from the two
texts alone. SFT summaries (:func:`allroads.llm.data.synthetic_rows.make_synthetic_sft`) are mostly short (1 fact with probability
0.55), so a policy that imitates them greedily stops early and scores about 1; preference pairs
(:func:`allroads.llm.data.synthetic_rows.make_synthetic_comparisons`) are labelled by the known score (the higher-scoring summary is
chosen, ties are redrawn), so preference learning should raise the greedy policy's score.

This module holds the tasks and their scores; the rows are drawn by :mod:`allroads.llm.data.synthetic_rows` (imported
only by the loaders, so stages that key their rows by content do not hash the generator's code). Rows come out in
the raw OpenAI schemas that :mod:`allroads.llm.data.rows` reads
(``tldr_3_filtered``: id, subreddit, title, post, summary; ``comparisons``: info{id, post, title,
subreddit}, summaries[{text}], choice). Every draw uses an explicit ``numpy`` generator from ``seed``.

Three *tasks* share the posts (:data:`TASKS`; the data source ``synthetic-TASK:N`` selects one, :func:`task_of`):

* ``facts`` — the above. The score is a bag-of-words membership test (each summary word is checked against the
  post on its own; order, length and the rest of the summary do not matter), while the policy that maximises it
  must emit a sequence: which fact comes next, and when to stop (soft-optimally, a value over all continuations).
* ``two_word`` — the same score on summaries of at most two words (person, action): generation is as short as
  verification (the control of the paper's Fig. 10).
* ``any_order`` — the ``facts`` score, with summaries that name the facts in *any* order: SFT summaries and
  comparisons list k facts in a uniformly random order (``facts`` always uses the canonical one). Same verifier,
  more ways to be right (4 + 12 + 24 + 24 summaries without a wrong fact instead of 4), so 25 samples of a
  prompt can differ as the paper's free-text ones do.
* ``lookup`` — the score is computed against a *reference summary*, the post's four facts in an order that the
  post's time word selects (:func:`lookup_reference`): words matched in order (longest common subsequence) minus
  fact words not matched (:func:`lookup_score`). To verify, a model must build the reference, and with the
  reference, generating is copying it: verification is as hard as generation (the ROUGE-L control of Fig. 11).
"""
from __future__ import annotations


__all__ = [
    "FACT_SLOTS",
    "TASKS",
    "task_of",
    "task_score",
    "lookup_reference",
    "lookup_score",
    "FACT_ORDER",
    "LOOKUP_ORDERS",
    "SUBREDDITS",
    "WHEN",
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
FACT_ORDER = ("person", "action", "object", "feeling")
"""The canonical order of the facts in a summary."""
TASKS = ("facts", "two_word", "lookup", "any_order")
LOOKUP_ORDERS: dict[str, tuple[str, ...]] = {
    "yesterday": ("person", "action", "object", "feeling"),
    "today": ("feeling", "object", "action", "person"),
    "tonight": ("object", "person", "feeling", "action"),
}
"""The ``lookup`` task's reference order of the four facts, selected by the post's time word."""
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


def lookup_reference(post: str) -> list[str]:
    """The ``lookup`` task's reference summary of ``post``: its four facts in the order its time word selects
    (:data:`LOOKUP_ORDERS`)."""
    words = post.split()
    when = next((w for w in words if w in LOOKUP_ORDERS), None)
    slot = {s: next((w for w in words if w in FACT_SLOTS[s]), None) for s in FACT_ORDER}
    if when is None or None in slot.values():
        raise ValueError(f"lookup_reference: not a synthetic post (needs a time word and four facts): {post[:80]!r}")
    return [slot[s] for s in LOOKUP_ORDERS[when]]


def _lcs(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of two word lists."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def lookup_score(post: str, summary: str) -> float:
    r"""Known reward of the ``lookup`` task: fact words matched in order minus fact words not matched,

        score = LCS(f, ref) − (|f| − LCS(f, ref)),   f = the summary's fact words in order (repeats kept once),

    ref = :func:`lookup_reference` (post). Range [−4, 4]; 4 only for the reference itself.
    """
    said = list(dict.fromkeys(w for w in summary.split() if w in _FACT_WORDS))
    m = _lcs(said, lookup_reference(post))
    return float(m - (len(said) - m))


def task_score(task: str):
    """The known score ``f(post, summary) -> float`` of ``task`` (:data:`TASKS`)."""
    if task not in TASKS:
        raise ValueError(f"unknown synthetic task {task!r}; use one of {TASKS}")
    return lookup_score if task == "lookup" else synthetic_score  # facts, two_word, any_order: bag of facts


def task_of(source: str) -> str:
    """The task of a synthetic data source ``synthetic[-TASK][:N[:SEED]]`` (``facts`` when none is named)."""
    name = source.split(":")[0]
    if name == "synthetic":
        return "facts"
    task = name[len("synthetic-"):] if name.startswith("synthetic-") else ""
    if task not in TASKS:
        raise ValueError(f"data source {source!r}: a synthetic source is synthetic[-TASK][:N[:SEED]] with TASK in "
                         f"{TASKS}")
    return task


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
