r"""Exact trajectory-level divergences between distributions over one prompt's completions.

Inputs are log-probabilities of shape (n_prompts, A**H) (rows log-normalised; −inf marks zero mass);
outputs are per prompt, shape (n_prompts,). Average over prompts with ``TreeMDP.expect_over_prompts``.

* forward KL (MLE, Eq. 2/5):   KL(P_D ‖ P_π)
* reverse KL (RL, Eq. 2, Lemma 2.1):  KL(P_π ‖ P*)
* total variation:  ½ Σ_ξ |p(ξ) − q(ξ)|
"""
from __future__ import annotations

import torch

__all__ = ["kl_divergence", "reverse_kl", "forward_kl", "tv_distance", "policy_kl"]


def kl_divergence(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    r"""KL(p ‖ q) = Σ_ξ p(ξ) [log p(ξ) − log q(ξ)] per prompt, with 0·log(0/q) = 0 and p·log(p/0) = +∞.

    Args: ``log_p``, ``log_q`` shape (P, n). Returns shape (P,).
    """
    if log_p.shape != log_q.shape:
        raise ValueError(f"log_p and log_q must have the same shape, got {tuple(log_p.shape)} and {tuple(log_q.shape)}")
    p = torch.exp(log_p)
    support = p > 0
    diff = torch.where(support, log_p - log_q, torch.zeros_like(log_p))
    return (torch.where(support, p, torch.zeros_like(p)) * diff).sum(-1)


def reverse_kl(log_p_model: torch.Tensor, log_p_target: torch.Tensor) -> torch.Tensor:
    """KL(P_model ‖ P_target): the reverse KL minimised by soft RL (Lemma 2.1). Shape (P,)."""
    return kl_divergence(log_p_model, log_p_target)


def forward_kl(log_p_data: torch.Tensor, log_p_model: torch.Tensor) -> torch.Tensor:
    """KL(P_data ‖ P_model): the forward KL minimised by maximum likelihood (Eq. 2, 5). Shape (P,)."""
    return kl_divergence(log_p_data, log_p_model)


def tv_distance(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Total variation ½ Σ_ξ |p(ξ) − q(ξ)| per prompt. Shape (P,)."""
    return 0.5 * (torch.exp(log_p) - torch.exp(log_q)).abs().sum(-1)


def policy_kl(policy, other) -> torch.Tensor:
    """KL(P_π ‖ P_other) per prompt for two :class:`TabularPolicy` objects on the same tree."""
    return kl_divergence(policy.traj_log_probs(), other.traj_log_probs())
