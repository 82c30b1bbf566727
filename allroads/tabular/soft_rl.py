r"""Soft (maximum-entropy) RL on the tree, exactly: soft value iteration, MinRelEnt RL, Gibbs distributions.

Paper Eq. 10–12 and Lemma 2.1 / A.1. For a trajectory-level reward r(ξ) and temperature β:

* without a reference (Eq. 10–11): π*_r = argmax_π E_π[r(ξ)] + β·H(π), whose trajectory distribution is
  P*_r(ξ | s_0) = exp(r(ξ)/β) / Z(r, s_0);
* with a reference (Lemma A.1, MinRelEnt RL): π*_r = argmax_π E_π[r(ξ)] − β·KL(P_π ‖ P_ref), with
  P*_r(ξ | s_0) ∝ P_ref(ξ | s_0) · exp(r(ξ)/β).

The backward recursion (reward units; ``log ref ≡ 0`` without a reference):

    Q_{H−1}(s, a) = r(s∘a),                      Q_h(s, a) = V_{h+1}(s∘a)
    V_h(s) = β · logsumexp_a [log π_ref(a|s) + Q_h(s, a)/β]
    log π*(a|s) = log π_ref(a|s) + (Q_h(s, a) − V_h(s)) / β

so Q_h(s_h, a_h) = β log Σ_{ξ ∈ Ξ|s_h,a_h} P_ref(ξ | s_h∘a_h) exp(r(ξ)/β) — Eq. 12 with β = 1 and no
reference. Each level is one reshape of the next: no loop over trajectories.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .mdp import TreeMDP
from .policy import TabularPolicy

__all__ = ["SoftVIResult", "soft_value_iteration", "gibbs_log_probs", "soft_rl_objective"]


def _check_beta(beta: float) -> float:
    if not (isinstance(beta, (int, float)) and beta > 0 and beta < float("inf")):
        raise ValueError(f"beta must be a positive finite number (the KL / entropy weight), got {beta!r}")
    return float(beta)


@dataclass(frozen=True)
class SoftVIResult:
    """Output of :func:`soft_value_iteration`."""

    policy: TabularPolicy
    """The soft-optimal policy π*_r (relative to π_ref when one was given)."""
    V: tuple
    """``V[h]``: soft values of depth-h states, shape (n_prompts, A**h), h = 0..H−1, reward units."""
    Q: tuple
    """``Q[h]``: soft Q-values, shape (n_prompts, A**h, A), h = 0..H−1, reward units (Eq. 12)."""
    beta: float
    """The temperature used."""

    @property
    def log_Z(self) -> torch.Tensor:
        """log Z(r, s_0) = V_0(s_0)/β per prompt, shape (n_prompts,): the log-partition of Eq. 11."""
        return self.V[0][:, 0] / self.beta


def soft_value_iteration(mdp: TreeMDP, reward, ref: TabularPolicy | None = None, beta: float = 1.0) -> SoftVIResult:
    r"""Exact soft value iteration for a trajectory-level reward (paper Eq. 10–12, Lemma A.1).

    Args:
        mdp: the tree.
        reward: r(ξ), shape (n_prompts, A**H), finite (may carry autograd).
        ref: π_ref for MinRelEnt RL (Lemma A.1); ``None`` for entropy regularisation (Eq. 10).
        beta: temperature β > 0.
    Returns: :class:`SoftVIResult` with the policy, V and Q (see the module docstring for the recursion).
    """
    beta = _check_beta(beta)
    r = mdp.check_traj_array(reward, "reward")
    if ref is not None and ref.mdp.n_traj != mdp.n_traj:
        raise ValueError("ref must be a TabularPolicy on the same TreeMDP as the reward")
    P, A, H = mdp.n_prompts, mdp.n_actions, mdp.horizon
    V, Q, log_pi = [None] * H, [None] * H, [None] * H
    q = r.reshape(P, A ** (H - 1), A) / beta  # Q_{H-1}/β
    for h in range(H - 1, -1, -1):
        Q[h] = beta * q
        logits = q if ref is None else q + ref.log_pi[h]
        v = torch.logsumexp(logits, dim=-1)  # (P, A**h)
        log_pi[h] = logits - v.unsqueeze(-1)
        V[h] = beta * v
        if h:
            q = v.reshape(P, A ** (h - 1), A)
    return SoftVIResult(TabularPolicy(mdp, tuple(log_pi)), tuple(V), tuple(Q), beta)


def gibbs_log_probs(mdp: TreeMDP, reward, beta: float = 1.0, ref_log_probs=None) -> torch.Tensor:
    r"""The Gibbs (soft-optimal) trajectory distribution, by direct normalisation over each prompt's leaves.

        log P*_r(ξ|s_0) = r(ξ)/β + log P_ref(ξ|s_0) − logsumexp_{ξ'} [r(ξ')/β + log P_ref(ξ'|s_0)]

    (Eq. 11; Lemma A.1 with a reference). Shape (n_prompts, A**H).
    """
    beta = _check_beta(beta)
    r = mdp.check_traj_array(reward, "reward")
    x = r / beta
    if ref_log_probs is not None:
        x = x + mdp.check_traj_array(ref_log_probs, "ref_log_probs", allow_neg_inf=True)
    return torch.log_softmax(x, dim=1)


def soft_rl_objective(policy: TabularPolicy, reward, beta: float = 1.0, ref: TabularPolicy | None = None) -> torch.Tensor:
    r"""The soft RL objective of a policy, averaged over ρ_0 (paper Eq. 10; Lemma A.1 with a reference).

        J(π) = E_{s_0}E_{ξ∼π}[r(ξ)] + β·H(π)                 (ref is None)
        J(π) = E_{s_0}E_{ξ∼π}[r(ξ)] − β·KL(P_π ‖ P_ref)       (with ref)

    Exact by enumeration; differentiable in the policy's parameters. Returns a scalar.
    """
    beta = _check_beta(beta)
    mdp = policy.mdp
    r = mdp.check_traj_array(reward, "reward")
    lp = policy.traj_log_probs()
    p = torch.exp(lp)
    penalty = lp if ref is None else lp - ref.traj_log_probs()
    safe = torch.where(p > 0, penalty, torch.zeros_like(penalty))
    per_prompt = (p * (r - beta * safe)).sum(1)
    return mdp.expect_over_prompts(per_prompt)
