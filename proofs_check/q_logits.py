r"""Section 3.4, Eq. (12)–(14): the soft Q-function of π*_r is its logits; its local reward is r.

    π*_r has (soft) Q-function  Q*_r(s_h, a_h) = log Σ_{ξ ∈ Ξ|s_h,a_h} exp(r(ξ)),           (12)
    with π*_r(a_h|s_h) = exp(Q*_r(s_h, a_h)) / Σ_a exp(Q*_r(s_h, a)) = exp(Q*_r(s_h, a_h))/Z_r(s_h).
    … the next-token logits of a softmax policy are precisely its implied soft Q-function …
    R ⇔ Π*_R ⇔ Q*_R (13), with Π*_R ↔ Q*_R by log / exp "up to a state-dependent shift in Q*_r" (14),
    and the local reward inverts the map "up to a prompt-dependent shift" (Rafailov et al.; Eq. 9).

At temperature β: Q_h(s, a) = β log Σ_{ξ∈Ξ|s,a} exp(r(ξ)/β) and π*(a|s) ∝ exp(Q_h(s, a)/β).
Assumptions: none beyond the tree MDP (deterministic dynamics, trajectory-level reward). Identity.

Check, per random instance (tree, r, β), with Q from ``soft_value_iteration``:

(a) Eq. 12 by brute force: β·logsumexp of r/β over the leaves of the subtree below s∘a, computed
    directly from the (P, A**H) reward array, equals Q_h(s, a) — independent of the recursion;
(b) logits: Q_h/β − log π*_h is constant over a at every state (the per-state shift of Eq. 14), and
    ``TabularPolicy.from_logits(Q/β + c(s))`` for a random per-state shift c equals π* (exp map);
(c) local reward: β·log P_{π*}(ξ|s_0) − r(ξ) is constant over ξ for each prompt, and equals
    −β log Z(r, s_0) = −V_0(s_0) (the per-prompt shift).

Error = max over all of these; tolerance 1e-10 (float64 round-off of logsumexp over ≤ 81 leaves).

Negative control: the *hard* backup Q^max_h(s, a) = max_{ξ∈Ξ|s,a} r(ξ) (what an unregularised Q-function
would be) in place of Q: its logits are not π*_r's (the spread of Q^max/β − log π* over actions is
≥ 100× tolerance required).
"""
from __future__ import annotations

import torch

from allroads.tabular import TabularPolicy, soft_value_iteration

from .common import Check, random_mdp, random_reward, uniform


def subtree_backup(r: torch.Tensor, mdp, h: int, beta: float, hard: bool = False) -> torch.Tensor:
    """Eq. 12 from the leaves: β·logsumexp (or max) of r/β over Ξ|s_h, a_h, shape (P, A**h, A)."""
    P, A, H = mdp.n_prompts, mdp.n_actions, mdp.horizon
    leaves = r.reshape(P, A ** (h + 1), A ** (H - h - 1)) / beta
    q = leaves.max(-1).values if hard else torch.logsumexp(leaves, -1)
    return (beta * q).reshape(P, A**h, A)


def _spread(x: torch.Tensor) -> float:
    """max over states of (max_a − min_a) x: zero iff x is a per-state constant."""
    return float((x.max(-1).values - x.min(-1).values).max())


def q_logits_error(mdp, r: torch.Tensor, beta: float, g: torch.Generator) -> float:
    vi = soft_value_iteration(mdp, r, beta=beta)
    pi = vi.policy
    errs = []
    for h in range(mdp.horizon):
        errs.append(float((subtree_backup(r, mdp, h, beta) - vi.Q[h]).abs().max()))  # (a)
        errs.append(_spread(vi.Q[h] / beta - pi.log_pi[h]))  # (b) per-state shift
    shifted = [q / beta + 3.0 * torch.randn(q.shape[:-1], dtype=torch.float64, generator=g)[..., None] for q in vi.Q]
    from_q = TabularPolicy.from_logits(mdp, shifted)
    errs.append(max(float((a - b).abs().max()) for a, b in zip(from_q.log_pi, pi.log_pi)))  # (b) exp map
    local = beta * pi.traj_log_probs() - r  # (c)
    errs.append(_spread(local))
    errs.append(float((local + vi.V[0]).abs().max()))
    return max(errs)


def hard_q_error(mdp, r: torch.Tensor, beta: float) -> float:
    """Spread over actions of Q^max/β − log π*: how far the hard backup is from being π*'s logits."""
    pi = soft_value_iteration(mdp, r, beta=beta).policy
    return max(_spread(subtree_backup(r, mdp, h, beta, hard=True) / beta - pi.log_pi[h]) for h in range(mdp.horizon))


def instance(g: torch.Generator) -> tuple[float, float]:
    mdp = random_mdp(g, horizon=(2, 4), actions=(2, 3))
    r = random_reward(mdp, g, scale=2.0)
    beta = uniform(g, 0.3, 3.0)
    return q_logits_error(mdp, r, beta, g), hard_q_error(mdp, r, beta)


CHECK = Check(
    name="q_logits",
    statement="Sec.3.4 Eq.12–14: logits of π*_r = Q*_r (+c(s)); r_π* = r (+c(s0))",
    tolerance=1e-10,
    negative_description="hard backup Q^max (max over the subtree) as logits; spread of Q/β − log π* over actions",
    instance=instance,
)
CHECKS = [CHECK]
