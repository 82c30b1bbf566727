r"""Exact metrics of policies and reward models on the tree, by enumeration (float64).

Arrays follow the engine's layout: trajectory-indexed (P, A**H), or (B, P, A**H) for B fitted models at
once; ρ_0 is uniform over prompts here (the GV-gap problems use uniform ρ_0).

* :func:`kl_to_optimum` — E_{s_0} KL(P_π ‖ P*), the regret of Eq. 2/3 over β;
* :func:`exact_win_rate` — E Σ P_π P_q σ(r − r'), the BT win rate against a baseline;
* :func:`heldout_bt_nll` — the exact held-out BT likelihood of a reward (paper Fig. 7), i.e. the population
  BT loss (:func:`pairwise_bt_nll`, the N = ∞ objective);
* :func:`best_of_n_log_probs` — the exact law of best-of-n (paper Fig. 8);
* :func:`tie_fraction`, :func:`mean_token_presence`, :func:`min_norm_sq` — design statistics of a problem;
* :func:`n_to_match` — sample efficiency: the N′ at which one learning curve reaches another's value;
* :func:`kl_to_reference`, :func:`expected_reward` — the two axes of a reward–KL frontier (Eq. 2's two terms);
* :func:`best_worst_pair_law` — the exact law of online DPO's best/worst-of-n pair (Sec. 3, App. B.1.1);
* :func:`greedy_log_probs` — the β → 0 limit of soft VI (π_ref conditioned on the argmax set of a reward);
* :func:`pareto_mask` — which (KL, value) points no other point dominates.
"""
from __future__ import annotations

import math

import torch

__all__ = [
    "kl_to_optimum", "exact_win_rate", "pairwise_bt_weights", "pairwise_bt_nll", "heldout_bt_nll", "best_of_n_log_probs", "tie_fraction",
    "mean_token_presence", "min_norm_sq", "n_to_match", "kl_to_reference", "expected_reward", "best_worst_pair_law",
    "greedy_log_probs", "pareto_mask",
]


def kl_to_optimum(log_p: torch.Tensor, log_p_star: torch.Tensor) -> torch.Tensor:
    """E_{s_0} KL(P_π ‖ P*) (the regret of Eq. 2/3 over β), uniform ρ_0: (B, P, T), (P, T) → (B,)."""
    p = torch.exp(log_p)
    return (torch.where(p > 0, p * (log_p - log_p_star), torch.zeros_like(p))).sum(-1).mean(-1)


def exact_win_rate(log_p: torch.Tensor, log_q: torch.Tensor, reward: torch.Tensor) -> torch.Tensor:
    r"""E_{s_0} Σ_{ξ,ξ'} P_π(ξ) P_q(ξ') σ(r(ξ) − r(ξ')): (B, P, T), (P, T), (P, T) → (B,)."""
    S = torch.sigmoid(reward[:, :, None] - reward[:, None, :])  # (P, T, T)
    return torch.einsum("bpi,pij,pj->bp", torch.exp(log_p), S, torch.exp(log_q)).mean(-1)


def _distinct_pair_weights(log_q: torch.Tensor) -> torch.Tensor:
    """q(ξ)q(ξ') over ξ ≠ ξ', normalised per prompt: (P, T) → (P, T, T)."""
    q = torch.exp(log_q)
    W = q[:, :, None] * q[:, None, :]
    W = W * (1 - torch.eye(q.shape[-1], dtype=W.dtype))
    return W / W.sum((1, 2), keepdim=True)


def pairwise_bt_weights(log_q: torch.Tensor, r_star: torch.Tensor) -> torch.Tensor:
    r"""C_{p,ξ,ξ'} = ρ_0(p)·q(ξ)q(ξ')/Σ_{ξ≠ξ'} q q' · σ(r*(ξ) − r*(ξ')) over ordered pairs ξ ≠ ξ', uniform ρ_0:
    (P, T), (P, T) → (P, T, T). The weights of :func:`pairwise_bt_nll` (compute once, reuse)."""
    p_star = torch.sigmoid(r_star[:, :, None] - r_star[:, None, :])
    return _distinct_pair_weights(log_q) * p_star / log_q.shape[0]


