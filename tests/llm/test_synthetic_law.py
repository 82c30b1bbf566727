"""The synthetic tasks' SFT data law: the ``any_order`` task names the facts in every order (``facts`` in one), and
``sft_law_samples`` — the reference point of the online data's diversity — draws from the law that an exact
enumeration gives (expected distinct summaries of 25 against a closed form)."""
from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path

import pytest

from allroads.llm.data import synthetic as S
from allroads.llm.data import synthetic_rows as R

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments" / "llm"))
import data_law  # noqa: E402  (the script of the pre-registered expectation)


def _law(task: str) -> list[float]:
    """Every summary's probability under the SFT law of one post (exact enumeration): length k, then the k slots
    (``facts``: the canonical prefix; ``any_order``: each of the 4!/(4−k)! ordered choices alike), then each word
    right with probability 1 − p or one of the 5 wrong words of its slot with probability p / 5."""
    p, slots = R.SFT_P_WRONG, len(S.FACT_ORDER)
    probs = []
    for k, pk in enumerate(R.SFT_LENGTHS[task], start=1):
        orders = math.perm(slots, k) if task == "any_order" else 1
        for wrong in itertools.product((False, True), repeat=k):
            n_wrong = sum(wrong)
            q = pk / orders * (p / 5) ** n_wrong * (1 - p) ** (k - n_wrong)
            probs += [q] * (orders * 5 ** n_wrong)  # each order, each choice of the wrong words
    return probs


@pytest.mark.parametrize("task", ["facts", "any_order"])
def test_law_samples_match_the_enumerated_law(task):
    probs = _law(task)
    assert sum(probs) == pytest.approx(1.0, abs=1e-12)
    expected = sum(1 - (1 - q) ** 25 for q in probs)  # E[distinct of 25] = Σ_ξ P(ξ drawn at least once)
    samples = R.sft_law_samples(1024, 25, seed=3, task=task)
    mean = sum(len(set(s)) for _, s in samples) / len(samples)
    # s.d. of one post's distinct count is < 2.5 here, so the s.e. of the mean is < 0.08; tolerance ≈ 3 s.e.
    assert mean == pytest.approx(expected, abs=0.25)
    assert expected == pytest.approx({"facts": 5.9, "any_order": 14.8}[task], abs=0.2)


def test_any_order_names_the_facts_in_every_order_and_facts_in_one():
    for task, firsts in (("any_order", set(S.FACT_ORDER)), ("facts", {"person"})):
        rows = R.make_synthetic_sft(800, seed=5, task=task)
        seen = set()
        for r in rows:
            words = r["summary"].split()
            if len(words) >= 2:
                seen.add(next(slot for slot, vocab in S.FACT_SLOTS.items() if words[0] in vocab))
        assert seen == firsts
    # the score ignores order, so a shuffled summary scores as the canonical one
    post = R.make_synthetic_sft(1, seed=0, task="any_order")[0]["post"]
    facts = [next(w for w in post.split() if w in S.FACT_SLOTS[s]) for s in S.FACT_ORDER]
    assert S.task_score("any_order")(post, " ".join(reversed(facts))) == 4.0


def test_law_samples_share_the_rows_law():
    """The rows and the law samples come from one law: the same mean summary length (s.e. < 0.02 each)."""
    rows = R.make_synthetic_sft(4000, seed=1, task="any_order")
    law = [s for _, ss in R.sft_law_samples(160, 25, seed=2, task="any_order") for s in ss]
    mean_rows = sum(len(r["summary"].split()) for r in rows) / len(rows)
    mean_law = sum(len(s.split()) for s in law) / len(law)
    assert mean_rows == pytest.approx(1.8, abs=0.06) and mean_law == pytest.approx(1.8, abs=0.06)


def test_data_law_script_reports_more_diverse_any_order_data():
    facts = data_law.law_diversity("facts", 256, 25, seed=0)
    shuffled = data_law.law_diversity("any_order", 256, 25, seed=0)
    assert shuffled["mean_distinct"] > 10 > facts["mean_distinct"]
    assert shuffled["prefix_pair_share"] < facts["prefix_pair_share"]
    assert facts["tied_share"] == shuffled["tied_share"] == 0.0
