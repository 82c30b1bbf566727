r"""Online DPO at N = ∞ for a fixed learned reward r̂: the population law of its best/worst-of-n pairs, fitted exactly.

Online DPO (paper Sec. 3, App. B.1.1) draws n samples per prompt from a sampler π_s (the reference of its DPO
loss, π_ref := π_s), ranks them by r̂ and keeps the best vs the worst. As the number of online prompts grows the
empirical pair distribution tends to the law W of :func:`allroads.tabular.metrics.best_worst_pair_law`; the
N = ∞ fit minimises the DPO loss (Eq. 9) under W:

* **soft labels** p_w = σ(r̂_w − r̂_l) (Eq. 4): each pair's loss is minimised where the implicit reward gap
  β·Δlog(π/π_s) equals r̂_w − r̂_l. W connects every two trajectories of different r̂-levels, so in a class that
  holds every policy the optimum is β·log(π/π_s) = r̂ + const per prompt: π ∝ π_s·exp(r̂/β), RLHF's soft VI
  policy for r̂ (Lemma A.1), whatever n is.
* **hard labels** (the paper's recipe): the BT MLE of a *deterministic* preference ξ ≻ ξ' ⇔ r̂(ξ) > r̂(ξ').
  The loss has infimum 0 and no minimiser: it needs every implicit-reward gap between levels → +∞. Every
  minimising sequence (e.g. the L2 path λ → 0) puts all mass on the argmax set of r̂ — the β → 0 limit of RLHF,
  :func:`allroads.tabular.metrics.greedy_log_probs` — so β no longer sets the KL: the labels carry the ranking
  of r̂ and nothing of its scale.

:func:`population_online_dpo_objective` is that N = ∞ loss (dense over (P, T, T)); :func:`online_limits` gives
the closed-form points per block; :func:`fit_online_population` fits them exactly, the check of both claims.
"""
from __future__ import annotations

import time

import torch

from ..losses import dpo_loss, dpo_soft_loss
from .fit import l2_penalty, minimize_lbfgs
from .metrics import best_worst_pair_law, expected_reward, greedy_log_probs, kl_to_optimum, kl_to_reference

__all__ = ["population_pair_weights", "population_online_dpo_objective", "online_limits", "fit_online_population",
           "frontier_metrics"]


def population_pair_weights(r_hat: torch.Tensor, sampler_logp: torch.Tensor, n: int) -> torch.Tensor:
    r"""C[b, p, i, j] = ρ_0(p)·W_p[i, j] / Σ_p ρ_0(p)(1 − p_drop(p)): the N = ∞ mass of the online pair (ξ_w = i,
    ξ_l = j) among the prompts that keep one (all-tied prompts are dropped, as in
    :func:`allroads.online.best_worst_pairs`), ρ_0 uniform. (…, P, T) → (…, P, T, T), summing to 1 per block."""
    W, _ = best_worst_pair_law(r_hat, sampler_logp, n)
    return W / W.sum((-3, -2, -1), keepdim=True)


def population_online_dpo_objective(policy_class, weights: torch.Tensor, ref_logp: torch.Tensor, *, beta: float = 1.0,
                                    r_hat: torch.Tensor | None = None, l2=0.0):
    r"""θ ↦ the N = ∞ online-DPO loss (paper Eq. 9 over the online pair law), summed over blocks:

        L(θ) = Σ_b [ Σ_{p,i,j} C_b[p,i,j] · ℓ(β[(log π_θ(i) − log π_ref(i)) − (log π_θ(j) − log π_ref(j))]; y_ij)
                     + (l2_b/2)·‖θ_b‖² ]

    ``weights`` C from :func:`population_pair_weights` ((P, T, T) or (B, P, T, T)), ``ref_logp`` the sampler's
    log-probs (P, T) or (B, P, T); labels y = 1 (``dpo_loss``, hard) without ``r_hat``, y = σ(r̂_i − r̂_j)
    (``dpo_soft_loss``) with it. θ of shape (n,) or (B, n) as the class takes it.
    """
    C, ref = weights.detach(), ref_logp.detach()
    shape = (policy_class.n_params,) if C.ndim == 3 else (C.shape[0], policy_class.n_params)
    p_w = None if r_hat is None else torch.sigmoid(r_hat.detach()[..., :, None] - r_hat.detach()[..., None, :])
    pen, support = l2_penalty(l2), C > 0

    def fun(th):
        lp = policy_class.traj_log_probs(th.reshape(shape))
        args = (lp[..., :, None], lp[..., None, :], ref[..., :, None], ref[..., None, :], beta)
        ell = dpo_loss(*args) if p_w is None else dpo_soft_loss(*args, p_w)
        return torch.where(support, C * ell, torch.zeros_like(ell)).sum() + pen(th.reshape(shape))
    return fun


