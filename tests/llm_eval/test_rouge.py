"""ROUGE-L F1 (allroads.llm.data.rouge) against an independent LCS implementation."""

import pytest

pytest.importorskip("rouge_score")

from allroads.llm.data.rouge import rouge_l_f1, rouge_l_f1_batch  # noqa: F401

from ._rouge_reference import f1_reference  # noqa: E402

PAIRS = [
    ("the cat sat on the mat", "the cat is on the mat"),
    ("police killed the gunman", "the gunman police killed"),
    ("My boyfriend forgot my birthday, am I overreacting?", "bf forgot my birthday; overreacting?"),
    ("a b c d e f", "f e d c b a"),
    ("completely different words", "nothing shared here"),
    ("same same", "same same"),
]


@pytest.mark.parametrize("cand,ref", PAIRS)
def test_rouge_l_f1_matches_independent_lcs(cand, ref):
    assert rouge_l_f1(cand, ref) == pytest.approx(f1_reference(cand, ref), abs=1e-12)


def test_known_values_and_batch():
    assert rouge_l_f1("same same", "same same") == 1.0
    assert rouge_l_f1("completely different words", "nothing shared here") == 0.0
    # LCS("the cat sat on the mat", "the cat is on the mat") = 5 of 6 tokens each: F1 = 5/6
    assert rouge_l_f1(*PAIRS[0]) == pytest.approx(5 / 6)
    c, r = zip(*PAIRS)
    assert rouge_l_f1_batch(list(c), list(r)) == [rouge_l_f1(x, y) for x, y in PAIRS]
    with pytest.raises(ValueError, match="one reference per candidate"):
        rouge_l_f1_batch(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="decode token ids"):
        rouge_l_f1([1, 2], "a")


def test_fig11_scores_order_best_and_worst():
    ref = "my dog ate my homework so i failed"
    samples = ["dog ate homework", "i failed math", "my dog ate my homework so i failed", "unrelated text"]
    scores = rouge_l_f1_batch(samples, [ref] * len(samples))
    assert sorted(range(4), key=lambda i: -scores[i]) == [2, 0, 1, 3]
    assert (scores[2], scores[3]) == (1.0, 0.0)