def pairwise_bt_nll(r_hat: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    r"""Σ_{p,ξ≠ξ'} C_{p,ξ,ξ'} · [−log σ(r̂(ξ) − r̂(ξ'))]: the exact expected BT NLL (Eq. 5–6) of r̂ over pairs
    from q with BT(r*) labels, ``weights`` C from :func:`pairwise_bt_weights`. r̂ (P, T) → scalar,
    (B, P, T) → (B,). Summing over both orders of a pair gives its soft-label BT loss."""
    d = r_hat[..., :, None] - r_hat[..., None, :]
    return -(weights * torch.nn.functional.logsigmoid(d)).sum((-3, -2, -1))


def heldout_bt_nll(r_hat: torch.Tensor, log_q: torch.Tensor, r_star: torch.Tensor) -> torch.Tensor:
    r"""Exact held-out BT NLL (paper Fig. 7) of a reward r̂ on pairs ξ ≠ ξ' ∼ q labelled by BT(r*):

        E_{s_0} Σ_{ξ≠ξ'} q q' [−σ(r*−r*') log σ(r̂−r̂')] / Σ_{ξ≠ξ'} q q'       (B, P, T) → (B,)
    """
    return pairwise_bt_nll(r_hat, pairwise_bt_weights(log_q, r_star))


def best_of_n_log_probs(scores: torch.Tensor, log_q: torch.Tensor, n: int) -> torch.Tensor:
    r"""Exact law of best-of-n by ``scores`` from n i.i.d. draws of q (paper Fig. 8):

        P(BoN = ξ) = F(ξ)^n − F_<(ξ)^n,   F(ξ) = Σ_{ξ' ⪯ ξ} q(ξ'), order by score (ties: trajectory index)

    scores (B, P, T), log_q (P, T) → log-probs (B, P, T).
    """
    q = torch.exp(log_q).expand_as(scores)
    order = torch.argsort(scores, dim=-1, stable=True)
    qs = q.gather(-1, order)
    F = torch.cumsum(qs, -1).clamp(max=1.0)
    p_sorted = F**n - (F - qs).clamp(min=0.0) ** n
    p = torch.empty_like(p_sorted).scatter_(-1, order, p_sorted)
    return torch.log(p)


def tie_fraction(reward: torch.Tensor, log_q: torch.Tensor, atol: float = 1e-12) -> float:
    r"""P(r(ξ) = r(ξ') | ξ ≠ ξ' ∼ q, s_0 ∼ ρ_0): the share of distinct comparisons that carry no signal
    about which completion is better (their BT label is a coin flip). (P, T), (P, T) → float."""
    ties = ((reward[:, :, None] - reward[:, None, :]).abs() <= atol).to(torch.float64)
    return float((_distinct_pair_weights(log_q) * ties).sum((1, 2)).mean())


def mean_token_presence(presence: torch.Tensor, log_q: torch.Tensor) -> float:
    r"""E_{s_0} mean_k P_{ξ∼q}(token k ∈ ξ): presence (P, T, A) of 0/1, log_q (P, T) → float. Near 1, most
    completions contain every token, so a reward of the token set ties on most pairs."""
    return float(torch.einsum("pt,pta->pa", torch.exp(log_q), presence).mean())


def min_norm_sq(features: torch.Tensor, tabular_scale: float, target: torch.Tensor, group: torch.Tensor) -> float:
    r"""Smallest squared norm of an exact representation of ``target`` in the shared-scorer class, up to a
    free constant per group:

        min_{θ, α} ‖θ‖²   s.t.   Fθ + c·u = t + α[group],   θ = (w, u)
        = min_α (t + Eα)ᵀ G⁻¹ (t + Eα),   G = FFᵀ + c²I        (a generalised least-squares problem)

    ``features`` F (n, d) over the n constrained sequences, ``target`` t (n,), ``group`` (n,) int64 (the
    per-prompt constant of a reward, the per-state shift of policy logits). A table entry per sequence
    (c > 0) makes every target representable.
    """
    n = features.shape[0]
    G = features @ features.T + tabular_scale**2 * torch.eye(n, dtype=torch.float64)
    L = torch.linalg.cholesky(G)
    E = torch.nn.functional.one_hot(group, int(group.max()) + 1).to(torch.float64)
    Gi_t = torch.cholesky_solve(target[:, None], L)[:, 0]
    Gi_E = torch.cholesky_solve(E, L)
    b = E.T @ Gi_t
    M = E.T @ Gi_E
    return float(target @ Gi_t - b @ torch.linalg.solve(M, b))


def n_to_match(n_pairs: list, target: list, curve: list) -> list:
    r"""Sample efficiency: for each target value y_i, the smallest N′ at which ``curve`` (values at
    ``n_pairs``, linearly interpolated in log N) is ≤ y_i; None when it never is within the grid.

    With target = RLHF's KL at N_i and curve = DPO's KL, N′/N_i is how many times more comparisons DPO needs
    to match RLHF. When the curve starts below the target already, N′ is the smallest N of the grid.
    """
    logn = [math.log(n) for n in n_pairs]
    out = []
    for y in target:
        hit = None
        if curve[0] <= y:
            hit = float(n_pairs[0])
        else:
            for i in range(1, len(curve)):
                if curve[i] <= y:
                    frac = (curve[i - 1] - y) / (curve[i - 1] - curve[i])
                    hit = math.exp(logn[i - 1] + frac * (logn[i] - logn[i - 1]))
                    break
        out.append(hit)
    return out


def kl_to_reference(log_p: torch.Tensor, ref_log_p: torch.Tensor) -> torch.Tensor:
    r"""E_{s_0} KL(P_π ‖ P_ref), uniform ρ_0 — the KL term of Eq. 2 (Lemma A.1), the x-axis of a reward–KL
    frontier: (B, P, T), (P, T) or (B, P, T) → (B,). Trajectories with P_π = 0 contribute 0."""
    return kl_to_optimum(log_p, ref_log_p)


def expected_reward(log_p: torch.Tensor, reward: torch.Tensor) -> torch.Tensor:
    r"""E_{s_0} E_{ξ∼π}[r(ξ)], uniform ρ_0 — the reward term of Eq. 2 (with r = r*: the value axis of a frontier):
    (B, P, T), (P, T) or (B, P, T) → (B,)."""
    return (torch.exp(log_p) * reward).sum(-1).mean(-1)


def best_worst_pair_law(scores: torch.Tensor, log_q: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Exact law of online DPO's pair (paper Sec. 3, App. B.1.1): n i.i.d. draws ξ_1..ξ_n ∼ q, w = argmax_j r(ξ_j),
    l = argmin_j r(ξ_j), ties to the lowest index (:func:`allroads.losses.select_best_worst`); a prompt whose n
    scores are all equal is dropped.

    With score levels (distinct values of r; equal means bit-equal, as ``select_best_worst`` compares),
    F(s) = Σ_{r(ξ) ≤ s} q, F_<(s) = Σ_{r(ξ) < s} q, Q(s) = F(s) − F_<(s), for r(i) > r(j):

        P(max level = r(i), min level = r(j)) = (F_i − F_<j)^n − (F_<i − F_<j)^n − (F_i − F_j)^n + (F_<i − F_j)^n
        W[i, j] = P(max = r(i), min = r(j)) · q(i)/Q(r(i)) · q(j)/Q(r(j))

    (given which samples fall on each level, the first sample on a level is ~ q restricted to it, independently
    of the others: so ties between *distinct* trajectories split by q, whatever their indices); W = 0 unless
    r(i) > r(j); dropped mass Σ_levels Q^n. scores (…, P, T), log_q (P, T) or (…, P, T) →
    (W (…, P, T, T), p_drop (…, P)), Σ_{ij} W + p_drop = 1 per prompt.
    """
    if n < 2:
        raise ValueError(f"n must be >= 2 to form a best/worst pair, got {n}")
    q = torch.exp(log_q).expand_as(scores)
    s = scores.detach()
    le = (s[..., None, :] <= s[..., :, None]).to(q.dtype)  # (…, P, T, T): [i, k] = r(k) ≤ r(i)
    eq = (s[..., None, :] == s[..., :, None]).to(q.dtype)
    F = torch.einsum("...ik,...k->...i", le, q)
    Q = torch.einsum("...ik,...k->...i", eq, q)
    Fl = F - Q
    pw = lambda x: x.clamp(min=0.0) ** n  # noqa: E731  (bases ≥ 0 up to rounding)
    M = (pw(F[..., :, None] - Fl[..., None, :]) - pw(Fl[..., :, None] - Fl[..., None, :])
         - pw(F[..., :, None] - F[..., None, :]) + pw(Fl[..., :, None] - F[..., None, :]))
    share = torch.where(q > 0, q / Q.clamp(min=torch.finfo(q.dtype).tiny), torch.zeros_like(q))
    W = torch.where(s[..., :, None] > s[..., None, :], M * share[..., :, None] * share[..., None, :], torch.zeros_like(M))
    return W, (q * Q ** (n - 1)).sum(-1)


def greedy_log_probs(reward: torch.Tensor, ref_log_p: torch.Tensor) -> torch.Tensor:
    r"""lim_{β→0} of soft VI relative to π_ref (Lemma A.1): log P(ξ) = log P_ref(ξ | argmax set of r) — the
    unregularised maximiser of E_π[r], ties split by P_ref; −inf off the argmax set. (…, P, T) → (…, P, T)."""
    top = reward == reward.max(-1, keepdim=True).values
    return torch.log_softmax(torch.where(top, ref_log_p.expand_as(reward), torch.full_like(reward, -math.inf)), -1)


def pareto_mask(kl: list, value: list) -> list[bool]:
    r"""True where no other point has KL ≤ and value ≥ with one strict (lower KL is better, higher value is
    better): the reward–KL Pareto frontier. Points with a None coordinate are never on it."""
    pts = [(k, v) for k, v in zip(kl, value)]
    ok = [k is not None and v is not None for k, v in pts]
    return [ok[i] and not any(ok[j] and pts[j][0] <= pts[i][0] and pts[j][1] >= pts[i][1] and pts[j] != pts[i]
                              for j in range(len(pts))) for i in range(len(pts))]