def frontier_metrics(log_p: torch.Tensor, ref_logp: torch.Tensor, r_star: torch.Tensor, log_star: torch.Tensor) -> dict:
    """The three exact coordinates of a policy on the frontier: (B, P, T) → dict of (B,) tensors."""
    return {"kl_to_ref": kl_to_reference(log_p, ref_logp), "expected_r_star": expected_reward(log_p, r_star),
            "rkl_to_optimum": kl_to_optimum(log_p, log_star)}


def online_limits(r_hat: torch.Tensor, samplers: dict, beta: float) -> dict:
    r"""Closed-form N = ∞ policies of the online variants for rewards r̂ (B, P, T): ``samplers`` maps a tag
    ('' for π_ref, '_from_dpo' for the offline DPO policy) to the sampler's log-probs (P, T) or (B, P, T).
    Returns {name: log-probs (B, P, T)}: ``online_dpo_soft{tag}`` = log_softmax(log π_s + r̂/β) (soft VI of r̂
    relative to π_s, Lemma A.1), ``online_dpo{tag}`` = the argmax set of r̂ weighted by π_s (hard labels)."""
    out = {}
    for tag, lp_s in samplers.items():
        out[f"online_dpo_soft{tag}"] = torch.log_softmax(lp_s + r_hat / beta, -1)
        out[f"online_dpo{tag}"] = greedy_log_probs(r_hat, lp_s)
    return out


def fit_online_population(policy_class, r_hat: torch.Tensor, sampler_logp: torch.Tensor, *, n: int, beta: float,
                          hard_l2=(1e-1, 1e-2, 1e-3, 1e-4), tol: float = 1e-9, scale=None) -> dict:
    r"""Exact fits of online DPO to the best/worst-of-n population law of one r̂ (P, T) in ``policy_class``
    (unbatched θ, π_θ = π_s at θ = 0): the soft-label fit without L2 (tolerance ``tol``), and the hard-label fit
    along an L2 path λ ∈ ``hard_l2`` (warm-started; no λ = 0 minimiser exists). Returns the fitted log-probs
    and, per fit, L-BFGS iterations, convergence and seconds."""
    C = population_pair_weights(r_hat, sampler_logp, n)
    theta = torch.zeros(policy_class.n_params, dtype=torch.float64)
    t0 = time.perf_counter()
    soft = minimize_lbfgs(population_online_dpo_objective(policy_class, C, sampler_logp, beta=beta, r_hat=r_hat), theta,
                          tol=tol, scale=scale, raise_on_failure=False, what="population soft-label online DPO")
    out = {"soft": {"log_p": policy_class.traj_log_probs(soft.theta).detach(), "n_iter": soft.n_iter,
                    "converged": soft.converged, "seconds": time.perf_counter() - t0}, "hard": []}
    for lam in hard_l2:
        t0 = time.perf_counter()
        res = minimize_lbfgs(population_online_dpo_objective(policy_class, C, sampler_logp, beta=beta, l2=lam), theta,
                             tol=tol, scale=scale, raise_on_failure=False, what=f"population hard-label online DPO, l2={lam}")
        theta = res.theta
        out["hard"].append({"l2": lam, "log_p": policy_class.traj_log_probs(theta).detach(), "n_iter": res.n_iter,
                            "converged": res.converged, "seconds": time.perf_counter() - t0})
    return out
