r"""Multi-step methods written once over :class:`allroads.backend.Backend` (paper Sec. 3, App. B.1.1).

Online DPO (Guo et al. 2024; the paper's recipe) is two plain steps, the first returning what it computed:

1. :func:`sample_and_score` — N completions per prompt from the sampling policy at a sampling temperature,
   their RM scores and, if asked, their log-probabilities: a :class:`Scored` batch. Re-ranking the same
   samples with another RM is :func:`rescore` on it (no resampling).
2. one labelling per variant, each a function of a :class:`Scored` batch: :func:`best_worst_pairs` (the
   paper's hard labels) and :func:`best_worst_soft_pairs` (each pair labelled with the RM's BT probability
   p_w = σ(r(ξ_w) − r(ξ_l)), paper Eq. 4; with π_ref := the sampling policy the population optimum of
   soft-label DPO is then π ∝ π_samp·exp(r/β), RLHF's stage 2 (Lemma A.1), whenever the class contains it).

Prompts whose N scores are all equal carry no preference: they are dropped and counted.

* :func:`best_of_n` — the highest-scored of n samples per prompt (paper Fig. 8).
* :func:`bt_win_rate` — Monte-Carlo win rate of one policy against another under BT of a reward:
  E_{ξ∼π, ξ'∼π'} σ(r(ξ) − r(ξ')).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from allroads.backend import Backend
from allroads.losses import bt_logits, select_best_of_n, select_best_worst

__all__ = ["Scored", "sample_and_score", "rescore", "OnlinePairs", "best_worst_pairs", "best_worst_soft_pairs",
           "best_of_n", "bt_win_rate"]


@dataclass(frozen=True)
class Scored:
    """N samples per prompt with one reward model's scores (and the sampler's log-probs when asked)."""

    prompts: Any
    """The B prompts, in the backend's batch type."""
    completions: Any
    """(B, N) completions in the backend's batch type."""
    scores: torch.Tensor
    """RM score r(s_0, ξ) of every completion, shape (B, N)."""
    sampling_temperature: float
    """Temperature T the completions were drawn at (logits / T); π_ref of online DPO is the sampler at T."""
    logps: torch.Tensor | None = None
    """log π_T(ξ|s_0) of every completion under the sampler at ``sampling_temperature``, (B, N); or None."""


def sample_and_score(backend: Backend, policy: Any, scorer: Any, prompts: Any, *, n: int,
                     temperature: float, generator: torch.Generator, logps: bool = False) -> Scored:
    r"""Step 1 of online DPO (App. B.1.1; 25 samples at T = 0.1 in the paper):

        ξ_{p,1..N} ∼ π_T(·|s_0=p),   scores r(ξ_{p,j}),   and log π_T(ξ_{p,j}) if ``logps``

    Draws from ``generator`` only (one ``backend.sample`` call). Returns :class:`Scored`.
    """
    if n < 2:
        raise ValueError(f"n must be >= 2 to form a best/worst pair, got {n}")
    completions = backend.sample(policy, prompts, n, generator, temperature)  # (B, N)
    lp = backend.seq_logp(policy, prompts, completions, temperature) if logps else None
    return Scored(prompts, completions, backend.score(scorer, prompts, completions), temperature, lp)


def rescore(backend: Backend, scored: Scored, scorer: Any) -> Scored:
    """The same samples scored by another reward model (re-ranking without resampling)."""
    return replace(scored, scores=backend.score(scorer, scored.prompts, scored.completions))


