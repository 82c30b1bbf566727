r"""Multi-step methods written once over :class:`allroads.backend.Backend` (paper Sec. 3, App. B.1.1).

* :func:`online_dpo_pairs` — online DPO's dataset (Guo et al. 2024; the paper's recipe): sample N
  completions per prompt from the sampling policy, score them with a reward model, and turn the best and
  the worst into a pair (:func:`allroads.losses.select_best_worst`). Prompts whose N scores are all equal
  carry no preference: they are dropped and counted. ``soft_labels=True`` labels each pair with the RM's
  BT probability p_w = σ(r(ξ_w) − r(ξ_l)) (paper Eq. 4) instead of 1; with π_ref := the sampling policy the
  population optimum of soft-label DPO is then π ∝ π_samp·exp(r/β) — the soft-optimal policy of the RM,
  i.e. RLHF's stage 2 (Lemma A.1) — whenever the policy class contains it.
* :func:`best_of_n` — the highest-scored of n samples per prompt (paper Fig. 8).
* :func:`win_rate` — Monte-Carlo win rate of one policy against another under BT of a reward:
  E_{ξ∼π, ξ'∼π'} σ(r(ξ) − r(ξ')).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .backend import Backend
from .losses import bt_logits, select_best_of_n, select_best_worst

__all__ = ["OnlinePairs", "online_dpo_pairs", "best_of_n", "win_rate"]


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


def online_dpo_pairs(
    backend: Backend,
    policy: Any,
    reward_model: Any,
    prompts: Any,
    *,
    n_samples: int,
    generator: torch.Generator,
    soft_labels: bool = False,
) -> OnlinePairs:
    r"""Best-vs-worst pairs from ``n_samples`` on-policy completions per prompt (App. B.1.1; 25 in the paper).

        ξ_{p,1..N} ∼ π(·|s_0=p),   w = argmax_j r(ξ_{p,j}),   l = argmin_j r(ξ_{p,j})

    Ties go to the lowest sample index (loss core); prompts with all-equal scores are dropped and counted.
    Returns :class:`OnlinePairs`; its prompts/completions index with the backend's ``take``.
    """
    if n_samples < 2:
        raise ValueError(f"n_samples must be >= 2 to form a best/worst pair, got {n_samples}")
    completions = backend.sample(policy, prompts, n_samples, generator)  # (B, N)
    scores = backend.score(reward_model, prompts, completions)  # (B, N)
    idx_w, idx_l, valid = select_best_worst(scores)
    rows = torch.arange(scores.shape[0])
    s_w, s_l = scores[rows, idx_w][valid], scores[rows, idx_l][valid]
    chosen = backend.take(completions, idx_w)
    rejected = backend.take(completions, idx_l)
    keep = torch.nonzero(valid).reshape(-1)
    pick = (lambda x: x[keep]) if isinstance(chosen, torch.Tensor) else (lambda x: [x[i] for i in keep.tolist()])
    p_prompts = torch.as_tensor(prompts)[keep] if not isinstance(prompts, list) else [prompts[i] for i in keep.tolist()]
    p_w = torch.sigmoid(bt_logits(s_w, s_l)) if soft_labels else None
    return OnlinePairs(p_prompts, pick(chosen), pick(rejected), s_w, s_l, p_w, valid, int((~valid).sum()))


def best_of_n(backend: Backend, policy: Any, reward_model: Any, prompts: Any, *, n: int, generator: torch.Generator) -> Any:
    """Best-of-n (paper Fig. 8): for each prompt, the RM's highest-scored of n samples from π; a batch of B."""
    completions = backend.sample(policy, prompts, n, generator)
    return backend.take(completions, select_best_of_n(backend.score(reward_model, prompts, completions)))


def win_rate(
    backend: Backend, policy: Any, other: Any, reward: Any, prompts: Any, *, n: int, generator: torch.Generator
) -> tuple[float, float]:
    r"""Monte-Carlo win rate of ``policy`` against ``other`` under BT of ``reward`` (paper Eq. 4):

        WR = E_{s_0} E_{ξ∼π, ξ'∼π'} σ(r(ξ) − r(ξ'))      (n independent pairs per prompt)

    Returns ``(estimate, standard_error)``.
    """
    xi = backend.sample(policy, prompts, n, generator)
    xi_o = backend.sample(other, prompts, n, generator)
    p = torch.sigmoid(bt_logits(backend.score(reward, prompts, xi), backend.score(reward, prompts, xi_o))).reshape(-1)
    se = float(p.std() / p.numel() ** 0.5) if p.numel() > 1 else float("nan")
    return float(p.mean()), se
