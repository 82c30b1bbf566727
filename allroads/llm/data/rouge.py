r"""ROUGE-L F1 as a reward and an evaluation metric (Swamy et al. 2025, Fig. 11; Lin 2004).

Fig. 11 "complicates the reward": 25 SFT samples per PFT training prompt (T = 0.1) are ranked by ROUGE-L F1
against the preferred completion of the training pair, and the highest / lowest scoring samples become the
chosen / rejected completions (Appendix B.1); evaluation uses the F1 against the preferred completions of
the PFT validation set (Appendix B.4).

ROUGE-L of a candidate c and a reference r, with LCS the longest common token subsequence:
``P = LCS / |c|``, ``R = LCS / |r|``, ``F1 = 2PR / (P + R)`` (0 when LCS = 0). Scores come from Google's
``rouge-score`` package with its default tokenizer (lower-cased alphanumeric tokens); stemming is off by
default, since the paper does not mention it.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

__all__ = ["rouge_l_f1", "rouge_l_f1_batch"]


@lru_cache(maxsize=4)
def _scorer(use_stemmer: bool):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)


def rouge_l_f1(candidate: str, reference: str, *, use_stemmer: bool = False) -> float:
    """ROUGE-L F1 of ``candidate`` against ``reference`` (sentence-level LCS, not ``rougeLsum``)."""
    if not isinstance(candidate, str) or not isinstance(reference, str):
        raise ValueError(
            f"rouge_l_f1: candidate and reference must be str, got {type(candidate).__name__} and "
            f"{type(reference).__name__}; decode token ids to text first."
        )
    return float(_scorer(use_stemmer).score(reference, candidate)["rougeL"].fmeasure)


def rouge_l_f1_batch(candidates: Sequence[str], references: Sequence[str], *, use_stemmer: bool = False) -> list[float]:
    """Element-wise :func:`rouge_l_f1` over two equal-length lists."""
    if len(candidates) != len(references):
        raise ValueError(
            f"rouge_l_f1_batch: {len(candidates)} candidates but {len(references)} references; "
            "pass one reference per candidate (repeat the reference for several samples of one prompt)."
        )
    return [rouge_l_f1(c, r, use_stemmer=use_stemmer) for c, r in zip(candidates, references)]
