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
from functools import cached_property

import torch

from allroads.tabular.mdp import TreeMDP
from allroads.tabular.policy import TabularPolicy

__all__ = ["SoftVIResult", "soft_value_iteration", "logsumexp_children", "gibbs_log_probs", "soft_rl_objective",
           "soft_rl_value"]


def _check_beta(beta: float) -> float:
    if not (isinstance(beta, (int, float)) and beta > 0 and beta < float("inf")):
        raise ValueError(f"beta must be a positive finite number (the KL / entropy weight), got {beta!r}")
    return float(beta)


def logsumexp_children(x: torch.Tensor) -> torch.Tensor:
    """logsumexp over the last axis (a node's A children). For A ≤ 3 a chain of fused ``logaddexp`` is
    2–3× faster than ``torch.logsumexp`` on a tiny inner axis (see benchmarks/soft_vi.py)."""
    A = x.shape[-1]
    if A > 3:
        return torch.logsumexp(x, dim=-1)
    v = x[..., 0] if A == 1 else torch.logaddexp(x[..., 0], x[..., 1])
    return torch.logaddexp(v, x[..., 2]) if A == 3 else v


@dataclass(frozen=True)
class SoftVIResult:
    """Output of :func:`soft_value_iteration`. Values are kept in units of β (``v = V/β``, ``q = Q/β``)
    and scaled on access, so the recursion writes each level once. The policy and the reference's
    trajectory log-probabilities are derived on first access (``log π* = log π_ref + q − v``): a caller
    that needs only V, log Z or the trajectory distribution never pays for the per-level log π."""

    v: tuple
    """``v[h]`` = V_h/β, shape (n_prompts, A**h), h = 0..H−1."""
    q: tuple
    """``q[h]`` = Q_h/β, shape (n_prompts, A**h, A), h = 0..H−1."""
    beta: float
    """The temperature used."""
    mdp: TreeMDP
    """The tree the values live on."""
    ref: TabularPolicy | None = None
    """π_ref when one was given (MinRelEnt RL, Lemma A.1), else ``None``."""

    @cached_property
    def policy(self) -> TabularPolicy:
        """The soft-optimal policy π*_r (relative to π_ref when one was given):
        log π*(a|s) = log π_ref(a|s) + Q_h(s, a)/β − V_h(s)/β."""
        log_pi = []
        for h, (q, v) in enumerate(zip(self.q, self.v)):
            logits = q if self.ref is None else q + self.ref.log_pi[h]
            log_pi.append(logits - v.unsqueeze(-1))
        return TabularPolicy(self.mdp, tuple(log_pi))

    @cached_property
    def ref_traj_log_probs(self) -> torch.Tensor | None:
        """log P_ref(ξ|s_0) when a reference was used, else ``None``."""
        return None if self.ref is None else self.ref.traj_log_probs()

    @property
    def V(self) -> tuple:
        """Soft values V_h(s), shapes (n_prompts, A**h), reward units."""
        return tuple(self.beta * v for v in self.v)

    @property
    def Q(self) -> tuple:
        """Soft Q-values Q_h(s, a), shapes (n_prompts, A**h, A), reward units (Eq. 12)."""
        return tuple(self.beta * q for q in self.q)

    @property
    def log_Z(self) -> torch.Tensor:
        """log Z(r, s_0) = V_0(s_0)/β per prompt, shape (n_prompts,): the log-partition of Eq. 11."""
        return self.v[0][:, 0]

    def traj_log_probs(self) -> torch.Tensor:
        r"""log P*_r(ξ|s_0) = r(ξ)/β + log P_ref(ξ|s_0) − log Z(s_0), in one pass (the path sums of
        ``policy.log_pi`` telescope to this; Eq. 11 / Lemma A.1). Shape (n_prompts, A**H)."""
        P = self.q[-1].shape[0]
        x = self.q[-1].reshape(P, -1) - self.log_Z.unsqueeze(-1)
        return x if self.ref is None else x + self.ref_traj_log_probs


def soft_value_iteration(mdp: TreeMDP, reward, ref: TabularPolicy | None = None, beta: float = 1.0) -> SoftVIResult:
    r"""Exact soft value iteration for a trajectory-level reward (paper Eq. 10–12, Lemma A.1).

    Args:
        mdp: the tree.
        reward: r(ξ), shape (n_prompts, A**H), finite (may carry autograd).
        ref: π_ref for MinRelEnt RL (Lemma A.1); ``None`` for entropy regularisation (Eq. 10).
        beta: temperature β > 0.
    Returns: :class:`SoftVIResult` with V and Q; its policy (log π*) is derived from them on first access
    (see the module docstring for the recursion).
    """
    beta = _check_beta(beta)
    r = mdp.check_traj_array(reward, "reward")
    if ref is not None and (ref.mdp.n_prompts, ref.mdp.n_traj) != (mdp.n_prompts, mdp.n_traj):
        raise ValueError("ref must be a TabularPolicy on the same TreeMDP as the reward")
    P, A, H = mdp.n_prompts, mdp.n_actions, mdp.horizon
    v_all, q_all = [None] * H, [None] * H
    q = (r if beta == 1.0 else r / beta).reshape(P, A ** (H - 1), A)  # Q_{H-1}/β
    for h in range(H - 1, -1, -1):
        q_all[h] = q
        v = logsumexp_children(q if ref is None else q + ref.log_pi[h])  # V_h/β, (P, A**h)
        v_all[h] = v
        if h:
            q = v.reshape(P, A ** (h - 1), A)
    return SoftVIResult(tuple(v_all), tuple(q_all), beta, mdp, ref)


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
    return soft_rl_value(mdp, policy.traj_log_probs(), r, beta, None if ref is None else ref.traj_log_probs())


def soft_rl_value(mdp: TreeMDP, log_p: torch.Tensor, reward: torch.Tensor, beta: float,
                  ref_log_p: torch.Tensor | None = None) -> torch.Tensor:
    r"""J of :func:`soft_rl_objective` from trajectory log-probs ``log_p`` (P, A**H), or (B, P, A**H) for B
    policies at once (then (B,)):  E_{s_0} Σ_ξ P(ξ|s_0) [r(ξ) − β·(log P(ξ|s_0) − log P_ref(ξ|s_0))], with
    log P_ref ≡ 0 when ``ref_log_p`` is None (the entropy bonus); trajectories with P = 0 contribute 0."""
    p = torch.exp(log_p)
    penalty = log_p if ref_log_p is None else log_p - ref_log_p
    safe = torch.where(p > 0, penalty, torch.zeros_like(penalty))
    return mdp.expect_over_prompts((p * (reward - beta * safe)).sum(-1))
