"""An independent ROUGE-L F1 for tests: the textbook LCS dynamic programme over lower-cased alphanumeric
tokens (no stemming), written without the ``rouge_score`` package so it can check ours."""
from __future__ import annotations

import re


def lcs_len(a, b) -> int:
    """Length of the longest common subsequence of two token lists, O(|a||b|)."""
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def f1_reference(cand: str, ref: str) -> float:
    """ROUGE-L F1 = 2PR / (P + R) with P = LCS/|cand|, R = LCS/|ref|; 0 when nothing is shared."""
    c, r = re.findall(r"[a-z0-9]+", cand.lower()), re.findall(r"[a-z0-9]+", ref.lower())
    lcs = lcs_len(c, r)
    if lcs == 0:
        return 0.0
    p, q = lcs / len(c), lcs / len(r)
    return 2 * p * q / (p + q)
