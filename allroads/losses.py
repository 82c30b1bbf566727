r"""The loss core: every preference / likelihood loss of the paper, written once over tensors.

Both backends call these functions unchanged: the tabular engine passes exact float64 sequence
log-probabilities and rewards, the LLM backend passes masked sums of token log-probabilities.
Nothing here imports a backend. Every loss is *per example*: it returns shape ``(B,)`` and the
caller reduces (mean, weighted mean, sum), so weighting and accumulation stay the caller's choice.

Naming follows ``docs/notation.md``: ``r`` rewards, ``logp`` sequence log-probabilities under the
policy, ``ref_logp`` under the reference, ``_w`` / ``_l`` the chosen / rejected member of a pair,
``p_w`` the probability that the first member is preferred (a soft label), ``beta`` the KL weight.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "bt_logits",
    "bt_loss",
    "bt_soft_loss",
    "dpo_implicit_reward",
    "dpo_loss",
    "dpo_soft_loss",
    "local_rm_loss",
    "sft_loss",
    "select_best_worst",
    "select_best_of_n",
]


def bt_logits(r_1: torch.Tensor, r_2: torch.Tensor) -> torch.Tensor:
    r"""Logit of the Bradley–Terry preference probability (paper Eq. 4).

        P^BT_r(ξ_1 ≻ ξ_2 | s_0) = σ(r(ξ_1) − r(ξ_2)),   so the logit is r(ξ_1) − r(ξ_2).

    Args: ``r_1``, ``r_2`` shape (B,). Returns shape (B,).
    """
    return r_1 - r_2


def bt_loss(r_w: torch.Tensor, r_l: torch.Tensor) -> torch.Tensor:
    r"""Negative Bradley–Terry log-likelihood of hard preferences ξ_w ≻ ξ_l (paper Eq. 5–6).

        loss_i = −log σ(r(ξ_w,i) − r(ξ_l,i))

    The mean over a dataset is the forward KL D_KL(P_D ‖ P^BT_r) up to a constant (Eq. 5).
    Args: ``r_w``, ``r_l`` shape (B,), rewards of the chosen / rejected sequences. Returns (B,).
    """
    return -F.logsigmoid(r_w - r_l)


def bt_soft_loss(r_w: torch.Tensor, r_l: torch.Tensor, p_w: torch.Tensor) -> torch.Tensor:
    r"""Bradley–Terry cross-entropy with a soft label (paper Eq. 5 with P_D a label distribution).

        loss_i = −[p_w,i · log σ(d_i) + (1 − p_w,i) · log σ(−d_i)],   d_i = r(ξ_w,i) − r(ξ_l,i)

    With ``p_w = 1`` this is :func:`bt_loss`. Its minimiser over d is logit(p_w).
    Args: ``r_w``, ``r_l``, ``p_w`` shape (B,); ``p_w`` in [0, 1]. Returns (B,).
    """
    d = r_w - r_l
    return -(p_w * F.logsigmoid(d) + (1.0 - p_w) * F.logsigmoid(-d))


def dpo_implicit_reward(logp: torch.Tensor, ref_logp: torch.Tensor, beta: float) -> torch.Tensor:
    r"""The DPO implicit (local) reward of a sequence (paper Eq. 1 with a reference; Rafailov Eq. 5).

        r_π(ξ) = β · (log π(ξ) − log π_ref(ξ)) = β · Σ_h log π(a_h|s_h) / π_ref(a_h|s_h)

    Args: ``logp``, ``ref_logp`` shape (B,) sequence log-probs. Returns (B,).
    """
    return beta * (logp - ref_logp)


def dpo_loss(
    logp_w: torch.Tensor,
    logp_l: torch.Tensor,
    ref_logp_w: torch.Tensor,
    ref_logp_l: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    r"""Per-pair DPO loss (Rafailov et al. 2023, Eq. 7; paper Eq. 9 with a reference, Thm 2.3).

        loss = −log σ(β[(log π(ξ_w) − log π_ref(ξ_w)) − (log π(ξ_l) − log π_ref(ξ_l))])

    It is :func:`bt_loss` applied to the implicit rewards :func:`dpo_implicit_reward`.
    All inputs: shape (B,), sequence log-probs. Returns shape (B,); the caller reduces.
    """
    return bt_loss(
        dpo_implicit_reward(logp_w, ref_logp_w, beta), dpo_implicit_reward(logp_l, ref_logp_l, beta)
    )


def dpo_soft_loss(
    logp_w: torch.Tensor,
    logp_l: torch.Tensor,
    ref_logp_w: torch.Tensor,
    ref_logp_l: torch.Tensor,
    beta: float,
    p_w: torch.Tensor,
) -> torch.Tensor:
    r"""DPO with a soft label: :func:`bt_soft_loss` on the implicit rewards (paper Eq. 9, Thm 2.3).

        loss = −[p_w log σ(Δ) + (1 − p_w) log σ(−Δ)],
        Δ = β[(log π(ξ_w) − log π_ref(ξ_w)) − (log π(ξ_l) − log π_ref(ξ_l))]

    Used for online DPO with each on-policy pair labelled by an RM's BT probability: its population
    optimum is the soft-optimal policy of that RM relative to π_ref (Lemma A.1).
    All inputs shape (B,). Returns (B,).
    """
    return bt_soft_loss(
        dpo_implicit_reward(logp_w, ref_logp_w, beta), dpo_implicit_reward(logp_l, ref_logp_l, beta), p_w
    )


def local_rm_loss(logp_w: torch.Tensor, logp_l: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    r"""Reference-free DPO: MLE over the policy class through its local reward (paper Eq. 7–9).

        loss = −log σ(β · Σ_h [log π(a_h^+|s_h^+) − log π(a_h^-|s_h^-)]) = −log σ(β(log π(ξ_w) − log π(ξ_l)))

    This is the paper's "local RM" (Table 4 uses β = 1/53); it is :func:`dpo_loss` with π_ref ≡ 1.
    Args: ``logp_w``, ``logp_l`` shape (B,). Returns (B,).
    """
    return bt_loss(beta * logp_w, beta * logp_l)


def sft_loss(logp: torch.Tensor) -> torch.Tensor:
    r"""Supervised fine-tuning: negative sequence log-likelihood (paper Thm 2.4, g_sft).

        loss_i = −log π(ξ_i) = −Σ_h log π(a_h,i | s_h,i)

    Its gradient is g_sft of Theorem 2.4. Args: ``logp`` shape (B,). Returns (B,).
    Callers that want a per-token mean divide by the token count themselves.
    """
    return -logp


def _check_scores(scores: torch.Tensor) -> None:
    if scores.ndim != 2 or scores.shape[1] < 1:
        raise ValueError(
            f"scores must have shape (n_prompts, n_samples) with n_samples >= 1, got {tuple(scores.shape)}; "
            "stack the N scored samples of each prompt along dim 1"
        )
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN; score every sample before selecting")


def select_best_worst(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Online-DPO pair selection (paper Sec. 3, Appendix B.1.1; Guo et al. 2024).

    For each prompt, the highest-scored of its N samples becomes ξ_w and the lowest-scored ξ_l:

        w = argmax_j scores[p, j],   l = argmin_j scores[p, j]

    Ties are broken by the lowest index. A prompt whose samples all score the same has no
    preference: it is reported in ``valid`` (False) rather than silently turned into a pair.

    Args: ``scores`` shape (P, N). Returns ``(idx_w, idx_l, valid)``, each shape (P,).
    """
    _check_scores(scores)
    idx_w = torch.argmax(scores, dim=1)
    idx_l = torch.argmin(scores, dim=1)
    rows = torch.arange(scores.shape[0], device=scores.device)
    valid = scores[rows, idx_w] > scores[rows, idx_l]
    return idx_w, idx_l, valid


def select_best_of_n(scores: torch.Tensor) -> torch.Tensor:
    r"""Best-of-N selection (paper Fig. 8): the index of the highest-scored sample per prompt.

        j*(p) = argmax_j scores[p, j]     (ties → lowest index)

    Args: ``scores`` shape (P, N). Returns shape (P,).
    """
    _check_scores(scores)
    return torch.argmax(scores, dim=1)