@dataclass(frozen=True)
class OnlinePairs:
    """Online-DPO preference pairs built from on-policy samples."""

    prompts: Any
    """The prompts that kept a pair, a batch of M ≤ B (indices into the input batch: ``kept``)."""
    chosen: Any
    """ξ_w of each kept prompt (the RM's best sample), a batch of M."""
    rejected: Any
    """ξ_l of each kept prompt (the RM's worst sample), a batch of M."""
    score_w: torch.Tensor
    """RM score of ξ_w, shape (M,)."""
    score_l: torch.Tensor
    """RM score of ξ_l, shape (M,)."""
    p_w: torch.Tensor | None
    """Soft label σ(score_w − score_l), shape (M,), or None for the paper's hard labels."""
    kept: torch.Tensor
    """Bool mask over the B input prompts: True where a pair was formed."""
    n_dropped: int
    """Prompts dropped because all N samples scored the same (no preference)."""


def _take_rows(x: Any, keep: torch.Tensor) -> Any:
    return x[keep] if isinstance(x, torch.Tensor) else [x[i] for i in keep.tolist()]


def best_worst_pairs(scored: Scored) -> OnlinePairs:
    r"""Step 2, the paper's labelling: the best and the worst sample of each prompt, hard label 1.

        w = argmax_j r(ξ_{p,j}),   l = argmin_j r(ξ_{p,j})      (ties → lowest index, loss core)

    Prompts with all-equal scores are dropped and counted. Completions index with the backend's batch type.
    """
    scores = scored.scores
    idx_w, idx_l, valid = select_best_worst(scores)
    rows = torch.arange(scores.shape[0])
    keep = torch.nonzero(valid).reshape(-1)
    chosen = _take_rows(_take(scored.completions, idx_w), keep)
    rejected = _take_rows(_take(scored.completions, idx_l), keep)
    prompts = _take_rows(scored.prompts if isinstance(scored.prompts, list) else torch.as_tensor(scored.prompts), keep)
    return OnlinePairs(prompts, chosen, rejected, scores[rows, idx_w][valid], scores[rows, idx_l][valid], None, valid,
                       int((~valid).sum()))


def best_worst_soft_pairs(scored: Scored) -> OnlinePairs:
    r"""Step 2, soft labels: the pairs of :func:`best_worst_pairs`, each labelled with the RM's BT probability

        p_w = σ(r(ξ_w) − r(ξ_l))      (paper Eq. 4)
    """
    pairs = best_worst_pairs(scored)
    return replace(pairs, p_w=torch.sigmoid(bt_logits(pairs.score_w, pairs.score_l)))


def _take(completions: Any, index: torch.Tensor) -> Any:
    """``completions[b, index[b]]`` for a (B, N) tensor or nested list."""
    if isinstance(completions, torch.Tensor):
        return completions.gather(1, index.reshape(-1, 1)).squeeze(1)
    return [row[int(i)] for row, i in zip(completions, index.tolist())]


def best_of_n(backend: Backend, policy: Any, scorer: Any, prompts: Any, *, n: int, generator: torch.Generator,
              temperature: float = 1.0) -> Any:
    """Best-of-n (paper Fig. 8): for each prompt, the RM's highest-scored of n samples from π_T; a batch of B."""
    completions = backend.sample(policy, prompts, n, generator, temperature)
    return backend.take(completions, select_best_of_n(backend.score(scorer, prompts, completions)))


def bt_win_rate(
    backend: Backend, policy: Any, other: Any, reward: Any, prompts: Any, *, n: int, generator: torch.Generator
) -> tuple[float, float]:
    r"""Monte-Carlo win rate of ``policy`` against ``other`` under BT of ``reward`` (paper Eq. 4):

        WR = E_{s_0} E_{ξ∼π, ξ'∼π'} σ(r(ξ) − r(ξ'))      (n independent pairs per prompt, both at T = 1)

    Returns ``(estimate, standard_error)``.
    """
    xi = backend.sample(policy, prompts, n, generator)
    xi_o = backend.sample(other, prompts, n, generator)
    p = torch.sigmoid(bt_logits(backend.score(reward, prompts, xi), backend.score(reward, prompts, xi_o))).reshape(-1)
    se = float(p.std() / p.numel() ** 0.5) if p.numel() > 1 else float("nan")
    return float(p.mean()), se
